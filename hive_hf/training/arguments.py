"""Per-stage `TrainingArguments`: a staged run's arguments hold one value per stage for what changes between stages
(`StagedTrainingArguments`), and each stage trains with plain `TrainingArguments` whose global batch stays the same on
any number of processes (`stage_training_args`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainingArguments
from transformers.utils import logging

from ..runs.layout import stage_tag
from ..runs.pickles import check_hub_strategy
from ..runs.stages import TrainingStages

logger = logging.get_logger(__name__)

# A per-stage flag: (the attribute of a stage's default hyperparameters it defaults to, the `TrainingArguments` field
# it sets for that stage). The batch size becomes gradient accumulation; max steps default to -1 (run the epochs).
_PER_STAGE = {
    "stage_batch_sizes": ("batch_size", None),
    "stage_epochs": ("epochs", "num_train_epochs"),
    "stage_learning_rates": ("learning_rate", "learning_rate"),
    "stage_max_steps": (None, "max_steps"),
    "stage_max_grad_norms": ("max_grad_norm", "max_grad_norm"),
    "stage_warmup_steps": ("warmup_steps", "warmup_steps"),
}


def split_global_batch(global_batch: int, max_per_device: int, replicas: int, stage: int | None = None
                       ) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) that make exactly `global_batch` over `replicas` data-parallel
    devices: the largest per-device batch up to `max_per_device` that divides each device's share, accumulation
    making up the rest. The global batch is part of the recipe, so it never changes with the process count (the
    authors' scripts divide their accumulation by the GPU count for the same reason).

    Raises `ValueError` naming the numbers when `global_batch` is not a multiple of `replicas`.
    """
    if global_batch % replicas:
        where = f"stage {stage}: " if stage is not None else ""
        lower, upper = global_batch // replicas * replicas, (global_batch // replicas + 1) * replicas
        nearest = f"{lower} or {upper}" if lower else str(upper)
        raise ValueError(
            f"{where}the global batch {global_batch} (--stage_batch_sizes) cannot be split evenly over {replicas} "
            f"processes; give a multiple of {replicas} (e.g. {nearest}) or run on a process count that divides "
            f"{global_batch}."
        )
    share = global_batch // replicas
    per_device = max(d for d in range(1, min(max_per_device, share) + 1) if share % d == 0)
    return per_device, share // per_device


def data_parallel_replicas(args: TrainingArguments) -> int:
    """How many devices each take their own slice of a batch: the processes, times the GPUs of one process when a
    single process drives several (`torch.nn.DataParallel`, `TrainingArguments.n_gpu`)."""
    return args.world_size * max(1, args.n_gpu)


def stage_training_args(
    args: TrainingArguments, stage: int, output_dir: str | Path, global_batch_size: int, **overrides: Any
) -> TrainingArguments:
    """Plain `TrainingArguments` for one stage: `args` with the stage's folder, run name, Hub repo and
    hyperparameters (`overrides`), and the per-device batch and gradient accumulation that make exactly
    `global_batch_size` on this many processes (`split_global_batch`; `per_device_train_batch_size` is the most one
    device takes).

    `push_to_hub` is off in them: the Trainer's own pushes upload `training_args.bin`, a pickle of the arguments, so a
    staged run pushes with `hive_hf.release.HubPushCallback`, which reads the `hub_*` settings from them.

    DDP runs without `find_unused_parameters` unless `--ddp_find_unused_parameters` says otherwise: every stage freezes
    what its forward does not reach, so the per-step search of the autograd graph would find nothing
    (`HiveStageCallback` raises if a trainable parameter ever gets no gradient)."""
    replicas = data_parallel_replicas(args)
    per_device, accumulation = split_global_batch(
        global_batch_size, args.per_device_train_batch_size, replicas, stage=stage
    )
    layout = (f"stage {stage}: global batch {global_batch_size} = {per_device} per device x {accumulation} "
              f"accumulation steps x {replicas} processes")
    share = global_batch_size // replicas
    if per_device < min(args.per_device_train_batch_size, share):
        logger.warning(f"{layout}: no per-device batch from {per_device + 1} to {args.per_device_train_batch_size} "
                       f"divides {share}, each process's share, so the devices run below "
                       "--per_device_train_batch_size; a global batch whose share has such a divisor runs faster.")
    else:
        logger.info(layout)
    plain = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    plain.update(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        run_name=f"{args.run_name or Path(args.output_dir).name}-{stage_tag(stage)}",
        hub_model_id=f"{args.hub_model_id}-{stage_tag(stage)}" if args.hub_model_id else None,
        push_to_hub=False,
        **overrides,
    )
    if plain["ddp_find_unused_parameters"] is None:
        plain["ddp_find_unused_parameters"] = False
    return TrainingArguments(**plain)


@dataclass
class StagedTrainingArguments(TrainingArguments):
    """`TrainingArguments` for a staged run: the stages to run and one value per stage for the hyperparameters that
    change between stages; `for_stage(k)` gives the plain `TrainingArguments` of stage k.

    A subclass sets `STAGES` (what each stage trains) and `STAGE_DEFAULTS` (`{stage: hyperparameters}` with
    `batch_size`, `epochs`, `learning_rate` and, for the per-stage flags it adds, `max_grad_norm` / `warmup_steps`);
    a per-stage flag left unset takes those defaults.
    """

    STAGES: ClassVar[TrainingStages]
    STAGE_DEFAULTS: ClassVar[Mapping[int, Any]]

    stages: list[int] | None = field(default=None, metadata={"help": "Stages to run, in order (default: all)."})
    stage_batch_sizes: list[int] | None = field(
        default=None,
        metadata={"help": "Global batch per stage, the same on any number of processes: each device takes the "
                          "largest batch up to --per_device_train_batch_size that divides its share, gradient "
                          "accumulation makes up the rest (default: the recipe's)."},
    )
    stage_epochs: list[float] | None = field(default=None, metadata={"help": "Epochs per stage (default: the recipe's)."})
    stage_learning_rates: list[float] | None = field(
        default=None, metadata={"help": "Peak learning rate per stage (default: the recipe's)."}
    )
    stage_max_steps: list[int] | None = field(
        default=None, metadata={"help": "Steps per stage; -1 (the default) runs the epochs instead."}
    )
    lora_r: int = field(default=0, metadata={"help": "Stage 2: LoRA rank for the LLM (0 trains it in full)."})
    lora_alpha: int = field(default=32, metadata={"help": "Stage 2 LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Stage 2 LoRA dropout."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Both recipes decay with a cosine."})
    # transformers' 500 steps never log in a short stage, whose loss would then read "x -> x" (the final average)
    logging_steps: float = field(
        default=0.02,
        metadata={"help": "Log the loss every this many steps, or every this fraction of a stage's steps when below "
                          "1 (default: 0.02, 50 times a stage)."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator needs the raw columns."})

    def __post_init__(self):
        super().__post_init__()
        all_stages = self.STAGES.stages
        self.stages = list(all_stages) if self.stages is None else list(self.stages)
        self.STAGES.check_stages(self.stages, name="--stages")
        for name in self._per_stage_flags():
            attr = _PER_STAGE[name][0]
            if getattr(self, name) is None:
                setattr(self, name, [getattr(self.STAGE_DEFAULTS[s], attr) if attr else -1 for s in all_stages])
            if len(getattr(self, name)) != len(all_stages):
                listing = " ".join(map(str, all_stages))
                raise ValueError(f"--{name} takes one value per stage ({listing}), got {getattr(self, name)}.")
        if any(b < 1 for b in self.stage_batch_sizes):
            raise ValueError(f"--stage_batch_sizes must be positive, got {self.stage_batch_sizes}.")
        for stage in self.stages:  # fail before training starts, not when a later stage begins
            split_global_batch(self.stage_batch_sizes[all_stages.index(stage)], self.per_device_train_batch_size,
                               data_parallel_replicas(self), stage=stage)
        if self.save_on_each_node:
            raise ValueError("--save_on_each_node is for nodes that do not share storage; a staged run needs its "
                             "--output_dir on storage that every node sees (each stage starts from the previous "
                             "stage's folder), so leave it False.")
        lora_stage = self.STAGES.lora_stage
        if self.lora_r and lora_stage not in self.stages:
            raise ValueError(f"--lora_r {self.lora_r} applies to stage {lora_stage}, which --stages {self.stages} does "
                             "not run.")
        if self.push_to_hub:
            check_hub_strategy(self.hub_strategy)

    def stage_settings_record(self) -> dict[str, Any]:
        """This run's stages, per-stage values and LoRA settings (and a subclass's recipe), for its records."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith(("stage", "lora_", "recipe"))}

    def _per_stage_flags(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name in _PER_STAGE]

    def for_stage(self, stage: int, output_dir: str | Path) -> TrainingArguments:
        """Plain `TrainingArguments` for one stage: its hyperparameters, its folder, its run name."""
        i = self.STAGES.stages.index(stage)
        overrides = {_PER_STAGE[name][1]: getattr(self, name)[i] for name in self._per_stage_flags()
                     if _PER_STAGE[name][1] is not None}
        return stage_training_args(self, stage, output_dir, self.stage_batch_sizes[i],
                                   **self.stage_settings(stage), **overrides)

    def stage_settings(self, stage: int) -> dict[str, Any]:
        """`TrainingArguments` fields a stage sets beyond the per-stage flags (a recipe's schedule, decay, ...)."""
        return {}
