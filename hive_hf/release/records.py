"""What a pre-training run did, stage by stage, for the model cards: from its folder or from a live Trainer."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runs.layout import RunLayout, read_stage_marker, read_training_args
from ..runs.pickles import load_training_args
from ..runs.stages import HIVE_STAGES


@dataclass
class StageRecord:
    """What one pre-training stage did, for the model card; from a run folder or from a live `Trainer`."""

    stage: int | None
    steps: int | None = None
    epochs: float | None = None
    images_seen: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    train_loss: float | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def global_batch(self) -> int | None:
        return round(self.images_seen / self.steps) if self.images_seen and self.steps else None

    @property
    def data_size(self) -> int | None:
        """Image-caption pairs per epoch (the dataset size, rounded up to whole batches)."""
        return round(self.images_seen / self.epochs) if self.images_seen and self.epochs else None

    @property
    def trains(self) -> str:
        return HIVE_STAGES.trains(self.stage) if self.stage in HIVE_STAGES.components else "–"


def training_hyperparameters(args: Any) -> dict[str, Any]:
    """The optimization settings a card reports, from `TrainingArguments` or their `to_dict()` (what
    `training_args.json` holds): an allowlist, never tokens or paths."""
    def get(name: str) -> Any:
        value = args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)
        return getattr(value, "value", value)  # enums as their values, as in to_dict()

    names = ("learning_rate", "warmup_steps", "max_grad_norm", "per_device_train_batch_size",
             "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "optim", "seed")
    values = {name: get(name) for name in names}
    values["precision"] = "bf16" if get("bf16") else "fp16" if get("fp16") else "fp32"
    return values


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_record_from_folder(folder: str | os.PathLike, stage: int | None = None) -> StageRecord:
    """A stage's record from the folder run_pretrain wrote (`hive_stage.json`, `trainer_state.json`,
    `training_args.json`, or for runs from before it, the Trainer's pickled `training_args.bin` read with
    `load_training_args`); `stage` defaults to the one recorded there."""
    folder = Path(folder)
    marker = read_stage_marker(folder)
    state = _read_json(folder / "trainer_state.json")
    config = _read_json(folder / "config.json")
    history = marker.get("log_history") or state.get("log_history") or []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    # The Trainer reports samples/s over the whole schedule's sample count, so their product is that count.
    per_second, runtime = marker.get("train_samples_per_second"), marker.get("train_runtime")
    args = read_training_args(folder)
    if args is None:
        args = load_training_args(folder / "training_args.bin")
    return StageRecord(
        stage=stage if stage is not None else marker.get("stage", config.get("training_stage")),
        steps=state.get("global_step"),
        epochs=marker.get("epoch", state.get("epoch")),
        images_seen=round(per_second * runtime) if per_second and runtime else None,
        first_loss=losses[0] if losses else marker.get("first_loss"),
        last_loss=losses[-1] if losses else marker.get("last_loss"),
        train_loss=marker.get("train_loss"),
        hyperparameters=training_hyperparameters(args) if args is not None else {},
    )


def stage_record_from_trainer(stage: int | None, args: Any, state: Any) -> StageRecord:
    """The record of the stage a `Trainer` is running (or just ran), from its arguments and state."""
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    summary = next((entry for entry in reversed(state.log_history) if "train_loss" in entry), {})
    batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    return StageRecord(
        stage=stage,
        steps=state.global_step,
        epochs=state.epoch,
        images_seen=state.global_step * batch,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        train_loss=summary.get("train_loss"),
        hyperparameters=training_hyperparameters(args),
    )


def finished_stages(run_dir: str | os.PathLike, warn: bool = True) -> dict[int, Path]:
    """`{stage: folder}` for the stage folders of a pre-training run that finished, in stage order."""
    return RunLayout(run_dir).finished_stages(HIVE_STAGES.stages, warn=warn)
