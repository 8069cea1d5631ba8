"""LoRA for the stage that may adapt the LLM lightly (`TrainingStages.lora_stage`): adapters on, folded back, and a
mid-stage checkpoint's weights as the plain model's."""

from __future__ import annotations

import torch

# The LLM's own linear layers; the HIVE cross-attention (`cross_attn.*`) and image k/v projections are connector
# weights that train in full, so they are not adapted.
LORA_TARGETS = r".*\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def apply_lora(model: torch.nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> None:
    """Put LoRA adapters on the LLM's linear layers (peft), for a stage-2 that adapts the LLM lightly."""
    from peft import LoraConfig, LoraModel

    if r <= 0:
        raise ValueError(f"`lora_r` must be positive to use LoRA, got {r}.")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    model.language_model = LoraModel(model.language_model, config, "default")


def merge_lora(model: torch.nn.Module) -> None:
    """Fold LoRA adapters into the LLM's weights, leaving a plain HIVE model for saving and later stages."""
    from peft import LoraModel

    if isinstance(model.language_model, LoraModel):
        model.language_model = model.language_model.merge_and_unload()


def merged_lora_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state_dict`, saved from `model` while it carried LoRA adapters (a mid-stage checkpoint), as the plain model's
    state dict: each adapted weight is `base + scaling * B @ A`, as `merge_lora` makes it, under its own name again.

    It works on the saved tensors, so `model`'s weights are left exactly as they are (merging and unmerging in place
    would not), and on gathered checkpoints of sharded runs; `model` gives the adapter names and scalings.
    """
    from peft import LoraModel
    from peft.tuners.lora import LoraLayer

    merged = dict(state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = merged.pop(f"{name}.base_layer.weight")
        for adapter in module.active_adapters:
            lora_a, lora_b = merged.pop(f"{name}.lora_A.{adapter}.weight"), merged.pop(f"{name}.lora_B.{adapter}.weight")
            weight = weight + (lora_b.float() @ lora_a.float() * module.scaling[adapter]).to(weight.dtype)
        merged[f"{name}.weight"] = weight
        if f"{name}.base_layer.bias" in merged:
            merged[f"{name}.bias"] = merged.pop(f"{name}.base_layer.bias")
    wrappers = [f"{name}.model." if name else "model." for name, module in model.named_modules()
                if isinstance(module, LoraModel)]
    for prefix in wrappers:  # LoraModel keeps the wrapped model as `.model`
        merged = {(key.replace(prefix, prefix.removesuffix("model."), 1) if key.startswith(prefix) else key): value
                  for key, value in merged.items()}
    return merged
