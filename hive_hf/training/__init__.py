"""Three-stage HIVE pre-training (and staged LLaVA fine-tuning) on top of `transformers.Trainer`."""

from .callback import HiveStageCallback, StageSetter
from .collator import HiveCaptionCollator
from .stages import (
    STAGE_DEFAULTS,
    STAGE_RECIPES,
    StageHyperparameters,
    apply_lora,
    last_complete_checkpoint,
    merge_lora,
)
from .trainer import HiveTrainer, build_param_groups, model_component

__all__ = [
    "HiveCaptionCollator",
    "HiveStageCallback",
    "HiveTrainer",
    "STAGE_DEFAULTS",
    "STAGE_RECIPES",
    "StageHyperparameters",
    "StageSetter",
    "apply_lora",
    "build_param_groups",
    "last_complete_checkpoint",
    "merge_lora",
    "model_component",
]
