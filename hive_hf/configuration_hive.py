"""Configuration for HIVE: hierarchical pre-training of vision encoders with LLMs.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models"
(CVPR 2026 Workshops, arXiv 2604.00086).

This file is shipped to the Hub next to the weights, so it imports nothing but transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

FUSION_MODES = ("joint", "gated", "concat")
LAYER_SELECTIONS = ("uniform", "late")

# Vision towers whose class token aggregates the image: the paper spreads their taps uniformly.
# Every other tower (SigLIP has no class token) is tapped in its later layers.
_AUTO_MAP = {
    "AutoConfig": "configuration_hive.HiveConfig",
    "AutoModel": "modeling_hive.HiveVisionEncoderModel",
    "AutoModelForImageTextToText": "modeling_hive.HiveForConditionalGeneration",
}

_CLASS_TOKEN_VISION_TYPES = frozenset({"clip_vision_model", "altclip_vision_model", "chinese_clip_vision_model"})

# SigLIP-L/16-384 as in the paper.
_DEFAULT_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 16,
}
# A MobileLLM-350M-shaped Llama decoder (MobileLLM is a Llama-architecture model).
_DEFAULT_TEXT = {
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def select_vision_layers(num_layers: int, density: float, selection: str) -> list[int]:
    """Tapped encoder layers by the paper's rule, as `hidden_states` indices (1 = first block's output).

    `uniform` spreads `round(density * num_layers)` taps evenly over the whole depth, ending at the last layer
    (CLIP); `late` spreads them over the deeper half only (SigLIP, which has no class token).
    """
    count = max(1, round(density * num_layers))
    span = num_layers if selection == "uniform" else max(count, -(-num_layers // 2))
    start = num_layers - span
    return [start + round((i + 1) * span / count) for i in range(count)]


def spread_layers(num_layers: int, count: int) -> list[int]:
    """`count` 0-based layer indices spread evenly over `num_layers`, ending at the last layer."""
    return [round((i + 1) * num_layers / count) - 1 for i in range(count)]


class HiveConfig(PreTrainedConfig):
    r"""
    Configuration of a HIVE model: a vision tower whose intermediate layers feed a decoder-only LLM.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Any transformers vision tower with per-layer hidden states (SigLIP, CLIP, ...). Defaults to a
            SigLIP-L/16-384-shaped tower. A full two-tower config (e.g. `SiglipConfig`) is reduced to its vision part.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            A Llama-family causal LM (Llama, Qwen2, Qwen3, Mistral, SmolLM, MobileLLM). Defaults to a
            MobileLLM-350M-shaped Llama.
        fusion (`str`, *optional*, defaults to `"joint"`):
            `"joint"`: image keys/values are joined to the paired LLM layer's self-attention (the authors' code).
            `"gated"`: a separate cross-attention block with a zero-initialised tanh gate before the paired layer.
            `"concat"`: the SA baseline; projected vision tokens are concatenated into the LLM input (LLaVA-style).
        vision_feature_layers (`list[int]`, *optional*):
            Tapped encoder layers as indices into the tower's `hidden_states`: 0 is the patch-embedding output,
            `i` the output of encoder block `i` (1-based), `num_hidden_layers` the last block (before any post
            norm). The authors' SigLIP-L list, 0-based blocks 2,5,...,23, is `[3, 6, 9, 12, 15, 18, 21, 24]`.
            `None` derives them from `connection_density` and `layer_selection`; in concat mode `None` means the
            last layer, and exactly one layer is allowed.
        cross_attention_layers (`list[int]`, *optional*):
            0-based LLM decoder layers fed by the tapped layers, paired in order (shallow to shallow). `None`
            spreads them evenly over the LLM depth, ending at the last layer.
        connection_density (`float`, *optional*, defaults to 0.25):
            Fraction of encoder layers tapped when `vision_feature_layers` is `None` (the paper's 25%).
        layer_selection (`str`, *optional*):
            `"uniform"` or `"late"`; `None` picks `"uniform"` for class-token towers (CLIP) and `"late"` otherwise.
        projector_hidden_size (`int`, *optional*):
            Width of the projector's hidden layer; `None` uses the LLM width.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's two layers.
        projector_residual (`bool`, *optional*, defaults to `True`):
            Add the first layer's output to the second's (needs `projector_hidden_size` equal to the LLM width).
        projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have biases.
        separate_image_kv (`bool`, *optional*, defaults to `False`):
            Joint mode only: project image keys/values with separate `image_k_proj`/`image_v_proj` copies of the
            layer's own projections instead of sharing them.
        image_token_id (`int`, *optional*):
            Concat mode: the placeholder token whose positions receive the vision tokens. `None` uses the text
            vocabulary size (an id no tokenizer emits unless a processor adds it).
        training_stage (`int`, *optional*):
            The pre-training stage (1, 2 or 3) these weights come from, recorded by the trainer.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal init of new connector weights.

    Example:

    ```python
    >>> from hive_hf import HiveConfig, HiveForConditionalGeneration
    >>> config = HiveConfig()  # SigLIP-L/16-384 + MobileLLM-350M shapes, 6 late layers -> 6 LLM layers
    >>> config.vision_feature_layers, config.cross_attention_layers
    ([14, 16, 18, 20, 22, 24], [4, 10, 15, 20, 26, 31])
    ```"""

    model_type = "hive"
    # A plain dict of sub-config classes and a classic `__init__`: the form every transformers 5.x release accepts for
    # remote code (the dataclass-style `sub_configs_defaults` exists only from 5.20 on).
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PreTrainedConfig | None = None,
        text_config: dict | PreTrainedConfig | None = None,
        fusion: str = "joint",
        vision_feature_layers: list[int] | None = None,
        cross_attention_layers: list[int] | None = None,
        connection_density: float = 0.25,
        layer_selection: str | None = None,
        projector_hidden_size: int | None = None,
        projector_hidden_act: str = "gelu",
        projector_residual: bool = True,
        projector_bias: bool = True,
        separate_image_kv: bool = False,
        image_token_id: int | None = None,
        training_stage: int | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        self.vision_config = _sub_config(vision_config, "siglip_vision_model", _DEFAULT_VISION, "vision_config")
        self.text_config = _sub_config(text_config, "llama", _DEFAULT_TEXT, "text_config")
        self.fusion = fusion
        self.vision_feature_layers = vision_feature_layers
        self.cross_attention_layers = cross_attention_layers
        self.connection_density = connection_density
        self.layer_selection = layer_selection
        self.projector_hidden_size = projector_hidden_size
        self.projector_hidden_act = projector_hidden_act
        self.projector_residual = projector_residual
        self.projector_bias = projector_bias
        self.separate_image_kv = separate_image_kv
        self.image_token_id = image_token_id
        self.training_stage = training_stage
        self.initializer_range = initializer_range
        # The LLM's own tying decides ours (MobileLLM ties its embeddings).
        kwargs["tie_word_embeddings"] = bool(getattr(self.text_config, "tie_word_embeddings", False))
        # Every saved HIVE folder maps all Auto classes, so that `AutoModel` (the encoder) and
        # `AutoModelForImageTextToText` (the full model) both load it with `trust_remote_code=True`.
        kwargs["auto_map"] = {**_AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)
        self._validate_backbones()
        self._resolve_and_validate_layers()

    # ----------------------------------------------------------------------------------------------------------------
    def _validate_backbones(self) -> None:
        text_type = self.text_config.model_type
        # Encoders with an LM head (BERT, RoBERTa) carry `is_decoder=False`; decoder-only LLMs have no such flag.
        not_decoder = self.text_config.is_encoder_decoder or getattr(self.text_config, "is_decoder", None) is False
        if text_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not_decoder:
            raise ValueError(
                f"`text_config` must describe a decoder-only causal LM of the Llama family (llama, qwen2, qwen3, "
                f"mistral, ...); got model_type={text_type!r}, which is not a decoder with a causal-LM head."
            )
        for field in ("num_hidden_layers", "hidden_size"):
            if not isinstance(getattr(self.vision_config, field, None), int):
                raise ValueError(
                    f"`vision_config` ({self.vision_config.model_type!r}) has no integer `{field}`; HIVE needs a "
                    "ViT-style tower with per-layer hidden states (e.g. siglip_vision_model, clip_vision_model)."
                )
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"`fusion` must be one of {FUSION_MODES}, got {self.fusion!r}.")
        if not 0 < self.connection_density <= 1:
            raise ValueError(f"`connection_density` must be in (0, 1], got {self.connection_density!r}.")
        if self.layer_selection is not None and self.layer_selection not in LAYER_SELECTIONS:
            raise ValueError(
                f"`layer_selection` must be one of {LAYER_SELECTIONS} or None, got {self.layer_selection!r}."
            )
        if self.training_stage not in (None, 1, 2, 3):
            raise ValueError(f"`training_stage` must be 1, 2, 3 or None, got {self.training_stage!r}.")
        if self.separate_image_kv and self.fusion != "joint":
            raise ValueError(
                f"`separate_image_kv=True` applies to fusion='joint' only, got fusion={self.fusion!r}; "
                "set separate_image_kv=False."
            )
        text_width = self.text_config.hidden_size
        if self.projector_residual and self.projector_hidden_size not in (None, text_width):
            raise ValueError(
                f"`projector_hidden_size` must equal the LLM width ({text_width}) when `projector_residual=True`, "
                f"got {self.projector_hidden_size}; set projector_residual=False or projector_hidden_size=None."
            )

    def _resolve_and_validate_layers(self) -> None:
        num_vision = self.vision_config.num_hidden_layers
        num_text = self.text_config.num_hidden_layers
        if self.vision_feature_layers is None:
            if self.fusion == "concat":
                self.vision_feature_layers = [num_vision]
            else:
                selection = self.layer_selection or (
                    "uniform" if self.vision_config.model_type in _CLASS_TOKEN_VISION_TYPES else "late"
                )
                self.vision_feature_layers = select_vision_layers(num_vision, self.connection_density, selection)
        self.vision_feature_layers = [int(i) for i in self.vision_feature_layers]
        _check_layer_list("vision_feature_layers", self.vision_feature_layers, 0, num_vision,
                          "hidden_states indices: 0 = patch embeddings, i = output of encoder block i")

        if self.fusion == "concat":
            if len(self.vision_feature_layers) != 1:
                raise ValueError(
                    "fusion='concat' feeds one encoder layer into the LLM input; `vision_feature_layers` must hold "
                    f"exactly one index, got {self.vision_feature_layers}."
                )
            if self.cross_attention_layers:
                raise ValueError(
                    "fusion='concat' has no cross-attention; `cross_attention_layers` must be None or empty, got "
                    f"{self.cross_attention_layers}."
                )
            self.cross_attention_layers = []
            return

        if self.cross_attention_layers is None:
            count = len(self.vision_feature_layers)
            if count > num_text:
                raise ValueError(
                    f"{count} tapped encoder layers cannot each feed a distinct layer of a {num_text}-layer LLM; "
                    "lower `connection_density` or pass `vision_feature_layers` and `cross_attention_layers`."
                )
            self.cross_attention_layers = spread_layers(num_text, count)
        self.cross_attention_layers = [int(i) for i in self.cross_attention_layers]
        _check_layer_list("cross_attention_layers", self.cross_attention_layers, 0, num_text - 1,
                          "0-based LLM decoder layers")
        if len(self.cross_attention_layers) != len(self.vision_feature_layers):
            raise ValueError(
                "`vision_feature_layers` and `cross_attention_layers` are paired in order and must have the same "
                f"length; got {len(self.vision_feature_layers)} ({self.vision_feature_layers}) and "
                f"{len(self.cross_attention_layers)} ({self.cross_attention_layers})."
            )

    @property
    def num_image_tokens(self) -> int:
        """Patch tokens per image that reach the LLM (class token included for CLIP-like towers)."""
        grid = self.vision_config.image_size // self.vision_config.patch_size
        return grid * grid + int(self.vision_config.model_type in _CLASS_TOKEN_VISION_TYPES)

    @property
    def resolved_image_token_id(self) -> int:
        return self.image_token_id if self.image_token_id is not None else self.text_config.vocab_size


def _sub_config(value: Any, default_type: str, defaults: dict, field: str) -> PreTrainedConfig:
    """A sub-config from `None` (our default shapes), a dict (by its `model_type`) or a config object. A full
    two-tower config (`SiglipConfig`, `CLIPConfig`, or its dict) contributes its vision half."""
    if value is None:
        return CONFIG_MAPPING[default_type](**defaults)
    if isinstance(value, dict):
        value = dict(value.get("vision_config", value)) if field == "vision_config" else dict(value)
        model_type = value.pop("model_type", default_type)
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"`{field}` has model_type={model_type!r}, which this transformers release does not know; pass a "
                f"config of a model type from transformers' CONFIG_MAPPING (e.g. {default_type!r})."
            )
        return CONFIG_MAPPING[model_type](**value)
    if isinstance(value, PreTrainedConfig):
        return getattr(value, "vision_config", value) if field == "vision_config" else value
    raise ValueError(f"`{field}` must be None, a dict or a PreTrainedConfig, got {type(value).__name__}.")


def _check_layer_list(field: str, layers: list[int], low: int, high: int, meaning: str) -> None:
    if not layers:
        raise ValueError(f"`{field}` must list at least one layer, got {layers}.")
    bad = [i for i in layers if not low <= i <= high]
    if bad:
        raise ValueError(f"`{field}` must hold integers in [{low}, {high}] ({meaning}); got {layers}, out of range: {bad}.")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"`{field}` must be strictly increasing (shallow to shallow pairing); got {layers}.")


__all__ = ["HiveConfig"]
