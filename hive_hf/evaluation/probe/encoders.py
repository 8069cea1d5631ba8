"""The frozen encoder a probe reads: loading any checkpoint as a stock vision model, and its features.

Which features (``feature_layer``). The authors delete the blocks after the one they probe and SigLIP's post-norm,
so the head reads a block's raw output: ``hidden_states[k]`` (0 = patch embeddings, ``k`` = output of block ``k``),
patch tokens only (a CLIP class token is dropped). By default ``k`` is the deepest layer HIVE tapped for a HIVE
checkpoint (the last layer pre-training shaped; the authors' SigLIP-L taps end at block 23 of 24) and
``hidden_states[-2]`` for a stock tower (what the authors' probe reads from any SigLIP-L: block 23 of 24).
``feature_layer="last_hidden_state"`` reads the tower's output instead (after the last block and, for SigLIP, its
post-LayerNorm; CLIP's class token kept), which HIVE never trains when its deepest tap is not the last block.
``pooling="pooler"`` reads SigLIP's pooling head, which HIVE never trains at all.

Whether a tower has a class token comes from :func:`hive_hf.configuration_hive.vision_token_layout`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from ...compat import AutoImageProcessor
from ...configuration_hive import HiveConfig, vision_token_layout
from ...modeling_hive import load_vision_tower
from .settings import LAST_HIDDEN_STATE, STOCK_FEATURE_LAYER

__all__ = ["default_feature_layer", "encoder_image_size", "load_encoder"]


def _vision_config(config: Any) -> Any:
    # HIVE checkpoints keep the tower's config under `vision_config`, and so do two-tower SigLIP / CLIP checkpoints.
    return getattr(config, "vision_config", config)


def encoder_image_size(name_or_path: str, **kwargs: Any) -> int:
    """The input resolution an encoder checkpoint (HIVE, two-tower or vision-only) was built for."""
    return int(_vision_config(AutoConfig.from_pretrained(name_or_path, **kwargs)).image_size)


def default_feature_layer(name_or_path: str, **kwargs: Any) -> int:
    """The `hidden_states` index a probe reads by default: the deepest layer a HIVE checkpoint (full or encoder-only)
    tapped in pre-training, else `STOCK_FEATURE_LAYER` (-2, the authors' choice for a stock tower)."""
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if config.model_type == HiveConfig.model_type:  # by type: with remote code the class is the checkpoint's copy
        return max(config.vision_feature_layers)
    return STOCK_FEATURE_LAYER


def load_encoder(
    name_or_path: str,
    image_processor_name_or_path: str | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Load an encoder for probing as a stock transformers vision model and its image processor.

    Accepts a full HIVE checkpoint (`HiveForConditionalGeneration`, its processor in `processor_config.json`), an
    encoder-only HIVE release (`HiveVisionEncoderModel`), a two-tower SigLIP / CLIP checkpoint or a vision-only one;
    a local folder or a Hub id. HIVE encoders come back through `to_base_model()` (e.g. a `SiglipVisionModel`), so
    every encoder is probed through the same stock forward.

    Args:
        name_or_path: the checkpoint.
        image_processor_name_or_path: where to read the image processor instead (default: `name_or_path`).
        dtype: the model's dtype (default: as saved); features are cast to float32 for the head.
        kwargs: Hub options forwarded to every `from_pretrained` (`revision`, `trust_remote_code`, `token`, ...).

    Returns:
        `(vision_model, image_processor)`, the model in eval mode with `requires_grad=False` everywhere.
    """
    model = load_vision_tower(name_or_path, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
    # AutoImageProcessor reads `preprocessor_config.json` and also the image processor inside a full checkpoint's
    # `processor_config.json` (HiveProcessor, SiglipProcessor, ...), without loading a tokenizer; an encoder-only HIVE
    # release carries just the image processor, where AutoProcessor would look for the HiveProcessor's tokenizer.
    image_processor = AutoImageProcessor.from_pretrained(image_processor_name_or_path or name_or_path, **kwargs)
    model.eval().requires_grad_(False)
    return model, image_processor


def _bf16_autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when asked and the device runs it natively (CUDA with bf16); otherwise float32."""
    enabled = bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _hidden_state_index(layer: int, num_layers: int) -> int:
    """`layer` (negative counts from the end, as in `hidden_states`) as an index in [0, num_layers]."""
    index = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= index <= num_layers:
        raise ValueError(
            f"--feature_layer {layer} is not a hidden_states index of a {num_layers}-block tower: use "
            f"{-num_layers - 1}..{num_layers} (0 = patch embeddings, i = output of block i)."
        )
    return index


def _hidden_state(
    model: PreTrainedModel, index: int, pixel_values: torch.Tensor, extra: dict[str, Any]
) -> torch.Tensor:
    """`hidden_states[index]` (the input of block `index + 1`, or the last block's output), read by a hook so that no
    other hidden state is kept in memory; towers without the usual `encoder.layers` return all of them."""
    num_layers = model.config.num_hidden_layers
    blocks = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != num_layers:  # not the usual layout
        return model(pixel_values=pixel_values, output_hidden_states=True, **extra).hidden_states[index]
    captured = []

    def block_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])

    def block_output(module: nn.Module, args: tuple, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    if index < num_layers:
        handle = blocks[index].register_forward_pre_hook(block_input, with_kwargs=True)
    else:
        handle = blocks[-1].register_forward_hook(block_output)
    try:
        model(pixel_values=pixel_values, **extra)
    finally:
        handle.remove()
    return captured[0]


def _patch_tokens(model: PreTrainedModel, tokens: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """`tokens` `(B, N, D)` without the class token of towers that have one (CLIP's, first), as
    `vision_token_layout` says; the rest must be exactly the patches of `pixel_values`."""
    class_tokens = vision_token_layout(model.config).class_tokens
    patch = model.config.patch_size
    rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    if tokens.shape[1] != class_tokens + rows * cols:
        raise ValueError(
            f"{type(model).__name__} ({model.config.model_type!r}) outputs {tokens.shape[1]} tokens for {rows}x{cols} "
            f"patches and {class_tokens} class tokens; `hive_hf.configuration_hive.vision_token_layout` does not "
            "know this tower's token layout."
        )
    return tokens[:, class_tokens:]


class _FrozenEncoder:
    """The frozen tower's forward, returning the features a head consumes (`tokens`, `mean` or `pooler`).

    `layer` is a `hidden_states` index or `LAST_HIDDEN_STATE`. A block's output is read raw (no post-norm) and
    without the class token of towers that have one.
    """

    def __init__(self, model: PreTrainedModel, feature: str, layer: int | str, image_size: int, device: torch.device,
                 bf16: bool = False):
        self.model = model.to(device).eval().requires_grad_(False)
        self.feature = feature
        num_layers = model.config.num_hidden_layers
        self.layer = layer if layer == LAST_HIDDEN_STATE else _hidden_state_index(int(layer), num_layers)
        self.device = device
        self.bf16 = bf16
        # Other resolutions than the tower's own need its position embeddings interpolated.
        self.interpolate = image_size != model.config.image_size

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def description(self) -> str:
        """The features in words, for the results."""
        if self.feature == "pooler":
            return "pooler_output"
        return self.layer if self.layer == LAST_HIDDEN_STATE else f"hidden_states[{self.layer}]"

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
        pixel_values = pixel_values.to(self.device, self.model.dtype)
        with _bf16_autocast(self.device, self.bf16):
            if self.feature == "pooler":
                return self._pooler_output(pixel_values, extra)
            if self.layer == LAST_HIDDEN_STATE:
                tokens = self.model(pixel_values=pixel_values, **extra).last_hidden_state  # (B, N, D)
            else:
                tokens = _hidden_state(self.model, self.layer, pixel_values, extra)
                tokens = _patch_tokens(self.model, tokens, pixel_values)  # (B, N, D)
        return (tokens if self.feature == "tokens" else tokens.mean(dim=1)).float()  # (B, N, D) or (B, D)

    def _pooler_output(self, pixel_values: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        features = getattr(self.model(pixel_values=pixel_values, **extra), "pooler_output", None)  # (B, D)
        if features is None:
            raise ValueError(
                f"{type(self.model).__name__} returns no pooler_output (e.g. SigLIP with vision_use_head="
                "False); use --pooling mean or --probe attentive."
            )
        return features.float()
