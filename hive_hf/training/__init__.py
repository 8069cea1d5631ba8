"""Three-stage HIVE pre-training on top of `transformers.Trainer`."""

from .callback import HiveStageCallback
from .collator import HiveCaptionCollator
from .stages import STAGE_DEFAULTS, StageHyperparameters, apply_lora, last_complete_checkpoint, merge_lora
from .trainer import HiveTrainer, build_param_groups

__all__ = [
    "HiveCaptionCollator",
    "HiveStageCallback",
    "HiveTrainer",
    "STAGE_DEFAULTS",
    "StageHyperparameters",
    "apply_lora",
    "build_param_groups",
    "last_complete_checkpoint",
    "merge_lora",
]
