"""HIVE models: a vision encoder whose intermediate layers feed a decoder-only LLM through cross-attention.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models"
(CVPR 2026 Workshops, arXiv 2604.00086).

Three fusions share one class stack (`HiveConfig.fusion`):
- `joint`  (the authors' realisation): at each paired LLM layer the projected features of one tapped encoder layer
  become extra keys/values of that layer's self-attention. By default text queries see every image token plus the
  causal text; the authors' options (`qk_norm`, `image_rope`, per-stage `image_kv`, `projector_type="ln_mlp"`) add
  their q/k norms, place the image in the text with rotary positions, and so on (see `HiveConfig`).
- `gated`  (the paper's equation read literally, as in Flamingo / Llama-3.2-Vision): a separate cross-attention block
  before the paired decoder layer, scaled by `tanh(gate)` with the gate initialised to zero.
- `concat` (the SA baseline, LLaVA-style): one layer's projected tokens are put into the LLM's input sequence.
In `joint` and `gated` the image tokens never pass through the LLM's MLPs and produce no outputs of their own;
that is where HIVE's compute saving comes from. Image keys/values are computed once per image (at prefill when
generating) and reused.

This file is shipped to the Hub next to the weights: it imports only torch, transformers and its sibling config.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward, repeat_kv
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_hive import HiveConfig

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Transformers release differences: the one place that knows them. This file runs on whatever transformers release
# the person loading a checkpoint has, so each difference is detected by feature, never by version string.
# ---------------------------------------------------------------------------------------------------------------------
# 5.24 renamed the key/value cache from `past_key_values` to `cache`: in model arguments, in the arguments decoder
# layers pass to their attention, and in output dataclasses. The library's own output class says which name this
# release uses; we use that name everywhere, so our calls raise no deprecation warnings on any release.
CACHE_NAME = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def _cache_kwargs(cache: Cache | None) -> dict[str, Cache | None]:
    """`cache` as the keyword argument this release's models take it under (and its output classes hold it under)."""
    return {CACHE_NAME: cache}


def _cache_of(output: ModelOutput) -> Cache | None:
    """The key/value cache a model output of this release holds."""
    return getattr(output, CACHE_NAME)


def _cache_field_named_for_this_release(cls: type) -> type:
    """Class decorator, under `@dataclass`, for an output class declaring its cache as the field `cache`: on releases
    before 5.24 that field is named `past_key_values` instead, in the same place of the field order (which
    `to_tuple()` follows), as the library's own outputs name it there."""
    if CACHE_NAME != "cache":
        cls.__annotations__ = {(CACHE_NAME if name == "cache" else name): t for name, t in cls.__annotations__.items()}
        setattr(cls, CACHE_NAME, cls.__dict__["cache"])
        delattr(cls, "cache")
    return cls


# 5.23 renamed gradient checkpointing to activation checkpointing, in the model method
# (`activation_checkpointing_enable(activation_checkpointing_kwargs=...)`) and in the `TrainingArguments` flag, at once;
# the old names warn. `f"{CHECKPOINTING}_enable"` and `f"{CHECKPOINTING}_kwargs"` are this release's names.
CHECKPOINTING = (
    "activation_checkpointing" if hasattr(PreTrainedModel, "activation_checkpointing_enable") else "gradient_checkpointing"
)


# Before 5.23, `Cache.crop(max_length)` keeps the first `max_length` positions, and assisted decoding crops the cache to
# a length counted on the caller's sequence; from 5.23 on, `crop(tokens_to_remove)` removes positions from the end.
_CROP_KEEPS_A_LENGTH = "max_length" in inspect.signature(DynamicCache.crop).parameters


def _crop_after_prepended_image(cache: Cache, prepended: int) -> None:
    """On releases whose `crop` keeps a length (`_CROP_KEEPS_A_LENGTH`), make `cache.crop` count that length on the
    caller's sequence, after the `prepended` image positions the cache holds first (concat), so that cropping never
    cuts into the image."""
    if not _CROP_KEEPS_A_LENGTH:
        return
    crop = cache.crop

    def crop_after_image(max_length: int) -> None:
        crop(max_length + prepended if max_length >= 0 else max_length)  # a negative length counts from the end

    cache.crop = crop_after_image


def _pop_cache(cache: Cache | None, kwargs: dict[str, Any], legacy: Cache | None = None) -> Cache | None:
    """The cache, whichever name the caller used (`cache` from 5.24 on, `past_key_values` before and by users)."""
    legacy = kwargs.pop("past_key_values", legacy)
    if cache is not None and legacy is not None:
        raise ValueError("Pass the key/value cache once, as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else legacy


def _model_cache_argument(owner: str, cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a caller passed to `owner.forward`, as `cache` or as `past_key_values`. From 5.24 on the latter name is
    deprecated and, as the library's own models do, this warns (generation itself passes `cache` there); before 5.24
    it is the only name, which generation passes, and nothing is said."""
    if past_key_values is not None and CACHE_NAME == "cache":
        # stacklevel 6: the caller's line, past this helper, `forward`, `can_return_tuple` and nn.Module's two calls
        warnings.warn(f"`past_key_values` is deprecated for `{owner}.forward`; use `cache` instead (transformers "
                      "renamed it in 5.24).", FutureWarning, stacklevel=6)
    return _pop_cache(cache, {}, past_key_values)


# ---------------------------------------------------------------------------------------------------------------------
# Names: which part of the model a parameter belongs to, and what each training stage trains
# ---------------------------------------------------------------------------------------------------------------------
# Attention implementations the image-joined attention computes itself (it needs an explicit mask with image columns).
_JOINT_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

# What each pre-training stage trains (paper, Sec. 3.5): 1 the connector, 2 + the LLM, 3 + the vision encoder.
# Within these, `HiveConfig.llm_train_scope` says which LLM weights count, and separate image k/v projections train
# in the stages that use them (`HiveConfig.image_kv`).
STAGE_COMPONENTS = {
    1: frozenset({"projector", "fusion"}),
    2: frozenset({"projector", "fusion", "llm"}),
    3: frozenset({"projector", "fusion", "llm", "vision"}),
}
_FUSION_NAMES = (".cross_attn.", ".image_k_proj.", ".image_v_proj.", ".hive_q_norm.", ".hive_k_norm.")
_IMAGE_KV_NAMES = (".image_k_proj.", ".image_v_proj.")
_EMBEDDING_NAMES = ("embed_tokens", "lm_head")
# An LLM decoder layer's own self-attention (every fusion keeps the LLM's module names).
_SELF_ATTENTION = re.compile(r"\.layers\.(\d+)\.self_attn\.")


def parameter_component(name: str) -> str:
    """Which part of a HIVE model a parameter belongs to: `vision`, `projector`, `fusion` (the new cross-attention
    weights, gates, separate image k/v projections and QK-norms inside the LLM) or `llm`."""
    if name.startswith("vision_model."):
        return "vision"
    if name.startswith("projectors."):
        return "projector"
    if any(part in name for part in _FUSION_NAMES):
        return "fusion"
    return "llm"


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class HiveVisionEncoderOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_patches, vision_hidden_size)`):
        The tower's final output, exactly as the stock vision model returns it (after its post norm, if any).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, vision_hidden_size)`, *optional*):
        The tower's pooled output (SigLIP attention-pooling head, CLIP normalised class token).
    hierarchical_features (`tuple(torch.FloatTensor)`):
        One `(batch_size, num_patches, vision_hidden_size)` tensor per entry of `config.vision_feature_layers`,
        in that order (`hidden_states` indices: 0 = patch embeddings, i = output of block i).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        All `num_hidden_layers + 1` hidden states, when `output_hidden_states=True` (with a list of indices, the
        others are `None`).
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        The tower's attention weights per block, `(batch_size, num_heads, num_patches, num_patches)`, when
        `output_attentions=True` and the tower's attention implementation produces them (`eager`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hierarchical_features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
@_cache_field_named_for_this_release
class HiveCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Next-token cross entropy over `labels` (-100 and image positions ignored).
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        LM logits aligned with `input_ids` (image tokens that were prepended in concat mode are removed).
    cache (`Cache`, *optional*):
        The LLM's text key/value cache (concat mode: image positions included). Named `past_key_values` on
        transformers releases before 5.24, as the library's own outputs are.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The LLM's hidden states, when `output_hidden_states=True`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        When `output_attentions=True` and the LLM's attention implementation returns weights (`eager`): per LLM layer
        the weights over its text keys, `(batch_size, num_heads, sequence_length, key_length)`, as the plain LLM's
        (joint: the fused layers' weights over their text keys; the image part is in `image_attentions`; concat: over
        the whole sequence, image tokens included).
    image_attentions (`tuple(torch.FloatTensor)`, *optional*):
        When `output_attentions=True`: per fused layer (`cross_attention_layers`; concat: every LLM layer) the
        attention weights from each query position to each image token, shape
        `(batch_size, num_heads, sequence_length, num_image_tokens)`. Reshape the last axis to the patch grid
        (dropping a class token, if the tower has one) to draw them over the image.
    image_key_values (`tuple(tuple(torch.FloatTensor))`, *optional*):
        joint/gated: per fused layer the image `(key, value)`, each `(batch_size, num_kv_heads, num_image_tokens,
        head_dim)`; pass them back instead of `pixel_values` to skip the encoder (what `generate` does).
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        When `pixel_values` are given: what `get_image_features` returns for them (`pooler_output`: one entry per
        image, what the LLM receives; the tower's `hidden_states` / `attentions` when asked), as transformers' VLMs
        return it.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None  # `past_key_values` before 5.24: see `_cache_field_named_for_this_release`
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_key_values: tuple[tuple[torch.FloatTensor, torch.FloatTensor], ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------
class _XavierLinear(nn.Linear):
    """A linear layer that `HivePreTrainedModel._init_weights` initialises xavier-uniform with zero bias (the init of
    the authors' projector); otherwise an `nn.Linear`."""


class HiveProjector(nn.Module):
    """Maps one tapped encoder layer to the LLM width: a 2-layer MLP (`config.projector_type`).

    `mlp_residual` (the paper's text): the first layer's output is added to the second's. `mlp`: no residual.
    `ln_mlp` (the authors' code, `LlamaAttention_rework.mm_proj` with `--mm_proj_type ln_mlp`): a LayerNorm over the
    vision width first, no residual, and xavier-uniform weights with zero biases.
    """

    def __init__(self, config: HiveConfig):
        super().__init__()
        text_width, vision_width = config.text_config.hidden_size, config.vision_config.hidden_size
        hidden = config.projector_hidden_size or text_width
        self.projector_type = config.projector_type
        self.residual = config.projector_type == "mlp_residual"
        # The authors' LayerNorm takes its eps from the LLM's `rms_norm_eps`.
        eps = getattr(config.text_config, "rms_norm_eps", None) or 1e-5
        self.norm = nn.LayerNorm(vision_width, eps=eps) if config.projector_type == "ln_mlp" else None
        linear = _XavierLinear if config.projector_type == "ln_mlp" else nn.Linear
        self.linear_1 = linear(vision_width, hidden, bias=config.projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = linear(hidden, text_width, bias=config.projector_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            features = self.norm(features)
        hidden = self.linear_1(features)  # (B, N, P)
        out = self.linear_2(self.act(hidden))  # (B, N, D_text)
        return out + hidden if self.residual else out


class HiveRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    scaling: float,
    dropout: float,
    need_weights: bool,
    split: int = 0,
) -> tuple[torch.Tensor, Any]:
    """Attention with a boolean `allowed` mask (True = attend). q: (B, H, T, D); k, v: (B, H_kv, S, D).

    Returns the output as (B, T, H, D) and, when `need_weights`, the softmax weights (B, H, T, S); with `split`, those
    as two parts, over the first `split` keys and over the others, from which the output is computed, so that each
    part a caller returns is on the way to the output (its gradient can be read, as of any model's attentions).
    """
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if not need_weights:
        out = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scaling
        )
        return out.transpose(1, 2), None
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if not split:
        out = torch.matmul(nn.functional.dropout(weights, p=dropout), value)
        return out.transpose(1, 2), weights
    parts = (weights[..., :split], weights[..., split:])
    values = value.split([split, value.shape[2] - split], dim=2)
    out = sum(torch.matmul(nn.functional.dropout(w, p=dropout), v) for w, v in zip(parts, values))
    return out.transpose(1, 2), parts


def _allowed_text_keys(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device):
    """Boolean (B|1, 1, T, S) view of the LLM's causal mask, whichever form the attention implementation produced."""
    if attention_mask is None:  # sdpa's `is_causal` fast path: the mask it stood for
        q_pos = torch.arange(q_len, device=device) + (kv_len - q_len)
        return (torch.arange(kv_len, device=device)[None, :] <= q_pos[:, None])[None, None]
    attention_mask = attention_mask[..., :kv_len]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask == 0  # additive float mask: 0 keeps, dtype-min removes


# ---------------------------------------------------------------------------------------------------------------------
# How the image reaches the fused layers (joint and gated)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class HiveTextPlacement:
    """Where the text of one forward sits relative to the image (joint fusion with `image_rope`).

    cos, sin (`torch.Tensor` of shape `(batch_size, sequence_length, head_dim)`):
        The rotary embedding of each text token at its position shifted past the image (by sqrt(N) for `2d`, N for
        `1d`), as in the authors' fused layers; the LLM's other layers keep the unshifted positions.
    sees_image (`torch.BoolTensor` of shape `(batch_size, sequence_length)`):
        Text at or after the image's place attends to it; text before it does not (padding does, harmlessly, so that
        no query row is left with nothing to attend to).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    sees_image: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HiveTextPlacement:
        """Moved to `device` (see `HiveImageContext.to`)."""
        return HiveTextPlacement(*(t.to(device, non_blocking=non_blocking) for t in (self.cos, self.sin, self.sees_image)))


def _mrope_components(head_dim: int, device: torch.device) -> torch.Tensor:
    """(head_dim,) which position component rotates each channel of a 2-D image key: 0 row, 1 column, 2 the third.

    The authors split the rotary channels 3/16 row, 3/16 column, 2/16 third (`mrope_section`), rows on the even and
    columns on the odd frequencies of the first 3/8 (`apply_multimodal_rotary_pos_emb`). Here every channel keeps its
    own frequency and only picks its component by that rule. Their code instead (head_dim 64) moves frequency 2j to
    channel j and 2m+1 to channel 12+m, a permutation it applies to text keys too but not to queries, so their fused
    layers' text-to-text logits stop depending on relative distance only; that is not copied here. Text keys, whose
    three components are equal, therefore get exactly the queries' 1-D rotary.
    """
    frequency = torch.arange(head_dim, device=device) % (head_dim // 2)
    interleaved = 2 * (3 * head_dim // 16)
    return torch.where(frequency < interleaved, frequency % 2, torch.full_like(frequency, 2))


def image_rotary(
    rotary_emb: nn.Module, like: torch.Tensor, num_image: int, offset: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin `(1, N, head_dim)` of the image keys placed at text position `offset` (`image_rope`).

    `1d`: positions `offset + i`. `2d`: patch i of the side-S grid (row-major, as the tower orders it) at row
    `offset + i // S`, column `offset + i % S` and third component `offset + S // 2`, as the authors' code does.
    `rotary_emb` is the LLM's own rotary module (same base, scaling and `attention_scaling`).
    """
    index = torch.arange(num_image, device=like.device)
    if mode == "1d":
        return rotary_emb(like, (offset + index)[None])
    side = math.isqrt(num_image)
    third = torch.full_like(index, offset + side // 2)
    positions = torch.stack([offset + index // side, offset + index % side, third])  # (3, N)
    cos, sin = rotary_emb(like, positions)  # (3, N, D): one row per component
    pick = _mrope_components(cos.shape[-1], like.device)[None, None].expand(1, num_image, -1)  # (1, N, D)
    return cos.gather(0, pick), sin.gather(0, pick)


def text_placement(
    rotary_emb: nn.Module,
    like: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_image: int,
    image_position: int,
    mode: str,
) -> HiveTextPlacement:
    """Joint fusion with `image_rope` (`mode`, `1d` or `2d`): the fused layers' text positions, shifted past the
    `num_image` image tokens placed at text position `image_position`, and which text tokens see the image.

    `position_ids` `(batch_size | 1, sequence_length)` are the text's positions in the LLM's other layers;
    `attention_mask` the caller's 2-D mask (padding sees the image, see `HiveTextPlacement.sees_image`); `rotary_emb`
    the LLM's own rotary module and `like` a tensor of the dtype and device it computes in.
    """
    follows = position_ids >= image_position  # (B, T)
    shift = math.isqrt(num_image) if mode == "2d" else num_image
    cos, sin = rotary_emb(like, position_ids + follows * shift)  # each (B, T, head_dim)
    sees_image = follows
    if attention_mask is not None and attention_mask.dim() == 2:
        sees_image = sees_image | ~attention_mask[:, -position_ids.shape[1]:].bool()
    return HiveTextPlacement(cos=cos, sin=sin, sees_image=sees_image)


@dataclass
class HiveImageContext:
    """Everything the fused LLM layers take from the image in one forward (joint and gated fusion), and where they
    record the attention weights `output_attentions` asks for.

    This is the only way the image reaches the fused layers:
    1. `HiveForConditionalGeneration.forward` (joint/gated: `_forward_fused`) builds it with `_image_context` and calls
       the LLM with `hive_image=<it>`.
    2. The LLM's decoder model hands its keyword arguments on to every decoder layer, and each decoder layer to its
       self-attention, untouched (the `**kwargs` contract of transformers' Llama-family decoders). Layers that are not
       fused take no `hive_image` argument and ignore it.
    3. joint: a fused layer's self-attention is a `HiveJointAttention`, whose `forward` takes `hive_image` and joins
       `key_values[fusion_index]` to its text keys/values. gated: `_gated_cross_attention_before_layer`, a forward
       pre-hook of the fused decoder layer, reads `hive_image` from the layer's keyword arguments and runs the layer's
       `HiveGatedCrossAttention` on the hidden states before the layer.

    key_values (`tuple(tuple(torch.Tensor))`, *optional*):
        Per fused layer (`config.cross_attention_layers` order) the image `(key, value)`, each `(batch_size,
        num_kv_heads, num_image_tokens, head_dim)` (`HiveForConditionalGeneration.get_image_key_values`). `None`: no
        image in this forward; the fused layers then compute what the plain LLM does.
    placement (`HiveTextPlacement`, *optional*):
        joint with `image_rope`: where the text sits relative to the image.
    image_attentions (`list[torch.Tensor]`, *optional*):
        A recorder, present when `output_attentions` is set and there is an image: each fused layer appends its
        weights over the image tokens, `(batch_size, num_heads, sequence_length, num_image_tokens)`, in layer order.
    text_attentions (`list[torch.Tensor | None]`, *optional*):
        A recorder, present in joint fusion when `output_attentions` is set: each fused layer appends its own weights
        over its text keys (`None` where its attention computes none), which the LLM does not record (it records its
        own attention class only).
    """

    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    placement: HiveTextPlacement | None = None
    image_attentions: list[torch.Tensor] | None = None
    text_attentions: list[torch.Tensor | None] | None = None

    def record_image_attention(self, weights: torch.Tensor) -> None:
        if self.image_attentions is not None:
            self.image_attentions.append(weights)

    def record_text_attention(self, weights: torch.Tensor | None) -> None:
        if self.text_attentions is not None:
            self.text_attentions.append(weights)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HiveImageContext:
        """The image moved to `device`, sharing the recorders: with the LLM split across devices (`device_map`),
        accelerate moves each layer's inputs to that layer's device by calling `.to` on them, this one included."""
        move = {"device": device, "non_blocking": non_blocking}
        key_values = None
        if self.key_values is not None:
            key_values = tuple((key.to(**move), value.to(**move)) for key, value in self.key_values)
        placement = self.placement.to(**move) if self.placement is not None else None
        return dataclasses.replace(self, key_values=key_values, placement=placement)


# ---------------------------------------------------------------------------------------------------------------------
# The fused attention: joint (the LLM layer's own self-attention, joined by the image) and gated (a block before it)
# ---------------------------------------------------------------------------------------------------------------------
class HiveJointAttention(nn.Module):
    """A Llama-family self-attention whose text queries also attend to one tapped encoder layer (joint fusion).

    It adopts the original layer's projections under their original names (`q_proj`, ..., and Qwen3's
    `q_norm`/`k_norm`), so the LLM's checkpoint keys are unchanged. With `qk_norm` it adds the authors' RMSNorm q/k
    norms (`hive_q_norm`, `hive_k_norm`) after the rotary embedding; with `image_kv` "separate" in any stage it holds
    `image_k_proj`/`image_v_proj`. Image keys come in rotated already (`image_key_values`), or unrotated when
    `image_rope="none"`. Without an image it is exactly the LLM's own attention, as the authors' layer is.
    """

    def __init__(self, attn: nn.Module, fusion_index: int, config: HiveConfig):
        super().__init__()
        for name in ("config", "layer_idx", "head_dim", "num_key_value_groups", "scaling", "attention_dropout"):
            setattr(self, name, getattr(attn, name))
        self.is_causal = True
        self.sliding_window = getattr(attn, "sliding_window", None)
        self.fusion_index = fusion_index
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)
        if config.uses_separate_image_kv:  # copies; re-copied after loading an LLM and when a separate stage starts
            self.image_k_proj = copy.deepcopy(attn.k_proj)
            self.image_v_proj = copy.deepcopy(attn.v_proj)
        else:
            self.image_k_proj = self.image_v_proj = None
        if config.qk_norm:  # the authors' `--mm_qknorm`: eps from the LLM, weight 1 at init
            eps = getattr(attn.config, "rms_norm_eps", None) or 1e-6
            self.hive_q_norm, self.hive_k_norm = HiveRMSNorm(self.head_dim, eps), HiveRMSNorm(self.head_dim, eps)
        else:
            self.hive_q_norm = self.hive_k_norm = None

    def _heads(self, proj: nn.Module, states: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        out = proj(states).view(*states.shape[:-1], -1, self.head_dim)  # (B, L, H, D)
        if norm is not None:
            out = norm(out)
        return out.transpose(1, 2)  # (B, H, L, D)

    def image_key_values(
        self,
        image_features: torch.Tensor,
        separate: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of projected image features already normalised by the layer's input norm.

        `separate`: use `image_k_proj`/`image_v_proj` instead of the layer's own projections. `rotary`: the image
        keys' (cos, sin), `(1, N, D)`, from `image_rotary`. QK-norm comes last, after the rotary, as for text keys.
        """
        if separate and self.image_k_proj is None:
            raise ValueError("This layer has no separate image k/v projections: set `image_kv` in the config.")
        key = self._heads(self.image_k_proj if separate else self.k_proj, image_features, self.k_norm)
        value = self._heads(self.image_v_proj if separate else self.v_proj, image_features, None)
        if rotary is not None:
            key, _ = apply_rotary_pos_emb(key, key, *rotary)
        if self.hive_k_norm is not None:
            key = self.hive_k_norm(key)
        return key, value  # each (B, H_kv, N, D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        hive_image: HiveImageContext | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        hive_image (`HiveImageContext`, *optional*):
            What `HiveForConditionalGeneration.forward` handed the LLM for its fused layers, passed on to this
            attention by its decoder layer with its other keyword arguments. Its `key_values[self.fusion_index]` join
            this layer's text keys/values, its `placement` puts the text past the image, and this layer records its
            weights in it. `None`, or no image in it: exactly the LLM's own attention.
        """
        cache = _pop_cache(cache, kwargs)  # the decoder layer passes it as `cache` (5.24+) or `past_key_values`
        image = hive_image if hive_image is not None and hive_image.key_values is not None else None
        if image is not None and image.placement is not None:  # text after the image sits past it
            position_embeddings = (image.placement.cos, image.placement.sin)
        query, key, value = self._text_query_key_values(hidden_states, position_embeddings, cache, image is not None)
        if image is None:
            out, weights = self._llm_attention(query, key, value, attention_mask, **kwargs)
        else:
            out, weights = self._image_and_text_attention(query, key, value, attention_mask, image)
        if hive_image is not None:  # the LLM records its own attention modules only, not this one
            hive_image.record_text_attention(weights)
        out = self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous())  # (B, T, H * D) -> (B, T, D_text)
        return out, weights

    def _text_query_key_values(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Cache | None, with_image: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The text's rotated queries `(B, H, T, D)` and its keys/values `(B, H_kv, S, D)`, the cache's included (it
        holds text keys/values only, rotated and before the image QK-norm, as the authors' layer does)."""
        query = self._heads(self.q_proj, hidden_states, self.q_norm)
        key = self._heads(self.k_proj, hidden_states, self.k_norm)
        value = self._heads(self.v_proj, hidden_states, None)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if with_image and self.hive_q_norm is not None:
            query = self.hive_q_norm(query)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        return query, key, value

    def _dropout(self) -> float:
        return self.attention_dropout if self.training else 0.0

    def _llm_attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """No image in this forward: the LLM's own attention, through its configured implementation."""
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        return interface(
            self, query, key, value, attention_mask, dropout=self._dropout(), scaling=self.scaling,
            sliding_window=self.sliding_window, **kwargs,
        )

    def _image_and_text_attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
        image: HiveImageContext,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text queries over this layer's image keys, then its text keys under the LLM's causal mask. Returns the
        output `(B, T, H, D)` and the weights over the text keys, as the plain LLM's (those over the image tokens go
        to `image.image_attentions`)."""
        if self.hive_k_norm is not None:
            key = self.hive_k_norm(key)
        image_key, image_value = image.key_values[self.fusion_index]
        batch, q_len, text_len, num_image = query.shape[0], query.shape[2], key.shape[2], image_key.shape[2]
        allowed = _allowed_text_keys(attention_mask, q_len, text_len, query.device).expand(batch, -1, -1, -1)
        if image.placement is None:  # every query sees the whole image
            image_cols = allowed.new_ones((batch, 1, q_len, num_image))
        else:
            image_cols = image.placement.sees_image[:, None, :, None].expand(-1, -1, -1, num_image)
        allowed = torch.cat([image_cols, allowed], dim=-1)  # (B, 1, T, N + S)
        key = torch.cat([image_key.to(key.dtype), key], dim=2)  # (B, H_kv, N + S, D)
        value = torch.cat([image_value.to(value.dtype), value], dim=2)
        need_weights = image.image_attentions is not None or self.config._attn_implementation == "eager"
        out, weights = _attend(query, key, value, allowed, self.scaling, self._dropout(), need_weights, split=num_image)
        if weights is None:
            return out, None
        image_weights, text_weights = weights
        image.record_image_attention(image_weights)
        return out, text_weights


class HiveGatedCrossAttention(nn.Module):
    """Flamingo-style gated cross-attention: `h + tanh(gate) * CrossAttn(norm(h), image)`, gate initialised to 0."""

    def __init__(self, text_config, fusion_index: int):
        super().__init__()
        width = text_config.hidden_size
        self.num_heads = text_config.num_attention_heads
        self.num_kv_heads = getattr(text_config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(text_config, "head_dim", None) or width // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.fusion_index = fusion_index
        eps = getattr(text_config, "rms_norm_eps", 1e-6)
        self.norm = HiveRMSNorm(width, eps)
        self.image_norm = HiveRMSNorm(width, eps)
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, width, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))

    def image_key_values(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.image_norm(image_features)
        shape = (*image_features.shape[:-1], -1, self.head_dim)
        key = self.k_proj(normed).view(shape).transpose(1, 2)  # (B, H_kv, N, D)
        value = self.v_proj(normed).view(shape).transpose(1, 2)
        return key, value

    def forward(self, hidden_states: torch.Tensor, image: HiveImageContext) -> torch.Tensor:
        """`hidden_states` `(B, T, D)` plus the gated attention of their queries over this layer's image keys/values,
        `image.key_values[self.fusion_index]`; `image` is the context `_gated_cross_attention_before_layer` found in
        the decoder layer's keyword arguments. The weights are recorded in `image.image_attentions` when asked."""
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(self.norm(hidden_states)).view(*input_shape, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        image_key, image_value = (t.to(query.dtype) for t in image.key_values[self.fusion_index])
        need_weights = image.image_attentions is not None
        out, weights = _attend(query, image_key, image_value, None, self.scaling, 0.0, need_weights)
        if need_weights:
            image.record_image_attention(weights)
        out = self.o_proj(out.reshape(*input_shape, -1))  # (B, T, H * D) -> (B, T, D)
        return hidden_states + torch.tanh(self.gate).to(out.dtype) * out


def _gated_cross_attention_before_layer(
    layer: nn.Module, args: tuple, kwargs: dict[str, Any]
) -> tuple[tuple, dict] | None:
    """Gated fusion: the first step of a fused decoder layer, its gated cross-attention block (`layer.cross_attn`)
    adding the image to the hidden states before the layer runs. `HiveForConditionalGeneration._inject_fusion`
    registers it as the layer's forward pre-hook.

    `kwargs["hive_image"]` is the `HiveImageContext` that `HiveForConditionalGeneration.forward` handed the LLM, which
    the LLM's decoder model passes to every decoder layer; without an image in it the layer runs as the LLM's own.

    A hook rather than a wrapper module keeps the LLM's module names, so its checkpoint keys and tensor-parallel plan
    (`layers.*.self_attn.q_proj`, ...) apply unchanged. Under gradient checkpointing, releases that checkpoint the
    layer's call recompute this block with the layer; releases that checkpoint only its `forward` (recent ones) run it
    once and keep its activations, which is as correct.
    """
    image: HiveImageContext | None = kwargs.get("hive_image")
    if image is None or image.key_values is None:
        return None
    hidden_states = args[0] if args else kwargs["hidden_states"]
    hidden_states = layer.cross_attn(hidden_states, image)
    if args:
        return (hidden_states, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden_states}


# ---------------------------------------------------------------------------------------------------------------------
# The image a returned cache carries
# ---------------------------------------------------------------------------------------------------------------------
# A forward that continues from a cache this model returned (a later generation step, or a caller passing the cache
# back without `pixel_values`) keeps that cache's image: `_attach_image` writes it onto the cache under this attribute
# after the LLM call, `_image_of` reads it back; nothing else touches the attribute.
_CACHE_IMAGE = "hive_cached_image"


@dataclass
class _CachedImage:
    """What a returned cache remembers of its image.

    key_values: joint/gated, every fused layer's image `(key, value)` (the cache itself holds text keys/values only).
    prepended: concat, how many image positions the cache holds before the caller's sequence (0 when the image sat at
        placeholders of the sequence, or there is none), so that later outputs stay aligned with that sequence.
    """

    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    prepended: int = 0


def _attach_image(cache: Cache | None, image: _CachedImage) -> None:
    """Let `cache` (what the LLM just returned; `None` without `use_cache`) carry `image`, read by `_image_of`."""
    if cache is None:
        return
    if image.prepended and not _image_of(cache).prepended:  # first time: cropping must count after the image
        _crop_after_prepended_image(cache, image.prepended)
    setattr(cache, _CACHE_IMAGE, image)


def _image_of(cache: Cache | None) -> _CachedImage:
    """The image `cache` carries (`_attach_image`); none for a cache this model did not return, or no cache."""
    return getattr(cache, _CACHE_IMAGE, None) or _CachedImage()


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------
class HivePreTrainedModel(PreTrainedModel):
    config_class = HiveConfig
    config: HiveConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HiveProjector"]  # a gated layer's cross-attention lives inside the LLM's decoder layer
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, HiveGatedCrossAttention):
            init.zeros_(module.gate)  # the frozen LLM computes what it did before, at step 0
        elif isinstance(module, _XavierLinear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, HiveRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        super().initialize_weights()
        # The LLM's own init reaches the fusion modules injected into it; give them ours. Guarded init functions
        # leave weights that a checkpoint provided untouched.
        for module in self.modules():
            if isinstance(module, HiveGatedCrossAttention):
                for child in module.modules():
                    self._init_weights(child)
            elif isinstance(module, HiveJointAttention) and module.hive_q_norm is not None:
                self._init_weights(module.hive_q_norm)
                self._init_weights(module.hive_k_norm)


class HiveVisionEncoderModel(HivePreTrainedModel):
    """The HIVE vision encoder: any transformers vision tower, tapped at `config.vision_feature_layers`.

    This is the product of HIVE pre-training and what `AutoModel` loads from a HIVE checkpoint (a full
    `HiveForConditionalGeneration` checkpoint included). `to_base_model()` returns it as the stock tower.
    """

    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = [r"^projectors\.", r"^language_model\."]

    def __init__(self, config: HiveConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_tower.get_input_embeddings()

    @property
    def _can_stop_early(self) -> bool:
        return hasattr(self.vision_tower, "embeddings") and hasattr(getattr(self.vision_tower, "encoder", None), "layers")

    def hierarchical_features(
        self,
        pixel_values: torch.Tensor,
        layers: list[int] | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The `hidden_states[i]` for each `i` in `layers` (default: `config.vision_feature_layers`), in order.

        Runs the blocks up to the deepest requested layer only (timm's `forward_intermediates` idea); towers
        without the usual `embeddings` + `encoder.layers` layout fall back to a full forward.
        """
        layers = list(self.config.vision_feature_layers if layers is None else layers)
        pixel_values = pixel_values.to(self.dtype)
        tower = self.vision_tower
        if not self._can_stop_early:
            out = tower(pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=interpolate_pos_encoding)
            return tuple(out.hidden_states[i] for i in layers)
        hidden = tower.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)  # (B, N, D)
        pre_norm = getattr(tower, "pre_layrnorm", None)  # CLIP normalises before its first block
        if pre_norm is not None:
            hidden = pre_norm(hidden)
        states = [hidden]
        for block in tower.encoder.layers[: max(layers)]:
            hidden = block(hidden, None)
            states.append(hidden)
        return tuple(states[i] for i in layers)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool = False,
        features_only: bool = False,
        **kwargs: Any,
    ) -> HiveVisionEncoderOutput:
        r"""
        output_hidden_states (`bool` or `list[int]`, *optional*):
            Return the tower's hidden states; a list of indices keeps only those (the others are `None`), as
            transformers' "capture only these layers". `None` uses `config.output_hidden_states`.
        output_attentions (`bool`, *optional*):
            Return the tower's attention weights (its attention implementation must produce them, e.g. `eager`).
            `None` uses `config.output_attentions`.
        features_only (`bool`, *optional*, defaults to `False`):
            Return only `hierarchical_features`, computing no block beyond the deepest tapped layer.
        """
        if features_only:
            feats = self.hierarchical_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            return HiveVisionEncoderOutput(hierarchical_features=feats)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        out = self.vision_tower(
            pixel_values=pixel_values.to(self.dtype),
            output_hidden_states=True,  # the tapped layers are hidden states
            output_attentions=bool(output_attentions),
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            **kwargs,
        )
        return HiveVisionEncoderOutput(
            last_hidden_state=out.last_hidden_state,
            pooler_output=getattr(out, "pooler_output", None),
            hierarchical_features=tuple(out.hidden_states[i] for i in self.config.vision_feature_layers),
            hidden_states=_select_hidden_states(out.hidden_states, output_hidden_states),
            attentions=out.attentions if output_attentions else None,
        )

    def to_base_model(self) -> PreTrainedModel:
        """The stock transformers vision model (e.g. `SiglipVisionModel`) holding these weights: a released HIVE
        encoder drops into LLaVA pipelines and probes with no custom code."""
        return copy.deepcopy(self.vision_tower)


def load_vision_tower(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """The stock transformers vision model behind `name_or_path` (folder or Hub id): a HIVE checkpoint (full or
    encoder-only) through `HiveVisionEncoderModel.to_base_model()`, the vision half of a two-tower checkpoint (SigLIP,
    CLIP), or a vision model as is. `kwargs` go to every `from_pretrained` (e.g. `revision`, `trust_remote_code`)."""
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    # By model type rather than class: with trust_remote_code the config class is the checkpoint's own copy.
    if config.model_type == HiveConfig.model_type:
        return HiveVisionEncoderModel.from_pretrained(name_or_path, **kwargs).to_base_model()
    # A two-tower checkpoint keeps its vision weights under `vision_model.`, where the vision-only class expects them,
    # so the text tower is never loaded.
    vision_config = getattr(config, "vision_config", config)
    return AutoModel._model_mapping[type(vision_config)].from_pretrained(name_or_path, **kwargs)


class HiveForConditionalGeneration(HivePreTrainedModel, GenerationMixin):
    """Vision encoder + one projector per tapped layer + a Llama-family causal LM with HIVE fusion injected."""

    main_input_name = "input_ids"

    def __init__(self, config: HiveConfig):
        super().__init__(config)
        self.vision_model = HiveVisionEncoderModel(config)
        self.projectors = nn.ModuleList(HiveProjector(config) for _ in config.vision_feature_layers)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._inject_fusion()
        self.post_init()
        # A tied lm_head is the input embedding: save_pretrained does not write it, and loading re-ties it. Naming it as
        # not saved says so to the Trainer too, which then re-ties it on resume instead of calling it missing (a real
        # missing weight is still reported). An untied head is not in the set, and is saved.
        tied = getattr(self, "all_tied_weights_keys", None) or {}
        self._keys_to_ignore_on_save = set(self._keys_to_ignore_on_save or ()) | set(tied)
        self._plan_image_kv()
        self.copy_image_kv_from_text()
        unused = self._unused_vision_parameters()  # never run by HIVE: frozen from the start, as in every stage
        for name, param in self.named_parameters():
            if name in unused:
                param.requires_grad_(False)

    # -- construction ---------------------------------------------------------------------------------------------
    def _decoder_layers(self) -> nn.ModuleList:
        layers = getattr(self.language_model.get_decoder(), "layers", None)
        if layers is None:
            raise ValueError(
                f"{type(self.language_model).__name__} has no `layers` list of decoder layers; HIVE supports "
                "Llama-family decoders (llama, qwen2, qwen3, mistral, ...)."
            )
        return layers

    def _inject_fusion(self) -> None:
        """Fuse the LLM layers `config.cross_attention_layers` names, under the LLM's own module names. joint: the
        layer's self-attention becomes a `HiveJointAttention` holding the original projections. gated: the layer gets
        a `cross_attn` block and `_gated_cross_attention_before_layer` as its forward pre-hook, which runs the block
        on the hidden states first."""
        fusion = self.config.fusion
        if fusion == "concat":
            return
        impl = self.config.text_config._attn_implementation
        if fusion == "joint" and impl not in (None, *_JOINT_ATTN_IMPLEMENTATIONS):
            raise ValueError(
                f"fusion='joint' computes attention over image+text keys itself and supports attn_implementation "
                f"{_JOINT_ATTN_IMPLEMENTATIONS}; got {impl!r}. Load with attn_implementation='sdpa'."
            )
        layers = self._decoder_layers()
        for index, layer_idx in enumerate(self.config.cross_attention_layers):
            layer = layers[layer_idx]
            _check_llama_shaped(layer)
            if fusion == "joint":
                layer.self_attn = HiveJointAttention(layer.self_attn, index, self.config)
            else:
                layer.cross_attn = HiveGatedCrossAttention(self.config.text_config, index)
                layer.register_forward_pre_hook(_gated_cross_attention_before_layer, with_kwargs=True)

    def _plan_image_kv(self) -> None:
        """Tensor parallelism shards the separate image k/v projections as their layer's own k/v: each process then
        holds the image keys of the same heads as its queries. (Gated cross-attention has no plan: it stays whole on
        every process, which is correct, only not split.)"""
        if not self.config.uses_separate_image_kv or not self._tp_plan:
            return
        for key, style in list(self._tp_plan.items()):
            for proj in ("k_proj", "v_proj"):
                if key.endswith(f".self_attn.{proj}"):
                    self._tp_plan[f"{key[: -len(proj)]}image_{proj}"] = style

    def copy_image_kv_from_text(self) -> None:
        """Separate image k/v projections start as copies of their layer's own k/v projections."""
        with torch.no_grad():
            for module in self.language_model.modules():
                if isinstance(module, HiveJointAttention) and module.image_k_proj is not None:
                    module.image_k_proj.load_state_dict(module.k_proj.state_dict())
                    module.image_v_proj.load_state_dict(module.v_proj.state_dict())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint whose config says it is encoder-only
        (`config.encoder_only`, set by encoder-only releases): the model would otherwise come back with a random LLM
        and only a missing-keys report. Any other checkpoint loads as with every model, weights it lacks reported in
        the log and in `output_loading_info`."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if getattr(model.config, "encoder_only", False):  # configs saved before the field existed lack it
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is an encoder-only HIVE checkpoint (`encoder_only: true` in its "
                f"config): it holds no language-model weights. Load it with `HiveVisionEncoderModel` or `AutoModel`, "
                f"or compose it with an LLM through `{cls.__name__}.from_vision_text_pretrained`."
            )
        return loaded

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_name_or_path: str,
        text_name_or_path: str,
        vision_kwargs: dict | None = None,
        text_kwargs: dict | None = None,
        text_model_type: str | None = None,
        **config_kwargs: Any,
    ) -> HiveForConditionalGeneration:
        """Compose a HIVE model from a pretrained vision checkpoint and a pretrained causal LM (local folder or Hub
        id), keeping both sets of weights exactly. The connector is newly initialised.

        The vision side is anything `load_vision_tower` reads: a stock tower, the vision half of a two-tower
        checkpoint (SigLIP, CLIP) or a HIVE checkpoint's encoder. `vision_kwargs` / `text_kwargs` go to the
        respective `from_pretrained` (e.g. `revision`); `config_kwargs` to `HiveConfig` (e.g. `fusion="gated"`),
        except `token`, which goes to both `from_pretrained` calls: a config keeps unknown keyword arguments and
        `save_pretrained` would write the token into config.json.

        `text_model_type` (e.g. `"llama"`) loads the LM as that transformers architecture whatever model type its
        `config.json` names, without running its custom code: for Llama-shaped LMs published with their own type,
        such as MobileLLM (`model_type: "mobilellm"`, custom code for transformers 4.x). Its config's `auto_map` and
        `architectures` are dropped and MobileLLM's `share_embedding` becomes `tie_word_embeddings`; every weight must
        then load under the architecture's own names, or this raises.
        """
        token = {"token": config_kwargs.pop("token")} if "token" in config_kwargs else {}
        vision = load_vision_tower(vision_name_or_path, **token, **(vision_kwargs or {}))
        text_kwargs = {**token, **(text_kwargs or {})}
        if text_model_type is None:
            llm = AutoModelForCausalLM.from_pretrained(text_name_or_path, **text_kwargs)
        else:
            llm = _load_causal_lm_as(text_name_or_path, text_model_type, text_kwargs)

        config = HiveConfig(vision_config=vision.config, text_config=llm.config, **config_kwargs)
        model = cls(config)
        model.vision_model.vision_tower.load_state_dict(vision.state_dict())
        _load_llm_weights(model.language_model, llm, text_name_or_path)
        model.copy_image_kv_from_text()
        model.tie_weights()
        model.generation_config = copy.deepcopy(llm.generation_config)
        model.to(llm.dtype)
        return model

    # -- plumbing transformers expects ------------------------------------------------------------------------------
    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = checkpoint, **kwargs: Any
    ) -> None:
        # joint/gated hand the image to the fused layers as a keyword argument (`hive_image`); reentrant checkpointing
        # recomputes a layer from its positional inputs only and would backpropagate through them twice.
        reentrant = getattr(gradient_checkpointing_func, "keywords", {}).get("use_reentrant")
        if enable and reentrant and self.config.fusion != "concat":
            raise ValueError(
                f"fusion={self.config.fusion!r} needs non-reentrant gradient checkpointing: the image keys/values "
                "reach the fused layers as a keyword argument, which reentrant checkpointing cannot recompute. Pass "
                f'{CHECKPOINTING}_kwargs={{"use_reentrant": False}} (the default).'
            )
        super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=gradient_checkpointing_func, **kwargs
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # -- training stages ---------------------------------------------------------------------------------------------
    def _unused_vision_parameters(self) -> set[str]:
        """Encoder parameters HIVE training never reaches: blocks after the deepest tapped layer, the post norm and
        the pooling head. They stay frozen in stage 3 (they would get no gradient anyway)."""
        tower = self.vision_model.vision_tower
        if not self.vision_model._can_stop_early:
            return set()
        deepest = max(self.config.vision_feature_layers)
        used = ["embeddings.", "pre_layrnorm."] + [f"encoder.layers.{i}." for i in range(deepest)]
        prefix = "vision_model.vision_tower."
        return {prefix + n for n, _ in tower.named_parameters() if not any(n.startswith(u) for u in used)}

    def set_training_stage(self, stage: int) -> dict[str, dict[str, int]]:
        """Make exactly what `stage` trains trainable and freeze everything else.

        Stage 1: the connector (projectors, QK-norms; in gated mode the cross-attention weights and gates; separate
        image k/v projections in the stages `config.image_kv` uses them). Stage 2: + the LLM weights in
        `config.llm_train_scope` (only their LoRA adapters if the LLM carries `lora_` parameters). Stage 3: + the
        vision encoder. Entering a stage with separate image k/v from a shared one (the authors' stage 2) first
        copies each fused layer's k/v projections into them. The stage is recorded in `config.training_stage`.
        Returns `trainable_parameter_counts()`.
        """
        if stage not in STAGE_COMPONENTS:
            raise ValueError(f"`stage` must be 1, 2 or 3, got {stage!r}.")
        separate = self.config.image_kv_for_stage(stage) == "separate"
        if separate and self.config.image_kv_for_stage(self.config.training_stage) == "shared":
            self.copy_image_kv_from_text()
        components = STAGE_COMPONENTS[stage]
        has_lora = any("lora_" in name for name, _ in self.named_parameters())
        unused = self._unused_vision_parameters()
        for name, param in self.named_parameters():
            component = parameter_component(name)
            trainable = component in components and name not in unused
            if component == "llm":
                trainable = trainable and self._in_llm_train_scope(name) and (not has_lora or "lora_" in name)
            elif any(part in name for part in _IMAGE_KV_NAMES):
                trainable = trainable and separate
            param.requires_grad_(trainable)
        self.config.training_stage = stage
        return self.trainable_parameter_counts()

    def _in_llm_train_scope(self, name: str) -> bool:
        """Whether an LLM parameter is one `config.llm_train_scope` trains."""
        scope = self.config.llm_train_scope
        if scope == "all":
            return True
        if scope == "all_but_embeddings":
            return not any(part in name for part in _EMBEDDING_NAMES)
        match = _SELF_ATTENTION.search(name)  # fused_attention
        return match is not None and int(match.group(1)) in self.config.cross_attention_layers

    def trainable_parameter_counts(self) -> dict[str, dict[str, int]]:
        """`{component: {"trainable": n, "total": n}}` for vision, projector, fusion and llm."""
        counts = {c: {"trainable": 0, "total": 0} for c in ("vision", "projector", "fusion", "llm")}
        for name, param in self.named_parameters():
            entry = counts[parameter_component(name)]
            entry["total"] += param.numel()
            entry["trainable"] += param.numel() if param.requires_grad else 0
        return counts

    # -- vision side ---------------------------------------------------------------------------------------------
    def _encoder_grad(self) -> torch.autograd.grad_mode.set_grad_enabled:
        # A frozen encoder (stages 1 and 2) keeps no activations for backward: that memory is the encoder's size.
        frozen = not any(p.requires_grad for p in self.vision_model.parameters())
        return torch.set_grad_enabled(torch.is_grad_enabled() and not frozen)

    def _vision_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tapped layers' features, running no block beyond the deepest."""
        with self._encoder_grad():
            return self.vision_model.hierarchical_features(pixel_values)

    def get_image_key_values(self, pixel_values: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per fused LLM layer the image (key, value), computed once per image. joint/gated only.

        joint: from the layer's own or separate k/v projections as `config.image_kv` says for the current
        `config.training_stage`, rotated for their place in the text with `config.image_rope`.
        """
        if self.config.fusion == "concat":
            raise ValueError("fusion='concat' puts image tokens into the sequence; it has no image key/values.")
        return self._image_key_values(self.get_image_features(pixel_values, return_dict=True).pooler_output)

    def _image_key_values(self, projected: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """`get_image_key_values` from `get_image_features(...).pooler_output`, `(B, num_taps * N, D_text)`."""
        projected = projected.unflatten(1, (len(self.config.vision_feature_layers), -1))  # (B, taps, N, D_text)
        layers = self._decoder_layers()
        separate = self.config.image_kv_for_stage(self.config.training_stage) == "separate"
        rotary = None
        if self.config.fusion == "joint" and self.config.image_rope != "none":
            rotary = image_rotary(self._rotary_embedding(), self.get_input_embeddings().weight,
                                  projected.shape[2], self.config.image_position, self.config.image_rope)
        image_kv = []
        for features, layer_idx in zip(projected.unbind(1), self.config.cross_attention_layers):
            layer = layers[layer_idx]
            if self.config.fusion == "joint":
                normed = layer.input_layernorm(features)  # the layer's own frozen norm, as for its text
                image_kv.append(layer.self_attn.image_key_values(normed, separate=separate, rotary=rotary))
            else:
                image_kv.append(layer.cross_attn.image_key_values(features))
        return tuple(image_kv)

    def _rotary_embedding(self) -> nn.Module:
        rotary = getattr(self.get_decoder(), "rotary_emb", None)
        if rotary is None:
            raise ValueError(
                f"`image_rope={self.config.image_rope!r}` rotates image keys with the LLM's rotary embedding, and "
                f"{type(self.get_decoder()).__name__} has no `rotary_emb`; set image_rope='none'."
            )
        return rotary

    def _image_context(
        self,
        image_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Cache | None,
        record: bool,
    ) -> HiveImageContext:
        """What this forward hands the fused layers (see `HiveImageContext` for the path): the image keys/values, the
        text's placement relative to the image (joint with `image_rope`), and the recorders `output_attentions`
        (`record`) asks for."""
        text_attentions = [] if record and self.config.fusion == "joint" else None
        if image_key_values is None:
            return HiveImageContext(text_attentions=text_attentions)
        placement = None
        if self.config.fusion == "joint" and self.config.image_rope != "none":
            batch, seq_len = inputs_embeds.shape[:2]
            if position_ids is None:  # no mask to count positions on: they continue the cache's
                past = cache.get_seq_length() if cache is not None else 0
                position_ids = torch.arange(past, past + seq_len, device=inputs_embeds.device)[None]
            placement = text_placement(
                self._rotary_embedding(), self.get_input_embeddings().weight, position_ids.expand(batch, -1),
                attention_mask, image_key_values[0][0].shape[-2], self.config.image_position, self.config.image_rope,
            )
        return HiveImageContext(key_values=image_key_values, placement=placement,
                                image_attentions=[] if record else None, text_attentions=text_attentions)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        r"""
        What the LLM receives from each image, by fusion:

        - `pooler_output`: one `(tokens, text_hidden_size)` entry per image, as every transformers VLM returns it
          (generation expands it per beam along the batch). concat: the projected vision tokens that enter the LLM
          sequence, `(batch_size, num_patches, text_hidden_size)`; joint/gated: `(batch_size, num_taps * num_patches,
          text_hidden_size)`, the tapped layers' projector outputs one after another (`vision_feature_layers` order),
          from each of which the paired LLM layer (`cross_attention_layers`) forms the image keys/values (joint: after
          that layer's own input norm).
        - `last_hidden_state`: the deepest tapped encoder layer, `(batch_size, num_patches, vision_hidden_size)`.
        - `hidden_states` / `attentions`: the tower's, when asked (`None` uses the config); otherwise no block beyond
          the deepest tapped layer runs.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        hidden_states = attentions = None
        if output_hidden_states or output_attentions:
            with self._encoder_grad():
                out = self.vision_model(pixel_values, output_hidden_states=output_hidden_states,
                                        output_attentions=output_attentions, return_dict=True, **kwargs)
            features, hidden_states, attentions = out.hierarchical_features, out.hidden_states, out.attentions
        else:
            features = self._vision_features(pixel_values)
        dtype = self.get_input_embeddings().weight.dtype
        projected = [projector(f).to(dtype) for f, projector in zip(features, self.projectors)]  # each (B, N, D_text)
        return BaseModelOutputWithPooling(
            last_hidden_state=features[-1],
            pooler_output=projected[0] if self.config.fusion == "concat" else torch.cat(projected, dim=1),
            hidden_states=hidden_states,
            attentions=attentions,
        )

    # -- forward ---------------------------------------------------------------------------------------------------
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        image_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> HiveCausalLMOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, *optional*):
            Images, one per sequence. Without them (and without `image_key_values` or a cache that carries them) the
            model is the plain LLM.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Aligned with `input_ids` (the loss shifts them); -100 is ignored, and so are image positions.
        cache (`Cache`, *optional*):
            The LLM's key/value cache. joint/gated: a cache this model returned carries its image keys/values, so
            continuing from it keeps the image.
        past_key_values (`Cache`, *optional*):
            The same, under its name before transformers 5.24 (generation there passes it so); pass one of the two.
        image_key_values (`tuple`, *optional*):
            joint/gated: a previous output's `image_key_values`, used instead of `pixel_values`.
        output_attentions / output_hidden_states / return_dict (`bool`, *optional*):
            As in every transformers model; `None` uses the config.
        shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*, keyword only):
            Labels already shifted left (sequence/context parallelism); used instead of shifting `labels`.
        """
        cache = _model_cache_argument(type(self).__name__, cache, past_key_values)
        _check_forward_inputs(input_ids, inputs_embeds, pixel_values, image_key_values)
        targets = _LossTargets(labels, kwargs.pop("shift_labels", None), kwargs.pop("num_items_in_batch", None))
        # what goes to the LLM as it is: the output flags (`None` falls back to the config) and the caller's extras
        llm_kwargs = {
            "use_cache": use_cache,
            "logits_to_keep": logits_to_keep,
            "output_attentions": self.config.output_attentions if output_attentions is None else output_attentions,
            "output_hidden_states": (
                self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
            ),
            **kwargs,
        }
        image_outputs = None
        if pixel_values is not None:  # the tower's hidden states / attentions only when asked: they run every block
            image_outputs = self.get_image_features(
                pixel_values, output_hidden_states=llm_kwargs["output_hidden_states"] is True,
                output_attentions=bool(llm_kwargs["output_attentions"]), return_dict=True,
            )
        text = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                "position_ids": position_ids}
        if self.config.fusion == "concat":
            return self._forward_concat(**text, image_outputs=image_outputs, cache=cache, targets=targets,
                                        llm_kwargs=llm_kwargs)
        return self._forward_fused(**text, image_outputs=image_outputs, image_key_values=image_key_values, cache=cache,
                                   targets=targets, llm_kwargs=llm_kwargs)

    def _forward_fused(
        self,
        *,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        image_outputs: BaseModelOutputWithPooling | None,
        image_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None,
        cache: Cache | None,
        targets: _LossTargets,
        llm_kwargs: dict[str, Any],
    ) -> HiveCausalLMOutputWithPast:
        """joint/gated: the image reaches the fused layers as keys/values (a `HiveImageContext`), never as tokens of
        the sequence, so every output is aligned with the caller's sequence as it is."""
        # 1. image keys/values: of this forward's images, the caller's, or those the caller's cache carries
        if image_outputs is not None:
            image_key_values = self._image_key_values(image_outputs.pooler_output)
        elif image_key_values is None:
            image_key_values = _image_of(cache).key_values
        # 2. the text
        if inputs_embeds is None:  # ours, so that `hidden_states[0]` is the very tensor the LLM computes from
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, T, D)
        position_ids = _position_ids(attention_mask, position_ids, inputs_embeds.shape[1])
        # 3. what the fused layers receive: the image keys/values, the text's placement, the attention recorders
        image = self._image_context(image_key_values, inputs_embeds, attention_mask, position_ids, cache,
                                    record=bool(llm_kwargs["output_attentions"]))
        # 4. the LLM, the image travelling under one keyword to its fused layers
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  hive_image=image, return_dict=True, **_cache_kwargs(cache), **llm_kwargs)
        # 5. outputs
        if image.key_values is not None:
            _attach_image(_cache_of(out), _CachedImage(key_values=image.key_values))
        return HiveCausalLMOutputWithPast(
            loss=targets.loss(out.logits, self.config.text_config.vocab_size),
            logits=out.logits,
            hidden_states=_embeddings_first(out.hidden_states, inputs_embeds, self.config, image),
            attentions=_with_fused_layer_attentions(out.attentions, image.text_attentions, self.config),
            image_attentions=tuple(image.image_attentions) if image.image_attentions is not None else None,
            image_key_values=image.key_values,
            image_outputs=image_outputs,
            **_cache_kwargs(_cache_of(out)),
        )

    def _forward_concat(
        self,
        *,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        image_outputs: BaseModelOutputWithPooling | None,
        cache: Cache | None,
        targets: _LossTargets,
        llm_kwargs: dict[str, Any],
    ) -> HiveCausalLMOutputWithPast:
        """SA baseline: vision tokens at the image placeholder positions, or prepended when there are none.

        Prepended image tokens are not in the caller's sequence, so no output covers them: logits, hidden states and
        attentions are aligned with `input_ids` (attentions over its positions as keys; the weights on the image
        tokens are `image_attentions`), at the prefill and at every later step from the returned cache."""
        # 1. embed the text; placeholders embed as token 0 until the image replaces them, and never count in the loss
        image_token_id = self.config.resolved_image_token_id
        is_image = input_ids == image_token_id if input_ids is not None else None
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))  # (B, T, D)
        targets = targets.without_image(is_image)
        # 2. place or prepend the image tokens
        sequence = _ConcatSequence.build(inputs_embeds, attention_mask, position_ids, is_image, image_outputs, cache,
                                         image_token_id)
        weights_available = _concat_image_attentions_available(self.config, llm_kwargs["output_attentions"])
        # 3. the LLM
        out = self.language_model(inputs_embeds=sequence.inputs_embeds, attention_mask=sequence.attention_mask,
                                  position_ids=sequence.position_ids, return_dict=True, **_cache_kwargs(cache),
                                  **llm_kwargs)
        # 4. outputs aligned with the caller's sequence
        if sequence.image_prefix:
            _attach_image(_cache_of(out), _CachedImage(prepended=sequence.image_prefix))
        attentions, image_attentions = out.attentions, None
        if llm_kwargs["output_attentions"] and weights_available and attentions:
            attentions, image_attentions = sequence.split_attentions(attentions)
        return HiveCausalLMOutputWithPast(
            loss=targets.after_prepended(sequence.prepended).loss(out.logits, self.config.text_config.vocab_size),
            logits=sequence.caller_positions(out.logits),
            hidden_states=sequence.caller_hidden_states(out.hidden_states),
            attentions=attentions,
            image_attentions=image_attentions,
            image_outputs=image_outputs,
            **_cache_kwargs(_cache_of(out)),
        )

    # -- generation ----------------------------------------------------------------------------------------------
    def prepare_inputs_for_generation(
        self, *args: Any, is_first_iteration: bool | None = False, **kwargs: Any
    ) -> dict[str, Any]:
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # Images are read once, at the first forward of a generate call: after it, the cache holds their keys/values
        # (joint/gated carry them with it; concat holds the image positions), as llava does.
        if not is_first_iteration and kwargs.get("use_cache", True):
            model_inputs.pop("pixel_values", None)
        return model_inputs


# ---------------------------------------------------------------------------------------------------------------------
# What `HiveForConditionalGeneration.forward` calls: input checks, loss targets, output alignment
# ---------------------------------------------------------------------------------------------------------------------
def _check_forward_inputs(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    image_key_values: tuple | None,
) -> None:
    """Raise on inputs `HiveForConditionalGeneration.forward` cannot take together, naming them and the counts."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
    if pixel_values is not None and image_key_values is not None:
        raise ValueError("Pass either `pixel_values` or `image_key_values`, not both.")
    text_batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    if pixel_values is not None and pixel_values.shape[0] != text_batch:
        raise ValueError(
            f"Got {pixel_values.shape[0]} images (`pixel_values`) for {text_batch} text sequences; HIVE takes "
            "exactly one image per sequence."
        )


@dataclass
class _LossTargets:
    """What the next-token loss scores the logits against, as `ForCausalLMLoss` takes it.

    labels: `(batch_size, sequence_length)`, aligned with the input (the loss shifts them).
    shift_labels: the same already shifted left (sequence/context parallelism), used instead of shifting `labels`.
    num_items_in_batch: the Trainer's token count across gradient-accumulation steps.
    """

    labels: torch.LongTensor | None
    shift_labels: torch.LongTensor | None = None
    num_items_in_batch: torch.Tensor | int | None = None

    def loss(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
        if self.labels is None and self.shift_labels is None:
            return None
        return ForCausalLMLoss(logits, self.labels, vocab_size, num_items_in_batch=self.num_items_in_batch,
                               shift_labels=self.shift_labels)

    def without_image(self, is_image: torch.Tensor | None) -> _LossTargets:
        """concat: image positions (`is_image`, `(B, T)`) never count in the loss, nor do predictions of them."""
        if is_image is None:
            return self
        labels, shift_labels = self.labels, self.shift_labels
        if labels is not None:
            labels = labels.masked_fill(is_image, -100)
        if shift_labels is not None:
            next_is_image = torch.cat([is_image[:, 1:], is_image.new_zeros(is_image.shape[0], 1)], dim=1)
            shift_labels = shift_labels.masked_fill(next_is_image, -100)
        return dataclasses.replace(self, labels=labels, shift_labels=shift_labels)

    def after_prepended(self, prepended: int) -> _LossTargets:
        """concat: the targets of the sequence with `prepended` image tokens before it, which score nothing. The last
        image token predicts the first text token, as with placeholders (a label `shift_labels` does not hold: not
        scored there)."""
        if not prepended:
            return self

        def pad(labels: torch.Tensor | None) -> torch.Tensor | None:
            if labels is None:
                return None
            return torch.cat([labels.new_full((labels.shape[0], prepended), -100), labels], dim=1)  # (B, N + T)

        return dataclasses.replace(self, labels=pad(self.labels), shift_labels=pad(self.shift_labels))


def _embeddings_first(
    hidden_states: tuple[torch.Tensor | None, ...] | None,
    inputs_embeds: torch.Tensor,
    config: HiveConfig,
    image: HiveImageContext,
) -> tuple[torch.Tensor | None, ...] | None:
    """The LLM's hidden states with the embeddings first, as in every LM: in gated fusion with layer 0 fused, the
    LLM records layer 0's input after the pre-hook added the cross-attention to it."""
    fused_first = config.fusion == "gated" and 0 in config.cross_attention_layers
    if fused_first and image.key_values is not None and hidden_states and hidden_states[0] is not None:
        return (inputs_embeds, *hidden_states[1:])
    return hidden_states


def _with_fused_layer_attentions(
    llm_attentions: tuple[torch.Tensor, ...] | None,
    fused_attentions: list[torch.Tensor | None] | None,
    config: HiveConfig,
) -> tuple[torch.Tensor | None, ...] | None:
    """One attention entry per LLM layer: the LLM records only the attention modules it owns, so joint's fused
    layers' own (text) attentions join in layer order, when the LLM recorded its other layers' (an sdpa LLM computes
    no weights)."""
    recorded = len(llm_attentions or ()) + len(fused_attentions or ())
    if fused_attentions and recorded == config.text_config.num_hidden_layers:
        return _merge_layer_outputs(llm_attentions or (), fused_attentions, config.cross_attention_layers)
    return llm_attentions


def _concat_image_attentions_available(config: HiveConfig, output_attentions: bool | None) -> bool:
    """Whether the LLM returns the attention weights concat reads `image_attentions` from (only `eager` does);
    warns once when they are asked for and it does not."""
    available = config.text_config._attn_implementation == "eager"
    if output_attentions and not available:
        logger.warning_once(
            "fusion='concat' reads image attention from the LLM's own attention weights, which only "
            "attn_implementation='eager' returns; `image_attentions` is None. Load the model with "
            "attn_implementation='eager' to get them."
        )
    return available


@dataclass
class _ConcatSequence:
    """What the LLM computes from in concat fusion, and how its outputs map back onto the caller's sequence.

    inputs_embeds: `(batch_size, prepended + sequence_length, hidden_size)`, the caller's embeddings with the image
        tokens at their placeholders or before them.
    attention_mask: 2-D, `(batch_size, past + prepended + sequence_length)`, covering any image the cache holds.
    position_ids: `(batch_size, prepended + sequence_length)`, skipping padding (or the caller's, when it gave some
        and the image did not move the text).
    prepended: image tokens this forward put before the caller's sequence (0: at placeholders, or no image).
    image_prefix: image positions before the caller's sequence, in the cache and in this forward: `prepended`, or
        those a cache from a prepending prefill holds.
    image_positions: `(batch_size, num_image_tokens)`, where the image tokens sit when at placeholders.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    prepended: int = 0
    image_prefix: int = 0
    image_positions: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        is_image: torch.Tensor | None,
        image_outputs: BaseModelOutputWithPooling | None,
        cache: Cache | None,
        image_token_id: int,
    ) -> _ConcatSequence:
        """The image tokens of `image_outputs` at the placeholders `is_image` marks, or prepended when there are
        none; without an image, a mask that covers the image positions a cache from a prepending prefill holds."""
        batch, seq_len = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=inputs_embeds.device)
        prepended, image_positions = 0, None
        if image_outputs is None:  # the cache may hold image positions the caller's 2-D mask lacks
            past = cache.get_seq_length() if cache is not None else 0
            if attention_mask.shape[1] < past + seq_len:
                pad = past + seq_len - attention_mask.shape[1]
                attention_mask = torch.cat([attention_mask.new_ones(batch, pad), attention_mask], dim=1)
                position_ids = None  # recounted below over the whole mask
        else:
            image_embeds = image_outputs.pooler_output  # (B, N, D)
            num_image = image_embeds.shape[1]
            found = int(is_image.sum()) if is_image is not None else 0
            if found == 0:
                prepended = num_image
                inputs_embeds = torch.cat([image_embeds, inputs_embeds], dim=1)  # (B, N + T, D)
                attention_mask = torch.cat([attention_mask.new_ones(batch, num_image), attention_mask], dim=1)
                position_ids = None  # recounted below over image + text
            elif found != batch * num_image:
                raise ValueError(
                    f"input_ids hold {found} image placeholder tokens (id {image_token_id}) but the images give "
                    f"{batch} x {num_image} = {batch * num_image} vision tokens; put {num_image} placeholders per "
                    "sequence (HiveProcessor does) or none to have them prepended."
                )
            else:
                inputs_embeds = inputs_embeds.masked_scatter(is_image[..., None], image_embeds)
                image_positions = is_image.nonzero()[:, 1].view(batch, num_image)  # (B, N)
        position_ids = _position_ids(attention_mask, position_ids, inputs_embeds.shape[1])
        return cls(inputs_embeds, attention_mask, position_ids, prepended, prepended or _image_of(cache).prepended,
                   image_positions)

    def caller_positions(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` `(B, L, V)` without the prepended image positions (when the LLM computed every position's; with
        `logits_to_keep` they are the caller's last positions already)."""
        if self.prepended and logits.shape[1] == self.inputs_embeds.shape[1]:
            return logits[:, self.prepended:]
        return logits

    def caller_hidden_states(
        self, hidden_states: tuple[torch.Tensor | None, ...] | None
    ) -> tuple[torch.Tensor | None, ...] | None:
        if self.prepended and hidden_states:
            return tuple(h[:, self.prepended:] if h is not None else None for h in hidden_states)
        return hidden_states

    def split_attentions(
        self, attentions: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """The LLM's weights per layer, `(B, H, prepended + T, S)`, as (the caller's queries over the caller's keys,
        the same queries over the image tokens)."""
        if self.image_prefix:  # (B, H, T, prefix + S): the image keys first, then the caller's
            return (tuple(a[:, :, self.prepended:, self.image_prefix:] for a in attentions),
                    tuple(a[:, :, self.prepended:, : self.image_prefix] for a in attentions))
        if self.image_positions is not None:
            index = self.image_positions[:, None, None, :]  # (B, 1, 1, N)
            return attentions, tuple(a.gather(-1, index.expand(*a.shape[:3], index.shape[-1])) for a in attentions)
        return attentions, None


def _merge_layer_outputs(
    llm_outputs: tuple[torch.Tensor, ...], fused_outputs: list[torch.Tensor | None], fused_layers: list[int]
) -> tuple[torch.Tensor | None, ...]:
    """One entry per LLM layer: the fused layers' (`fused_layers`, in order) from `fused_outputs`, the others' from
    `llm_outputs` in order (the LLM records only the attention modules it owns)."""
    llm, fused = iter(llm_outputs), iter(fused_outputs)
    total = len(llm_outputs) + len(fused_outputs)
    return tuple(next(fused) if i in fused_layers else next(llm) for i in range(total))


def _select_hidden_states(
    hidden_states: tuple[torch.Tensor, ...], selection: bool | int | list[int] | None
) -> tuple[torch.Tensor | None, ...] | None:
    """`hidden_states` as `output_hidden_states` asks: all (True), none (False/None), or only the listed indices (the
    others `None`, negative indices counted from the end), as transformers 5.x captures a list of layers."""
    if selection is None or selection is False:
        return None
    if selection is True:
        return tuple(hidden_states)
    wanted = {i % len(hidden_states) for i in ([selection] if isinstance(selection, int) else selection)
              if -len(hidden_states) <= i < len(hidden_states)}
    return tuple(h if i in wanted else None for i, h in enumerate(hidden_states))


def _position_ids(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """Positions that skip padding, so a padded sequence is computed as it would be alone."""
    if position_ids is not None or attention_mask is None or attention_mask.dim() != 2:
        return position_ids
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, past + T)
    return positions[:, -seq_len:]


# ---------------------------------------------------------------------------------------------------------------------
# Building the model: the LLM it fuses into, loaded and checked
# ---------------------------------------------------------------------------------------------------------------------
def _check_llama_shaped(layer: nn.Module) -> None:
    """Raise unless the LLM decoder `layer` has what joint and gated fusion use: `self_attn` with q/k/v/o
    projections, and `input_layernorm`."""
    missing = [n for n in ("self_attn", "input_layernorm") if not hasattr(layer, n)]
    if missing or not all(hasattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise ValueError(
            f"LLM decoder layer {type(layer).__name__} is not Llama-shaped (self_attn with q/k/v/o_proj and "
            "input_layernorm); HIVE's joint and gated fusion need a Llama-family decoder."
        )


def _load_llm_weights(language_model: nn.Module, llm: nn.Module, path: str) -> None:
    """Copy the pretrained causal LM `llm` (from `path`) into HIVE's language model, which may only lack HIVE's own
    fusion weights; raise naming the keys otherwise."""
    result = language_model.load_state_dict(llm.state_dict(), strict=False)
    unexpected = list(result.unexpected_keys)
    bad_missing = [k for k in result.missing_keys if not any(part in k for part in _FUSION_NAMES)]
    if unexpected or bad_missing:
        raise ValueError(
            f"The LLM checkpoint {path!r} does not fit the HIVE language model: missing {bad_missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )


def causal_lm_config_as(path: str, model_type: str, **kwargs: Any) -> tuple[PreTrainedConfig, str | None]:
    """The config of the LM at `path` read as transformers' `model_type` (see `from_vision_text_pretrained`'s
    `text_model_type`), with its `auto_map` and `architectures` dropped and MobileLLM's `share_embedding` as tied
    embeddings; and the model type the file names."""
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"`text_model_type` must be a model type this transformers release knows (e.g. 'llama'), got "
            f"{model_type!r}."
        )
    config_class = CONFIG_MAPPING[model_type]
    config_dict, _ = config_class.get_config_dict(path, **kwargs)
    config_dict = dict(config_dict)
    source_type = config_dict.pop("model_type", None)
    for key in ("auto_map", "architectures"):  # they point at the custom code we are not running
        config_dict.pop(key, None)
    if config_dict.pop("share_embedding", False):  # MobileLLM: the LM head is the input embedding
        config_dict["tie_word_embeddings"] = True
    return config_class(**config_dict), source_type


def _load_causal_lm_as(path: str, model_type: str, kwargs: dict[str, Any]) -> PreTrainedModel:
    """The causal LM at `path` loaded as transformers' `model_type` architecture (see `from_vision_text_pretrained`)."""
    config, source_type = causal_lm_config_as(path, model_type, **kwargs)
    llm, info = AutoModelForCausalLM.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        raise ValueError(
            f"{path!r} (model_type {source_type!r}) does not load as {model_type!r}: "
            + "; ".join(f"{k.replace('_', ' ')} {v[:5]}" for k, v in problems.items() if v)
        )
    logger.info(f"Loaded {path!r} (model_type {source_type!r}) as {type(llm).__name__}")
    return llm


__all__ = ["HivePreTrainedModel", "HiveVisionEncoderModel", "HiveForConditionalGeneration", "load_vision_tower"]
