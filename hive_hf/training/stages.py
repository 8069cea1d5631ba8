"""Training stages: what each stage trains (`TrainingStages`), the pre-training recipes, and LoRA for stage 2.

Two recipes, by name (`STAGE_RECIPES`). `paper`, the paper's appendix table (peak learning rates from the authors'
scripts), is the default:

| | stage 1 | stage 2 | stage 3 |
|---|---|---|---|
| trains | connector | + LLM | + vision encoder |
| global batch | 256 | 256 | 1024 |
| epochs | 1 | 2 | 1 |
| grad clip | 1.0 | 10.0 | 10.0 |
| warmup steps | 70 | 140 | 18 |
| peak lr | 1e-3 | 1e-4 | 5e-6 |

`authors_florence`, the authors' released `scripts/train/HIVE_florence.sh` (GitHub eugenelet/HIVE @ a5160ce):

| | stage 1 | stage 2 | stage 3 |
|---|---|---|---|
| global batch | 256 | 1024 | 1024 |
| epochs | 0.2 | 1 | 1 |
| grad clip | 1.0 | 0.6 | 0.8 |
| warmup | 3% of the steps | 3% | 3% |
| peak lr | 1e-3 | 1e-4 | 5e-6 |
| schedule | cosine to 0.1 x peak | cosine to 0.1 x peak | cosine to 0 |
| weight decay | 1e-5 | 1e-5 | 1e-5 |
| Adam beta2 | 0.999 | 0.95 | 0.95 |
| seed | 40 | 41 | 42 |

All use decoupled AdamW with linear warmup. What each stage trains is the model's (`HiveConfig.llm_train_scope`,
`image_kv`); the authors' choices for those are in `examples/configs/authors_florence.json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging

from ..modeling_hive import STAGE_COMPONENTS, parameter_component
from .callback import StageSetter

logger = logging.get_logger(__name__)

# How a card or a message names each component; the projectors and the new fusion weights are the "connector".
COMPONENT_LABELS = {"projector": "connector", "fusion": "connector", "llm": "LLM", "vision": "vision encoder"}


@dataclass(frozen=True)
class TrainingStages:
    """The stages of a staged run and what each trains: the one place that says which stages exist.

    Args:
        name: what the stages are, for messages (e.g. "HIVE pre-training").
        components: `{stage: components it trains}`; the stages are its keys.
        component_of: which component a parameter belongs to, by name (`HiveTrainer(component_rule=)`).
        stage_setter: applies a stage to a model without a `set_training_stage` method (`HiveTrainer(stage_setter=)`);
            None for HIVE models, whose own method reads the same `STAGE_COMPONENTS`.
    """

    name: str
    components: Mapping[int, frozenset[str]]
    component_of: Callable[[str], str]
    stage_setter: StageSetter | None = None

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(sorted(self.components))

    def trains(self, stage: int) -> str:
        """What `stage` trains, in words: e.g. "connector + LLM"."""
        order = list(COMPONENT_LABELS)
        components = sorted(self.components[stage], key=order.index)
        return " + ".join(dict.fromkeys(COMPONENT_LABELS[c] for c in components))

    def _listing(self) -> str:
        parts = [f"{stage} ({self.trains(stage)})" for stage in self.stages]
        return ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]

    def check_stage(self, stage: int) -> None:
        if stage not in self.components:
            raise ValueError(f"{self.name} has stages {self._listing()}; got {stage!r}.")

    def check_stages(self, stages: Sequence[int]) -> None:
        """Stages to run, as `--stages` gives them: distinct, known, in order."""
        if not stages or sorted(set(stages)) != list(stages) or not set(stages) <= set(self.components):
            allowed = " ".join(map(str, self.stages))
            raise ValueError(f"--stages must be distinct stages from {allowed} in order, got {list(stages)}.")


HIVE_STAGES = TrainingStages("HIVE pre-training", STAGE_COMPONENTS, parameter_component)


@dataclass(frozen=True)
class StageHyperparameters:
    """One stage of a recipe. `warmup_steps` below 1 is a fraction of the stage's steps (transformers' convention).
    Fields left `None` take the run's own `TrainingArguments` value (`--lr_scheduler_type`, `--weight_decay`, ...)."""

    batch_size: int
    epochs: float
    max_grad_norm: float
    warmup_steps: float
    learning_rate: float
    lr_scheduler_type: str | None = None
    min_lr_rate: float | None = None  # `cosine_with_min_lr`: the floor as a fraction of the peak
    weight_decay: float | None = None
    adam_beta2: float | None = None
    seed: int | None = None

    def training_arguments(self) -> dict:
        """The `TrainingArguments` fields this stage sets beyond batch, epochs, clip, warmup and peak lr."""
        out = {k: getattr(self, k) for k in ("lr_scheduler_type", "weight_decay", "adam_beta2", "seed")
               if getattr(self, k) is not None}
        if self.min_lr_rate is not None:
            out["lr_scheduler_kwargs"] = {"min_lr_rate": self.min_lr_rate}
        return out


_AUTHORS = dict(warmup_steps=0.03, weight_decay=1e-5)
STAGE_RECIPES: dict[str, dict[int, StageHyperparameters]] = {
    "paper": {
        1: StageHyperparameters(batch_size=256, epochs=1, max_grad_norm=1.0, warmup_steps=70, learning_rate=1e-3),
        2: StageHyperparameters(batch_size=256, epochs=2, max_grad_norm=10.0, warmup_steps=140, learning_rate=1e-4),
        3: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=10.0, warmup_steps=18, learning_rate=5e-6),
    },
    "authors_florence": {
        1: StageHyperparameters(batch_size=256, epochs=0.2, max_grad_norm=1.0, learning_rate=1e-3, adam_beta2=0.999,
                                lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.1, seed=40, **_AUTHORS),
        2: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=0.6, learning_rate=1e-4, adam_beta2=0.95,
                                lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.1, seed=41, **_AUTHORS),
        3: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=0.8, learning_rate=5e-6, adam_beta2=0.95,
                                lr_scheduler_type="cosine", seed=42, **_AUTHORS),
    },
}
STAGE_DEFAULTS = STAGE_RECIPES["paper"]

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


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest `checkpoint-<step>` in `folder` that was written to the end, or None.

    A run killed while saving leaves a checkpoint folder without (or with a half-written) `trainer_state.json`,
    which the Trainer writes last; resuming from it would fail, so it is passed over.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()
    )
    for _step, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning(f"{path} is incomplete (the run stopped while saving it); looking for an older one")
            continue
        return str(path)
    return None
