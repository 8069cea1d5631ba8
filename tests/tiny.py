"""Tiny configs and inputs shared by the tests: hidden 32, 4 layers, 16-px images, no downloads."""

from __future__ import annotations

import torch

from hive_hf import HiveConfig, HiveForConditionalGeneration

VISION = {
    "siglip": {
        "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "image_size": 16, "patch_size": 4,
    },
    "clip": {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "image_size": 16, "patch_size": 4, "projection_dim": 16,
    },
}
_TEXT_COMMON = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 99, "max_position_embeddings": 128, "pad_token_id": 0,
    "bos_token_id": 1, "eos_token_id": 2,
}
TEXT = {
    "llama": {"model_type": "llama", "tie_word_embeddings": True, **_TEXT_COMMON},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": False, **_TEXT_COMMON},
    "qwen3": {"model_type": "qwen3", "head_dim": 8, "tie_word_embeddings": True, **_TEXT_COMMON},
    "mistral": {"model_type": "mistral", "tie_word_embeddings": False, "sliding_window": None, **_TEXT_COMMON},
}
FUSIONS = ("joint", "gated", "concat")
# The authors' released options for joint fusion (examples/configs/authors_florence.json), on the tiny shapes.
AUTHORS = {"projector_type": "ln_mlp", "qk_norm": True, "image_rope": "2d", "image_kv": ["shared", "separate", "separate"],
           "llm_train_scope": "fused_attention"}


def tiny_config(vision: str = "siglip", text: str = "llama", fusion: str = "joint", **kwargs) -> HiveConfig:
    if fusion != "concat":
        kwargs.setdefault("vision_feature_layers", [2, 4])
        kwargs.setdefault("cross_attention_layers", [1, 3])
    return HiveConfig(vision_config=dict(VISION[vision]), text_config=dict(TEXT[text]), fusion=fusion, **kwargs)


def tiny_model(seed: int = 0, **kwargs) -> HiveForConditionalGeneration:
    torch.manual_seed(seed)
    return HiveForConditionalGeneration(tiny_config(**kwargs)).eval()


def tiny_inputs(config: HiveConfig, batch: int = 2, seq: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=gen),
        # ids from 3 up: no pad/bos/eos inside the prompt
        "input_ids": torch.randint(3, config.text_config.vocab_size, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }


def set_gates(model: torch.nn.Module, value: float) -> None:
    """Open the zero-initialised tanh gates so that gated cross-attention affects outputs and gradients."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("cross_attn.gate"):
                param.fill_(value)


def move_new_norms(model: torch.nn.Module, by: float = 0.5) -> None:
    """Move HIVE's own norms (QK-norms, the `ln_mlp` projector's LayerNorm) off their init values, so that a test can
    tell a loaded one from a re-initialised one."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "hive_" in name or name.startswith("projectors.") and ".norm." in name:
                param.add_(by)
