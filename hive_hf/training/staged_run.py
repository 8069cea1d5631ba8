"""Staged runs: the folder a run writes (`RunLayout`) and the per-stage loop (`StagedRun`).

HIVE pre-training (`examples/run_pretrain.py`, stages 1-3) and the LLaVA fine-tuning of an encoder
(`examples/run_vlm_finetune.py`, stages 1-2) are the same loop: each stage is one `HiveTrainer` run with its own
hyperparameters (`StagedTrainingArguments.for_stage`), starting from the previous stage's weights, in its own folder.
A stage that finished leaves a marker file and is skipped when the command runs again; an interrupted one resumes
from its last complete checkpoint. `hive_hf.release` reads the same layout to publish a run.

A run folder (`--output_dir`):

    run_args.json               what was run, readable without unpickling (pre-training; no tokens)
    backbones/vision, text      tiny stand-in backbones (`--tiny_backbones`, `--tiny_text_backbone`), pre-trained
                                briefly on the run's own data (`--tiny_*_pretrain_steps`)
    init/                       the model and processor before stage 1, saved once so that a restart starts from the
                                same weights
    stage<k>/checkpoint-<step>  the Trainer's checkpoints while stage k runs (`--save_steps`; kept for resuming)
    stage<k>/                   once stage k finished: the weights with config and processor, ready for
                                `from_pretrained`; the marker (`hive_stage.json` / `vlm_stage.json`: metrics and loss
                                history); all_results.json, train_results.json, trainer_state.json;
                                training_args.json (the stage's arguments; the Trainer's training_args.bin holds
                                the same pickled, and is never pushed); loss_curve.png
    loss_curves.png             every stage run, one after another
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Trainer,
    TrainerCallback,
)
from transformers.utils import logging

from ..analysis.plots import plot_loss_curves
from .arguments import StagedTrainingArguments, write_training_args
from .stages import TrainingStages, apply_lora, last_complete_checkpoint, merge_lora
from .trainer import HiveTrainer

logger = logging.get_logger(__name__)

HIVE_STAGE_MARKER = "hive_stage.json"  # a finished pre-training stage
VLM_STAGE_MARKER = "vlm_stage.json"  # a finished VLM fine-tuning stage


@dataclass(frozen=True)
class RunLayout:
    """Where a staged run keeps what (see the module docstring). `marker` names the file that says a stage finished:
    `HIVE_STAGE_MARKER` for pre-training, `VLM_STAGE_MARKER` for the VLM fine-tuning."""

    root: Path
    marker: str = HIVE_STAGE_MARKER

    RUN_ARGS: ClassVar[str] = "run_args.json"
    LOSS_CURVE: ClassVar[str] = "loss_curve.png"
    LOSS_CURVES: ClassVar[str] = "loss_curves.png"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def init_dir(self) -> Path:
        return self.root / "init"

    @property
    def backbones_dir(self) -> Path:
        return self.root / "backbones"

    @property
    def run_args(self) -> Path:
        return self.root / self.RUN_ARGS

    @property
    def loss_curves(self) -> Path:
        return self.root / self.LOSS_CURVES

    def stage_dir(self, stage: int) -> Path:
        return self.root / f"stage{stage}"

    def marker_path(self, stage: int) -> Path:
        return self.stage_dir(stage) / self.marker

    def finished(self, stage: int) -> bool:
        """Stage `stage` ran to the end: its marker is written after its weights."""
        return self.marker_path(stage).is_file() and (self.stage_dir(stage) / "config.json").is_file()

    def read_marker(self, stage: int) -> dict[str, Any]:
        return json.loads(self.marker_path(stage).read_text())

    def finished_stages(self, stages: Sequence[int], warn: bool = True) -> dict[int, Path]:
        """`{stage: folder}` for the stages among `stages` that finished, in order; a stage folder left unfinished
        is reported (with `warn`) and left out."""
        done = {}
        for stage in stages:
            folder = self.stage_dir(stage)
            if self.finished(stage):
                done[stage] = folder
            elif warn and folder.is_dir():
                logger.warning(f"{folder} has no {self.marker}: stage {stage} did not finish.")
        return done

    def write_init(self, build: Callable[[], tuple[PreTrainedModel, ProcessorMixin]]) -> Path:
        """The stage-1 starting point: `build()` once, saved to `init/`; a restarted run finds it there."""
        if (self.init_dir / "config.json").is_file() and (self.init_dir / "processor_config.json").is_file():
            return self.init_dir
        model, processor = build()
        model.save_pretrained(self.init_dir)
        processor.save_pretrained(self.init_dir)
        return self.init_dir


@dataclass
class StagedRun:
    """The stages of one run, each a `HiveTrainer` run from the previous stage's weights (see the module docstring).

    Args:
        layout: the run folder.
        args: the per-stage hyperparameters; `args.stages` are run, in order.
        stages: what each stage trains (`HIVE_STAGES`, `hive_hf.evaluation.vlm.VLM_STAGES`).
        make_collator: builds the batch collator from the stage's processor.
        model_kwargs: for `from_pretrained` of each stage's starting model (e.g. `attn_implementation`).
        lr_multipliers: per-component learning-rate factors (`HiveTrainer`).
        apply_lora / merge_lora: how stage 2 puts LoRA adapters on the LLM (`args.lora_r > 0`) and folds them back.
        callbacks: more Trainer callbacks for every stage (e.g. `HiveHubCallback`).
        after_save: called with the trainer once a stage's final weights are saved (e.g. `HubPushCallback.push_final`).
    """

    layout: RunLayout
    args: StagedTrainingArguments
    stages: TrainingStages
    make_collator: Callable[[ProcessorMixin], Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    lr_multipliers: dict[str, float] | None = None
    apply_lora: Callable[..., None] = apply_lora
    merge_lora: Callable[[torch.nn.Module], None] = merge_lora
    callbacks: Sequence[TrainerCallback] = ()
    after_save: Callable[[Trainer], Any] | None = None

    def run(self, start_dir: str | Path, train_dataset: Any) -> dict[int, dict[str, Any]]:
        """Every stage of `args.stages`, the first from `start_dir`; returns each stage's metrics (its marker)."""
        summaries = {}
        for stage in self.args.stages:
            summaries[stage] = self.run_stage(stage, Path(start_dir), train_dataset)
            start_dir = self.layout.stage_dir(stage)
        if self.args.process_index == 0:
            plot_loss_curves({f"stage {s}": summaries[s]["log_history"] for s in self.args.stages},
                             self.layout.loss_curves, title=self.stages.name)
        return summaries

    def run_stage(self, stage: int, start_dir: Path, train_dataset: Any) -> dict[str, Any]:
        """One stage: skipped if it finished before, resumed from its last complete checkpoint if interrupted."""
        stage_dir = self.layout.stage_dir(stage)
        if self.layout.finished(stage):
            logger.warning(f"stage {stage} already finished ({self.layout.marker_path(stage)}); skipping it")
            return self.layout.read_marker(stage)

        model = AutoModelForImageTextToText.from_pretrained(start_dir, **self.model_kwargs)
        processor = AutoProcessor.from_pretrained(start_dir)
        lora = stage == 2 and self.args.lora_r > 0
        if lora:
            self.apply_lora(model, r=self.args.lora_r, alpha=self.args.lora_alpha, dropout=self.args.lora_dropout)
        stage_args = self.args.for_stage(stage, stage_dir)
        if isinstance(train_dataset, datasets.IterableDataset):
            # Skipped images make batch sizes vary; each process then collates its own batches instead of the main
            # process concatenating equal-sized ones.
            stage_args.accelerator_config.dispatch_batches = False
        trainer = HiveTrainer(
            model=model, args=stage_args, train_dataset=train_dataset, data_collator=self.make_collator(processor),
            stage=stage, stage_setter=self.stages.stage_setter, component_rule=self.stages.component_of,
            lr_multipliers=self.lr_multipliers, processing_class=processor,  # checkpoints carry the processor too
            callbacks=list(self.callbacks) or None,
        )
        last = last_complete_checkpoint(stage_dir)
        if last:
            logger.warning(f"stage {stage}: resuming from {last}")
        result = trainer.train(resume_from_checkpoint=last)
        if lora:
            self.merge_lora(trainer.model)
        trainer.save_model(str(stage_dir))
        if trainer.is_world_process_zero():
            write_training_args(stage_args, stage_dir)
        if self.after_save is not None:
            self.after_save(trainer)
        metrics = dict(result.metrics)
        metrics["skipped_images"] = trainer.total_skipped_images()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [metrics["train_loss"]]
        metrics.update(stage=stage, first_loss=losses[0], last_loss=losses[-1])
        trainer.log_metrics(f"stage{stage}", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            fusion = getattr(model.config, "fusion", None)
            plot_loss_curves({f"stage {stage}": trainer.state.log_history}, stage_dir / self.layout.LOSS_CURVE,
                             title=f"{self.stages.name}, stage {stage}" + (f" ({fusion})" if fusion else ""))
            self.layout.marker_path(stage).write_text(
                json.dumps({**metrics, "log_history": trainer.state.log_history}, indent=2))
            if metrics["skipped_images"]:
                logger.warning(f"stage {stage}: skipped {metrics['skipped_images']} unreadable images")
        trainer.accelerator.wait_for_everyone()
        return self.layout.read_marker(stage)

    def summary(self, summaries: dict[int, dict[str, Any]]) -> list[str]:
        """One line per stage: its loss, time, skipped images and checkpoint folder."""
        return [f"  stage {s}: loss {m['first_loss']:.3f} -> {m['last_loss']:.3f} in {m['train_runtime']:.1f}s "
                f"({m['skipped_images']} images skipped), checkpoint {self.layout.stage_dir(s)}"
                for s, m in summaries.items()]
