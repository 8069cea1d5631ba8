"""Configuration for HIVE: hierarchical pre-training of vision encoders with LLMs.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models"
(CVPR 2026 Workshops, arXiv 2604.00086).

This file is shipped to the Hub next to the weights, so it imports nothing but transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

FUSION_MODES = ("joint", "gated", "concat")
LAYER_SELECTIONS = ("uniform", "late", "uniform_penultimate")
# `mlp_residual`: the paper's text ("a 2-layer MLP with GELU and residual connections"); `ln_mlp`: the authors' released
# code (`--mm_proj_type ln_mlp`): LayerNorm, then the 2-layer MLP without residual, xavier-uniform init.
PROJECTOR_TYPES = ("mlp_residual", "mlp", "ln_mlp")
# Where the image sits among the text in joint fusion: `none` nowhere (every text token sees it, image keys unrotated);
# `1d` / `2d` at `image_position`, as the authors' `--mm_rope False` / `--mm_rope True`.
IMAGE_ROPE_MODES = ("none", "1d", "2d")
# Per training stage: image keys/values from the layer's own k/v projections (`shared`) or from separate copies.
IMAGE_KV_MODES = ("shared", "separate")
# What of the LLM trains in stages 2 and 3: everything, all but the input/output embeddings, or only the
# self-attention of the fused layers (the authors' `mm_layer`).
LLM_TRAIN_SCOPES = ("all", "all_but_embeddings", "fused_attention")
# Options that apply to fusion="joint" only, with their off values (`image_kv`: in every stage).
JOINT_ONLY_OPTIONS = {"qk_norm": False, "image_rope": "none", "image_kv": "shared"}

# Vision towers whose class token aggregates the image: the paper spreads their taps uniformly.
# Every other tower (SigLIP has no class token) is tapped in its later layers.
_AUTO_MAP = {
    "AutoConfig": "configuration_hive.HiveConfig",
    "AutoModel": "modeling_hive.HiveVisionEncoderModel",
    "AutoModelForImageTextToText": "modeling_hive.HiveForConditionalGeneration",
}

_CLASS_TOKEN_VISION_TYPES = frozenset({"clip_vision_model", "altclip_vision_model", "chinese_clip_vision_model"})


@dataclass(frozen=True)
class VisionTokenLayout:
    """What a vision tower outputs per image: `class_tokens` leading tokens (CLIP's class token), then a
    `grid[0] x grid[1]` patch grid in row-major order. The one place that answers "has this tower a class token,
    what is its patch grid"; `vision_token_layout(config)` builds it from a vision config."""

    class_tokens: int
    grid: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.class_tokens + self.num_patches


def vision_token_layout(vision_config: PreTrainedConfig) -> VisionTokenLayout:
    """The token layout of a ViT vision config (SigLIP, CLIP, ...; a two-tower config's vision half): one class
    token for the CLIP family, none for SigLIP, and an `image_size / patch_size` square grid."""
    vision_config = getattr(vision_config, "vision_config", vision_config)
    side = vision_config.image_size // vision_config.patch_size
    return VisionTokenLayout(int(vision_config.model_type in _CLASS_TOKEN_VISION_TYPES), (side, side))

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
    (CLIP); `late` spreads them over the deeper half only (SigLIP, which has no class token);
    `uniform_penultimate` spreads them evenly but ends at the penultimate block, which gives every list in the
    authors' released script for SigLIP-L (8 of 24: `[2, 5, ..., 23]`; 6: `[3, 7, ..., 23]`; 4: `[5, 11, 17, 23]`).
    """
    count = max(1, round(density * num_layers))
    if selection == "uniform_penultimate":
        return spread_layers(num_layers, count)
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
            `"joint"`: image keys/values are joined to the paired LLM layer's self-attention (the authors'
            realisation; with `projector_type="ln_mlp"`, `qk_norm=True`, `image_rope="2d"`,
            `image_kv=["shared", "separate", "separate"]` and `llm_train_scope="fused_attention"` it computes what
            their released code computes, see `examples/configs/authors_florence.json`).
            `"gated"`: a separate cross-attention block with a zero-initialised tanh gate before the paired layer.
            `"concat"`: the SA baseline; projected vision tokens are concatenated into the LLM input (LLaVA-style).
        vision_feature_layers (`list[int]`, *optional*):
            Tapped encoder layers as indices into the tower's `hidden_states`: 0 is the patch-embedding output,
            `i` the output of encoder block `i` (1-based), `num_hidden_layers` the last block (before any post
            norm). The authors' released SigLIP-L list is `[2, 5, 8, 11, 14, 17, 20, 23]` (their indices are
            `hidden_states` indices too): the last block is never tapped.
            `None` derives them from `connection_density` and `layer_selection`; in concat mode `None` means the
            last layer, and exactly one layer is allowed.
        cross_attention_layers (`list[int]`, *optional*):
            0-based LLM decoder layers fed by the tapped layers, paired in order (shallow to shallow). `None`
            spreads them evenly over the LLM depth, ending at the last layer.
        connection_density (`float`, *optional*, defaults to 0.25):
            Fraction of encoder layers tapped when `vision_feature_layers` is `None` (the paper's 25%).
        layer_selection (`str`, *optional*):
            `"uniform"`, `"late"` or `"uniform_penultimate"` (see `select_vision_layers`); `None` picks `"uniform"`
            for class-token towers (CLIP) and `"late"` otherwise.
        projector_hidden_size (`int`, *optional*):
            Width of the projector's hidden layer; `None` uses the LLM width.
        projector_type (`str`, *optional*, defaults to `"mlp_residual"`):
            The per-tap projector. `"mlp_residual"` (the paper's text): Linear -> act -> Linear plus the first
            layer's output (needs `projector_hidden_size` equal to the LLM width), normal(`initializer_range`) init.
            `"mlp"`: the same without the residual. `"ln_mlp"` (the authors' code, `--mm_proj_type ln_mlp`):
            LayerNorm(vision width, eps = the LLM's `rms_norm_eps`) -> Linear -> act -> Linear, no residual,
            xavier-uniform weights and zero biases. In joint mode the result then passes the paired layer's own
            `input_layernorm`, as in the authors' code.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's two layers.
        projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have biases.
        qk_norm (`bool`, *optional*, defaults to `False`):
            Joint mode only (the authors' `--mm_qknorm`): new RMSNorm(head_dim) q/k norms in each fused layer, eps =
            the LLM's `rms_norm_eps`, weight 1 at init, applied after the rotary embedding to the text queries and to
            all keys (text and image) whenever an image is present; trained in every stage.
        image_rope (`str`, *optional*, defaults to `"none"`):
            Joint mode only. `"none"`: image keys have no position and every text token sees the image. `"2d"` (the
            authors' `--mm_rope True`): the image takes the place `image_position` in the text; image keys get a
            2-D rotary embedding (row, column and a constant third component) around that place, text from
            `image_position` on is shifted by sqrt(N) (N image tokens) and sees the image, earlier text does not.
            Needs a square patch grid without a class token (SigLIP). `"1d"` (`--mm_rope False`): image keys at
            positions `image_position + i`, later text shifted by N.
        image_position (`int`, *optional*, defaults to 1):
            With `image_rope`: the text position the image takes (text positions count real tokens only, so padding
            does not move it). 1 is the authors' layout, `[BOS] <image> caption`; `HiveProcessor.for_model_config`
            sets it to the length of the tokenizer's prefix.
        image_kv (`str` or `list[str]`, *optional*):
            Joint mode: per training stage (1, 2, 3) where image keys/values come from: `"shared"` (the layer's own
            k/v projections, frozen with the LLM) or `"separate"` (`image_k_proj`/`image_v_proj`, copies of the
            layer's own made when the first separate stage starts). One value applies to all stages. `None` is
            `"shared"` throughout; the authors' recipe is `["shared", "separate", "separate"]` (`--mm_kvproj`).
        llm_train_scope (`str`, *optional*, defaults to `"all"`):
            What of the LLM trains in stages 2 and 3: `"all"`, `"all_but_embeddings"` (not `embed_tokens` /
            `lm_head`), or `"fused_attention"` (only the self-attention projections of the fused layers, the
            authors' `mm_layer`).
        image_token_id (`int`, *optional*):
            Concat mode: the placeholder token whose positions receive the vision tokens. `None` uses the text
            vocabulary size (an id no tokenizer emits unless a processor adds it).
        training_stage (`int`, *optional*):
            The pre-training stage (1, 2 or 3) these weights come from, recorded by the trainer.
        encoder_only (`bool`, *optional*, defaults to `False`):
            Whether a checkpoint holds the vision encoder alone (an encoder-only release, written by `hive-release`):
            `HiveForConditionalGeneration.from_pretrained` refuses it instead of building a random LLM around it.
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
        projector_type: str = "mlp_residual",
        projector_hidden_act: str = "gelu",
        projector_bias: bool = True,
        qk_norm: bool = False,
        image_rope: str = "none",
        image_position: int = 1,
        image_kv: str | list[str] | None = None,
        llm_train_scope: str = "all",
        image_token_id: int | None = None,
        training_stage: int | None = None,
        encoder_only: bool = False,
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
        # Configs written before `projector_type` / `image_kv` existed carry `projector_residual` and
        # `separate_image_kv` instead.
        residual = kwargs.pop("projector_residual", None)
        separate = kwargs.pop("separate_image_kv", None)
        self.projector_type = "mlp" if residual is False and projector_type == "mlp_residual" else projector_type
        self.projector_hidden_act = projector_hidden_act
        self.projector_bias = projector_bias
        self.qk_norm = qk_norm
        self.image_rope = image_rope
        self.image_position = image_position
        if image_kv is None:
            image_kv = "separate" if separate else "shared"
        if isinstance(image_kv, (list, tuple)) and len(image_kv) == 1:
            image_kv = image_kv[0]
        self.image_kv = [image_kv] * 3 if isinstance(image_kv, str) else image_kv
        self.llm_train_scope = llm_train_scope
        self.image_token_id = image_token_id
        self.training_stage = training_stage
        self.encoder_only = encoder_only
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
        _check_choice("fusion", self.fusion, FUSION_MODES)
        if not 0 < self.connection_density <= 1:
            raise ValueError(f"`connection_density` must be in (0, 1], got {self.connection_density!r}.")
        if self.layer_selection is not None:
            _check_choice("layer_selection", self.layer_selection, LAYER_SELECTIONS)
        if self.training_stage not in (None, 1, 2, 3):
            raise ValueError(f"`training_stage` must be 1, 2, 3 or None, got {self.training_stage!r}.")
        _check_choice("projector_type", self.projector_type, PROJECTOR_TYPES)
        text_width = self.text_config.hidden_size
        if self.projector_type == "mlp_residual" and self.projector_hidden_size not in (None, text_width):
            raise ValueError(
                f"`projector_hidden_size` must equal the LLM width ({text_width}) when "
                f"`projector_type='mlp_residual'`, got {self.projector_hidden_size}; set projector_type='mlp' or "
                "'ln_mlp', or projector_hidden_size=None."
            )
        self._validate_joint_options()
        _check_choice("llm_train_scope", self.llm_train_scope, LLM_TRAIN_SCOPES)
        if self.llm_train_scope == "fused_attention" and self.fusion == "concat":
            raise ValueError(
                "`llm_train_scope='fused_attention'` trains the self-attention of the fused LLM layers, which "
                "fusion='concat' does not have; use llm_train_scope='all' or 'all_but_embeddings'."
            )

    def _validate_joint_options(self) -> None:
        """The options of the authors' joint attention: QK-norm, image positions and per-stage image k/v."""
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"`qk_norm` must be True or False, got {self.qk_norm!r}.")
        _check_choice("image_rope", self.image_rope, IMAGE_ROPE_MODES)
        if not isinstance(self.image_kv, (list, tuple)) or len(self.image_kv) != 3 or \
                any(mode not in IMAGE_KV_MODES for mode in self.image_kv):
            raise ValueError(
                f"`image_kv` must be one of {IMAGE_KV_MODES} or a list of one per training stage (1, 2, 3), got "
                f"{self.image_kv!r}; e.g. ['shared', 'separate', 'separate'] (the authors' recipe)."
            )
        if not isinstance(self.image_position, int) or self.image_position < 0:
            raise ValueError(
                f"`image_position` must be an integer >= 0 (a text position), got {self.image_position!r}."
            )
        for field, off in JOINT_ONLY_OPTIONS.items():
            value = getattr(self, field)
            if self.fusion != "joint" and value != (off if field != "image_kv" else [off] * 3):
                raise ValueError(
                    f"`{field}={value!r}` applies to fusion='joint' only, got fusion={self.fusion!r}; set "
                    f"{field}={off!r}."
                )
        layout = vision_token_layout(self.vision_config)
        if self.image_rope == "2d" and layout.class_tokens:
            rows, cols = layout.grid
            raise ValueError(
                f"`image_rope='2d'` places image keys on their {rows}x{cols} patch grid, but this "
                f"{self.vision_config.model_type!r} tower gives {self.num_image_tokens} tokens (a class token); use "
                "image_rope='1d' or 'none'."
            )

    @property
    def uses_separate_image_kv(self) -> bool:
        """Whether any stage projects image keys/values with separate `image_k_proj` / `image_v_proj`."""
        return "separate" in self.image_kv

    def image_kv_for_stage(self, stage: int | None) -> str:
        """`"shared"` or `"separate"`: the image key/value source in `stage` (`None`, not yet trained: stage 1)."""
        return self.image_kv[(stage or 1) - 1]

    def _resolve_and_validate_layers(self) -> None:
        num_vision = self.vision_config.num_hidden_layers
        num_text = self.text_config.num_hidden_layers
        if self.vision_feature_layers is None:
            if self.fusion == "concat":
                self.vision_feature_layers = [num_vision]
            else:
                selection = self.layer_selection or (
                    "uniform" if vision_token_layout(self.vision_config).class_tokens else "late"
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
        return vision_token_layout(self.vision_config).num_tokens

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
            hint = (" A Llama-shaped LM with its own model type (MobileLLM's 'mobilellm') loads as the Llama it is "
                    "with `HiveForConditionalGeneration.from_vision_text_pretrained(..., text_model_type='llama')`."
                    if field == "text_config" else "")
            raise ValueError(
                f"`{field}` has model_type={model_type!r}, which this transformers release does not know; pass a "
                f"config of a model type from transformers' CONFIG_MAPPING (e.g. {default_type!r}).{hint}"
            )
        return CONFIG_MAPPING[model_type](**value)
    if isinstance(value, PreTrainedConfig):
        return getattr(value, "vision_config", value) if field == "vision_config" else value
    raise ValueError(f"`{field}` must be None, a dict or a PreTrainedConfig, got {type(value).__name__}.")


def _check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{field}` must be one of {allowed}, got {value!r}.")


def _check_layer_list(field: str, layers: list[int], low: int, high: int, meaning: str) -> None:
    if not layers:
        raise ValueError(f"`{field}` must list at least one layer, got {layers}.")
    bad = [i for i in layers if not low <= i <= high]
    if bad:
        raise ValueError(f"`{field}` must hold integers in [{low}, {high}] ({meaning}); got {layers}, out of range: {bad}.")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"`{field}` must be strictly increasing (shallow to shallow pairing); got {layers}.")


__all__ = ["HiveConfig", "VisionTokenLayout", "vision_token_layout"]
