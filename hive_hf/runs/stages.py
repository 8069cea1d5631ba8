"""The stage vocabulary of every staged run: which stages exist, what each trains, and the one rule that freezes a
model to a stage.

- HIVE pre-training (`HIVE_STAGES`): 1 the connector, 2 + the LLM, 3 + the vision encoder. A HIVE model applies a stage
  itself (`HiveForConditionalGeneration.set_training_stage`, part of the model shipped to the Hub, which also knows
  its image k/v copies and `llm_train_scope`).
- LLaVA fine-tuning of a pre-trained encoder (`VLM_STAGES`): 1 the projector, 2 + the LLM; the encoder never. A stock
  LLaVA model has no such method: `set_vlm_training_stage` applies the stage with `freeze`.

Stage 2 of both may adapt the LLM with LoRA instead of training it in full (`TrainingStages.lora_stage`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..modeling_hive import STAGE_COMPONENTS, parameter_component

# `stage_setter(model, stage)` makes exactly what `stage` trains trainable and returns
# `{component: {"trainable": n, "total": n}}`, like `HiveForConditionalGeneration.set_training_stage`.
StageSetter = Callable[[torch.nn.Module, int], dict[str, dict[str, int]]]

# How a card or a message names each component; the projectors and the new fusion weights are the "connector".
COMPONENT_LABELS = {"projector": "connector", "fusion": "connector", "llm": "LLM", "vision": "vision encoder"}


def freeze(
    model: torch.nn.Module,
    components: frozenset[str],
    component_of: Callable[[str], str],
    keep: Callable[[str, str], bool] | None = None,
) -> dict[str, dict[str, int]]:
    """Make a parameter trainable exactly when its component (`component_of(name)`) is in `components` and
    `keep(name, component)` (default: always) agrees; freeze every other. Returns `{component: {"trainable": n,
    "total": n}}` over every component the model has."""
    counts: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        component = component_of(name)
        trainable = component in components and (keep is None or keep(name, component))
        param.requires_grad_(trainable)
        entry = counts.setdefault(component, {"trainable": 0, "total": 0})
        entry["total"] += param.numel()
        entry["trainable"] += param.numel() if trainable else 0
    return counts


@dataclass(frozen=True)
class TrainingStages:
    """The stages of a staged run and what each trains: the one place that says which stages exist.

    Args:
        name: what the stages are, for messages (e.g. "HIVE pre-training").
        components: `{stage: components it trains}`; the stages are its keys.
        component_of: which component a parameter belongs to, by name (`HiveTrainer(component_rule=)`).
        stage_setter: applies a stage to a model without a `set_training_stage` method (`HiveTrainer(stage_setter=)`);
            None for HIVE models, whose own method reads the same `STAGE_COMPONENTS`.
        lora_stage: the stage that may adapt the LLM with LoRA (`--lora_r`) instead of training it in full.
    """

    name: str
    components: Mapping[int, frozenset[str]]
    component_of: Callable[[str], str]
    stage_setter: StageSetter | None = None
    lora_stage: int | None = 2

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(sorted(self.components))

    @property
    def last(self) -> int:
        return self.stages[-1]

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

    def check_stages(self, stages: Sequence[int], name: str = "`stages`") -> None:
        """Stages to run: distinct, known, in order; `name` is what the message calls them (e.g. a flag)."""
        if not stages or sorted(set(stages)) != list(stages) or not set(stages) <= set(self.components):
            allowed = " ".join(map(str, self.stages))
            raise ValueError(f"{name} must be distinct stages from {allowed} in order, got {list(stages)}.")


HIVE_STAGES = TrainingStages("HIVE pre-training", STAGE_COMPONENTS, parameter_component)

# What each VLM stage trains (LLaVA; the paper's Sec. 4): the encoder never.
VLM_STAGE_COMPONENTS: dict[int, frozenset[str]] = {1: frozenset({"projector"}), 2: frozenset({"projector", "llm"})}
_LLAVA_VISION = re.compile(r"(^|\.)vision_tower\.")
_LLAVA_PROJECTOR = re.compile(r"(^|\.)multi_modal_projector\.")


def llava_parameter_component(name: str) -> str:
    """Which part of a LLaVA model a parameter belongs to: vision_tower -> vision, multi_modal_projector ->
    projector, the rest (language_model, lm_head) -> llm. The component rule of `VLM_STAGES`."""
    if _LLAVA_VISION.search(name):
        return "vision"
    if _LLAVA_PROJECTOR.search(name):
        return "projector"
    return "llm"


def set_vlm_training_stage(model: torch.nn.Module, stage: int) -> dict[str, dict[str, int]]:
    """Make exactly what VLM `stage` trains trainable: 1 the projector, 2 + the LLM (only its LoRA adapters when it
    carries some); the vision encoder never. The stage setter of `VLM_STAGES`. Returns `{component: {"trainable": n,
    "total": n}}` for vision, projector and llm."""
    VLM_STAGES.check_stage(stage)
    has_lora = any("lora_" in name for name, _ in model.named_parameters())
    return freeze(model, VLM_STAGE_COMPONENTS[stage], llava_parameter_component,
                  keep=lambda name, component: component != "llm" or not has_lora or "lora_" in name)


# LLaVA's two stages, the encoder frozen in both (the paper's Sec. 4).
VLM_STAGES = TrainingStages("VLM fine-tuning (the encoder stays frozen)", VLM_STAGE_COMPONENTS,
                            llava_parameter_component, stage_setter=set_vlm_training_stage)
