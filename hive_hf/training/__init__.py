"""Three-stage HIVE pre-training (and staged LLaVA fine-tuning) on top of `transformers.Trainer`."""

from .callback import HiveStageCallback, SkippedImagesCallback, StageSetter
from .collator import HiveCaptionCollator
from .stages import (
    HIVE_STAGES,
    STAGE_DEFAULTS,
    STAGE_RECIPES,
    StageHyperparameters,
    TrainingStages,
    apply_lora,
    last_complete_checkpoint,
    merge_lora,
)
from .trainer import HiveTrainer, build_param_groups

__all__ = [
    "HIVE_STAGES",
    "HiveCaptionCollator",
    "HiveStageCallback",
    "HiveTrainer",
    "SkippedImagesCallback",
    "STAGE_DEFAULTS",
    "STAGE_RECIPES",
    "StageHyperparameters",
    "StageSetter",
    "TrainingStages",
    "apply_lora",
    "build_param_groups",
    "last_complete_checkpoint",
    "merge_lora",
]
