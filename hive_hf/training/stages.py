"""Training stages: what each stage trains (`TrainingStages`), the pre-training defaults, and LoRA for stage 2.

Defaults are the paper's (HIVE, arXiv 2604.00086, appendix table; peak learning rates from the authors' scripts):

| | stage 1 | stage 2 | stage 3 |
|---|---|---|---|
| trains | connector | + LLM | + vision encoder |
| global batch | 256 | 256 | 1024 |
| epochs | 1 | 2 | 1 |
| grad clip | 1.0 | 10.0 | 10.0 |
| warmup steps | 70 | 140 | 18 |
| peak lr | 1e-3 | 1e-4 | 5e-6 |

All use decoupled AdamW with linear warmup and cosine decay.
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
    batch_size: int
    epochs: float
    max_grad_norm: float
    warmup_steps: int
    learning_rate: float


STAGE_DEFAULTS: dict[int, StageHyperparameters] = {
    1: StageHyperparameters(batch_size=256, epochs=1, max_grad_norm=1.0, warmup_steps=70, learning_rate=1e-3),
    2: StageHyperparameters(batch_size=256, epochs=2, max_grad_norm=10.0, warmup_steps=140, learning_rate=1e-4),
    3: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=10.0, warmup_steps=18, learning_rate=5e-6),
}

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
