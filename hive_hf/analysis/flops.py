"""FLOP accounting for HIVE training steps: counted with `torch.utils.flop_counter.FlopCounterMode`, and by formula.

The paper's efficiency claim (appendix, Sec. 8 and Table 6: HIVE costs 0.14x the training FLOPs of the SA baseline)
rests on two facts: image tokens never pass through the LLM's MLPs, and they are only attended to at the fused
layers. This module makes that a count:

- `EfficiencyShapes` / `PRESETS` describe a SigLIP-shaped encoder + Llama-shaped LLM and build a `HiveConfig` per
  fusion mode (`paper`: SigLIP-L/16-384 + a MobileLLM-350M-shaped LLM, 77 text tokens, the authors' 8 taps).
- `count_training_step` counts one forward+backward with the model's current trainable set (`set_training_stage`),
  split at the encoder/LLM boundary: encoder FLOPs apart from "LLM side" FLOPs (projectors + fusion + LLM + head).
- `count_floor_step` counts the text-only LLM step plus the encoder pass: the floor no fusion can beat.
- `analytic_forward_flops` is the same forward count written out as formulas, as a cross-check.

Conventions: only matrix products are counted (linear layers, attention scores and attention-weighted values,
convolutions), 2 FLOPs per multiply-add, as `FlopCounterMode` does. Attention is counted over the full score matrix
whatever the mask (a causal kernel could skip half of the text-text block; the paper's formula halves it). The
attention backward is counted as its four gradient products, without the score recomputation a flash kernel does,
so that CPU (fused SDPA), CUDA (flash/efficient SDPA), eager attention and the meta device (SDPA's math fallback)
all give the same number.

Counting works on the meta device (build the model under `torch.device("meta")`), for shapes that do not fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, bmm_flop, sdpa_flop_count
from transformers.utils import logging

from ..configuration_hive import HiveConfig, spread_layers
from ..modeling_hive import HiveForConditionalGeneration

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class EfficiencyShapes:
    """A SigLIP-shaped vision tower and a Llama-shaped LLM, and the batch a training step sees.

    `num_taps` encoder layers are tapped, spread over the encoder depth and ending at its penultimate block, as in
    the authors' released script (8 of 24 gives their `[2, 5, ..., 23]`); they feed as many LLM layers spread over
    the LLM depth. The SA baseline (`concat`) takes the last encoder layer.
    """

    batch_size: int = 1
    text_length: int = 77
    image_size: int = 384
    patch_size: int = 16
    vision_hidden_size: int = 1024
    vision_intermediate_size: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    text_hidden_size: int = 960
    text_intermediate_size: int = 2560
    text_layers: int = 32
    text_heads: int = 15
    text_kv_heads: int = 5
    vocab_size: int = 32000
    num_taps: int = 8

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if not 1 <= self.num_taps <= min(self.vision_layers, self.text_layers):
            raise ValueError(
                f"`num_taps` must be in [1, {min(self.vision_layers, self.text_layers)}] (at most one tap per encoder "
                f"layer and one fused layer per LLM layer), got {self.num_taps}."
            )
        for width, heads, name in ((self.vision_hidden_size, self.vision_heads, "vision"),
                                   (self.text_hidden_size, self.text_heads, "text")):
            if width % heads:
                raise ValueError(f"`{name}_hidden_size` ({width}) must be divisible by `{name}_heads` ({heads}).")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(
                f"`text_heads` ({self.text_heads}) must be a multiple of `text_kv_heads` ({self.text_kv_heads})."
            )

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def replace(self, **changes: Any) -> EfficiencyShapes:
        """A copy with some fields changed (`None` values are ignored, so CLI defaults can be passed through)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def hive_config(self, fusion: str, attn_implementation: str = "sdpa") -> HiveConfig:
        """The `HiveConfig` of these shapes for one fusion mode (`joint`, `gated` or `concat`)."""
        vision = {
            "model_type": "siglip_vision_model", "hidden_size": self.vision_hidden_size,
            "intermediate_size": self.vision_intermediate_size, "num_hidden_layers": self.vision_layers,
            "num_attention_heads": self.vision_heads, "image_size": self.image_size, "patch_size": self.patch_size,
        }
        text = {
            "model_type": "llama", "hidden_size": self.text_hidden_size,
            "intermediate_size": self.text_intermediate_size, "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads, "num_key_value_heads": self.text_kv_heads,
            "vocab_size": self.vocab_size, "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2,
            "max_position_embeddings": max(2048, self.text_length + self.num_image_tokens),
        }
        taps = None if fusion == "concat" else spread_layers(self.vision_layers, self.num_taps)  # hidden_states indices
        config = HiveConfig(vision_config=vision, text_config=text, fusion=fusion, vision_feature_layers=taps)
        config.text_config._attn_implementation = attn_implementation
        config.vision_config._attn_implementation = attn_implementation
        return config


PRESETS: dict[str, EfficiencyShapes] = {
    # seconds on a laptop CPU: the shapes of the tests
    "tiny": EfficiencyShapes(
        batch_size=2, text_length=16, image_size=32, patch_size=8, vision_hidden_size=64,
        vision_intermediate_size=128, vision_layers=4, vision_heads=4, text_hidden_size=64, text_intermediate_size=128,
        text_layers=4, text_heads=4, text_kv_heads=2, vocab_size=256, num_taps=2,
    ),
    # the paper's token counts (576 image tokens, 77 text tokens), depths and taps at 0.4x the widths (and
    # vocabulary): a few seconds per step on a 2-core CPU
    "small": EfficiencyShapes(
        batch_size=1, text_length=77, image_size=384, patch_size=16, vision_hidden_size=384,
        vision_intermediate_size=1536, vision_layers=24, vision_heads=6, text_hidden_size=384,
        text_intermediate_size=1024, text_layers=32, text_heads=6, text_kv_heads=2, vocab_size=12800, num_taps=8,
    ),
    # SigLIP-L/16-384 + a MobileLLM-350M-shaped Llama, 77 text tokens, the authors' 8 taps
    "paper": EfficiencyShapes(),
}


def build_model(
    shapes: EfficiencyShapes,
    fusion: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> HiveForConditionalGeneration:
    """A randomly initialised HIVE model of these shapes in train mode; on `device="meta"` no memory is allocated."""
    config = shapes.hive_config(fusion, attn_implementation)
    torch.manual_seed(seed)
    with torch.device(device):
        model = HiveForConditionalGeneration(config)
    return model.to(dtype=dtype).train()


def make_batch(
    config: HiveConfig, batch_size: int, text_length: int, device: str | torch.device = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random images and token ids (no padding) of the requested sizes; labels are the ids."""
    device = torch.device(device)
    size = config.vision_config.image_size
    if device.type == "meta":
        pixels = torch.empty(batch_size, 3, size, size, device=device)
        ids = torch.empty(batch_size, text_length, dtype=torch.long, device=device)
    else:
        gen = torch.Generator().manual_seed(seed)
        pixels = torch.randn(batch_size, 3, size, size, generator=gen).to(device)
        ids = torch.randint(3, config.text_config.vocab_size, (batch_size, text_length), generator=gen).to(device)
    return {"pixel_values": pixels, "input_ids": ids, "labels": ids}


# ---------------------------------------------------------------------------------------------------------------------
# One training step, as the benchmark times it and as the counters split it
# ---------------------------------------------------------------------------------------------------------------------
def step_loss(model: HiveForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The LM loss of one batch with its image.

    concat: the vision tokens are prepended (text embeddings passed as `inputs_embeds`). That is the same sequence
    length and FLOPs as image placeholders from `HiveProcessor`, and it also runs on the meta device, where counting
    placeholders (`int(is_image.sum())`) cannot.
    """
    pixels = batch["pixel_values"].to(model.dtype)
    if model.config.fusion == "concat":
        embeds = model.get_input_embeddings()(batch["input_ids"])
        return model(inputs_embeds=embeds, pixel_values=pixels, labels=batch["labels"]).loss
    return model(input_ids=batch["input_ids"], pixel_values=pixels, labels=batch["labels"]).loss


def training_step(model: HiveForConditionalGeneration, batch: dict[str, torch.Tensor]) -> None:
    """Forward + backward of one batch with the current trainable set (no optimizer step: it costs the same for
    every fusion and is not a matrix product)."""
    model.zero_grad(set_to_none=True)
    loss = step_loss(model, batch)
    if loss.requires_grad:
        loss.backward()


def floor_step(model: HiveForConditionalGeneration, batch: dict[str, torch.Tensor]) -> None:
    """The work every fusion has to do: the encoder up to the deepest tapped layer (backward too when it trains)
    and the LLM on the text alone (backward only when it trains)."""
    model.zero_grad(set_to_none=True)
    features = encoder_features(model, batch["pixel_values"])
    loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # no image: the plain LLM
    if features[0].requires_grad:  # stage 3: a zero-weighted use of the features, so the encoder backward runs
        loss = loss + 0.0 * sum(f.sum() for f in features)
    if loss.requires_grad:
        loss.backward()


def encoder_is_trainable(model: HiveForConditionalGeneration) -> bool:
    return any(p.requires_grad for p in model.vision_model.parameters())


def encoder_features(model: HiveForConditionalGeneration, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tapped encoder layers as a training step computes them: with autograd only when the encoder trains."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_is_trainable(model)):
        return model.vision_model.hierarchical_features(pixel_values)


# ---------------------------------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------------------------------
def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None,
                         **kwargs: Any) -> int:
    """dV, dP, dQ and dK: four products of the forward's size each, the math backward's count (no recomputation)."""
    b, h_q, s_q, d_q = query_shape
    s_k, d_v = key_shape[2], value_shape[3]
    return (
        bmm_flop((b * h_q, s_q, d_v), (b * h_q, d_v, s_k))  # dP = dO V^T
        + bmm_flop((b * h_q, s_k, s_q), (b * h_q, s_q, d_v))  # dV = P^T dO
        + bmm_flop((b * h_q, s_q, s_k), (b * h_q, s_k, d_q))  # dQ = dS K
        + bmm_flop((b * h_q, d_q, s_q), (b * h_q, s_q, s_k))  # dK = dS^T Q
    )


def _sdpa_flop_mapping() -> dict[Any, Any]:
    """Formulas for the fused SDPA kernels: the CPU ones (which torch's counter does not know, so they would count as
    zero) and the CUDA backward ones (which torch counts with the flash recomputation). All take (grad_out,) q, k, v
    first."""
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward_flops}
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention_backward",
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = _sdpa_backward_flops
    return mapping


def flop_counter() -> FlopCounterMode:
    """A quiet `FlopCounterMode` that also counts the fused CPU attention kernels (see the module docstring)."""
    return FlopCounterMode(display=False, custom_mapping=_sdpa_flop_mapping())


@dataclass
class StepFlops:
    """FLOPs of one training step, split at the encoder/LLM boundary.

    `llm_*` is everything after the encoder: projectors, image keys/values, fusion blocks, the LLM and its head.
    """

    encoder_forward: int = 0
    encoder_backward: int = 0
    llm_forward: int = 0
    llm_backward: int = 0

    @property
    def encoder(self) -> int:
        return self.encoder_forward + self.encoder_backward

    @property
    def llm_side(self) -> int:
        return self.llm_forward + self.llm_backward

    @property
    def total(self) -> int:
        return self.encoder + self.llm_side

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "encoder": self.encoder, "llm_side": self.llm_side, "total": self.total}


@contextlib.contextmanager
def _counting(into: list[int]) -> Iterator[None]:
    counter = flop_counter()
    with counter:
        yield
    into.append(counter.get_total_flops())


def _count_encoder(model: HiveForConditionalGeneration, pixel_values: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs of the encoder up to the deepest tap; backward only when it trains. FLOPs depend on
    shapes alone, so the backward is fed zeros shaped like the gradient a step sends into the features."""
    counts: list[int] = []
    with _counting(counts):
        features = encoder_features(model, pixel_values)
    with _counting(counts):
        trained = [f for f in features if f.requires_grad]
        if trained:
            torch.autograd.backward(trained, [torch.zeros_like(f) for f in trained])
    model.zero_grad(set_to_none=True)
    return counts[0], counts[1]


def count_training_step(model: HiveForConditionalGeneration, batch: dict[str, torch.Tensor]) -> StepFlops:
    """FLOPs of `training_step(model, batch)` with the model's current trainable set, split into encoder and LLM side.

    The whole step is counted (forward, then backward), and so is the encoder on its own; the LLM side is the
    difference: everything after the encoder's features, i.e. projectors, image keys/values, fusion, LLM and head.
    """
    model.zero_grad(set_to_none=True)
    encoder_forward, encoder_backward = _count_encoder(model, batch["pixel_values"])
    counts: list[int] = []
    with _counting(counts):
        loss = step_loss(model, batch)
    with _counting(counts):
        if loss.requires_grad:
            loss.backward()
    model.zero_grad(set_to_none=True)
    step_forward, step_backward = counts
    return StepFlops(encoder_forward, encoder_backward, step_forward - encoder_forward,
                     step_backward - encoder_backward)


def count_floor_step(model: HiveForConditionalGeneration, batch: dict[str, torch.Tensor]) -> StepFlops:
    """FLOPs of `floor_step(model, batch)`: the encoder pass plus the text-only LLM step, split the same way."""
    model.zero_grad(set_to_none=True)
    encoder_forward, encoder_backward = _count_encoder(model, batch["pixel_values"])
    counts: list[int] = []
    with _counting(counts):
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    with _counting(counts):
        if loss.requires_grad:
            loss.backward()
    model.zero_grad(set_to_none=True)
    llm_forward, llm_backward = counts
    return StepFlops(encoder_forward, encoder_backward, llm_forward, llm_backward)


def meta_kernels_available(model: HiveForConditionalGeneration, batch: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """Whether one training step runs on the meta device; if not, the reason (the first error's message).

    An op without a meta kernel, or code reading tensor values (`.item()`, e.g. the LLM's check whether a padding
    mask is all ones before it picks SDPA's `is_causal` path), fails there.
    """
    try:
        training_step(model, batch)
    except (NotImplementedError, RuntimeError) as error:
        return False, f"{type(error).__name__}: {str(error).splitlines()[0]}"
    finally:
        model.zero_grad(set_to_none=True)
    return True, ""


# ---------------------------------------------------------------------------------------------------------------------
# The same forward count by formula
# ---------------------------------------------------------------------------------------------------------------------
def analytic_forward_flops(config: HiveConfig, batch_size: int, text_length: int) -> dict[str, int]:
    """Forward FLOPs of one batch by formula, with `FlopCounterMode`'s conventions (see the module docstring).

    For a SigLIP/CLIP-shaped tower and a Llama-family LLM. Keys: `encoder` (patch embedding + blocks up to the
    deepest tap), `projectors`, `image_kv` (image key/value projections at the fused layers), `fusion` (gated
    mode's query/output projections), `llm` (decoder layers: projections, MLPs, attention incl. image columns),
    `lm_head`, and `llm_side` (everything but the encoder).
    """
    v, t = config.vision_config, config.text_config
    b, n = batch_size, config.num_image_tokens
    patches = (v.image_size // v.patch_size) ** 2
    vis_d, vis_i = v.hidden_size, v.intermediate_size
    depth = max(config.vision_feature_layers)
    encoder = 2 * b * patches * vis_d * 3 * v.patch_size**2
    encoder += depth * (2 * b * n * (4 * vis_d * vis_d + 2 * vis_d * vis_i) + 4 * b * n * n * vis_d)

    d, ffn, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    heads = t.num_attention_heads
    kv_heads = getattr(t, "num_key_value_heads", None) or heads
    head_dim = getattr(t, "head_dim", None) or d // heads
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    per_token = 2 * (d * q_width + 2 * d * kv_width + q_width * d + 3 * d * ffn)  # q, k, v, o, gate/up/down
    hidden = config.projector_hidden_size or d
    projector = 2 * b * n * (vis_d * hidden + hidden * d)
    fused = len(config.cross_attention_layers)

    out = {"encoder": encoder, "projectors": 0, "image_kv": 0, "fusion": 0, "llm": 0, "lm_head": 0}
    if config.fusion == "concat":
        seq = text_length + n
        out["projectors"] = projector
        out["llm"] = layers * (b * seq * per_token + 4 * b * seq * seq * q_width)
        out["lm_head"] = 2 * b * seq * d * t.vocab_size
    else:
        seq = text_length
        out["projectors"] = fused * projector
        out["image_kv"] = fused * 2 * b * n * 2 * d * kv_width
        out["llm"] = layers * (b * seq * per_token + 4 * b * seq * seq * q_width)
        out["llm"] += fused * 4 * b * seq * n * q_width  # the image columns of the fused layers' scores and values
        if config.fusion == "gated":
            out["fusion"] = fused * 2 * b * seq * 2 * d * q_width  # the cross-attention's own q and o projections
        out["lm_head"] = 2 * b * seq * d * t.vocab_size
    out["llm_side"] = sum(value for key, value in out.items() if key != "encoder")
    return out


__all__ = [
    "EfficiencyShapes",
    "PRESETS",
    "StepFlops",
    "analytic_forward_flops",
    "build_model",
    "count_floor_step",
    "count_training_step",
    "encoder_features",
    "flop_counter",
    "floor_step",
    "make_batch",
    "meta_kernels_available",
    "step_loss",
    "training_step",
]
