"""Staged training on top of `transformers.Trainer`: three-stage HIVE pre-training and the staged LLaVA fine-tuning
of an encoder.

- `HiveTrainer` (`trainer`): stage-aware optimizer groups, skipped-image counts; `HiveStageCallback` and
  `SkippedImagesCallback` (`callback`) apply and guard a stage and keep the counts across a resume;
- `HiveCaptionCollator` (`collator`): image-caption batches for pre-training;
- `StagedTrainingArguments`, `stage_training_args` (`arguments`): one value per stage, the same global batch on any
  number of processes;
- `StagedRun` (`staged_run`): the stages one after another in a run folder, resumable;
- `apply_lora`, `merge_lora` (`lora`): the LoRA stage.

What stages exist and what each trains is `hive_hf.runs.stages`; the recipes are `hive_hf.runs.recipes`.
"""

from .arguments import StagedTrainingArguments, split_global_batch, stage_training_args
from .callback import HiveStageCallback, SkippedImagesCallback
from .collator import HiveCaptionCollator
from .lora import apply_lora, merge_lora, merged_lora_state_dict
from .staged_run import StagedRun
from .trainer import HiveTrainer, build_param_groups

__all__ = [
    "HiveCaptionCollator",
    "HiveStageCallback",
    "HiveTrainer",
    "SkippedImagesCallback",
    "StagedRun",
    "StagedTrainingArguments",
    "apply_lora",
    "build_param_groups",
    "merge_lora",
    "merged_lora_state_dict",
    "split_global_batch",
    "stage_training_args",
]
