"""Staged runs (`StagedRun`): each stage one `HiveTrainer` run with its own hyperparameters
(`StagedTrainingArguments.for_stage`), starting from the previous stage's weights, in its own folder of the run's
layout (`hive_hf.runs.layout.RunLayout`).

HIVE pre-training (stages 1-3) and the LLaVA fine-tuning of an encoder (stages 1-2) are the same loop. A stage that
finished leaves a marker file and is skipped when the command runs again; an interrupted one resumes from its last
complete checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    ProcessorMixin,
    Trainer,
    TrainerCallback,
)
from transformers.utils import logging

from ..runs.layout import RunLayout, stage_tag, write_training_args
from ..runs.plots import plot_loss_curves
from ..runs.stages import TrainingStages
from ..runs.tables import markdown_table
from .arguments import StagedTrainingArguments
from .lora import apply_lora, merge_lora
from .trainer import HiveTrainer

logger = logging.get_logger(__name__)

@dataclass
class StagedRun:
    """The stages of one run, each a `HiveTrainer` run from the previous stage's weights (see the module docstring).

    Args:
        layout: the run folder.
        args: the per-stage hyperparameters; `args.stages` are run, in order.
        stages: what each stage trains (`hive_hf.runs.stages.HIVE_STAGES`, `VLM_STAGES`).
        make_collator: builds the batch collator from the stage's processor.
        model_kwargs: for `from_pretrained` of each stage's starting model (e.g. `attn_implementation`).
        lr_multipliers: per-component learning-rate factors (`HiveTrainer`).
        apply_lora / merge_lora: how `stages.lora_stage` puts LoRA adapters on the LLM (`args.lora_r > 0`) and folds
            them back.
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
            logger.info(f"stage {stage} already finished ({self.layout.marker_path(stage)}); skipping it")
            return self.layout.read_marker(stage)

        model = AutoModelForImageTextToText.from_pretrained(start_dir, **self.model_kwargs)
        processor = AutoProcessor.from_pretrained(start_dir)
        lora = stage == self.stages.lora_stage and self.args.lora_r > 0
        if lora:
            self.apply_lora(model, r=self.args.lora_r, alpha=self.args.lora_alpha, dropout=self.args.lora_dropout)
        stage_args = self.args.for_stage(stage, stage_dir)
        trainer = HiveTrainer(
            model=model, args=stage_args, train_dataset=train_dataset, data_collator=self.make_collator(processor),
            stage=stage, stage_setter=self.stages.stage_setter, component_rule=self.stages.component_of,
            lr_multipliers=self.lr_multipliers, processing_class=processor,  # checkpoints carry the processor too
            callbacks=list(self.callbacks) or None,
        )
        last = self.layout.last_checkpoint(stage)
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
        trainer.log_metrics(stage_tag(stage), metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            fusion = getattr(model.config, "fusion", None)
            plot_loss_curves({f"stage {stage}": trainer.state.log_history}, stage_dir / self.layout.LOSS_CURVE,
                             title=f"{self.stages.name}, stage {stage}" + (f" ({fusion})" if fusion else ""))
            self.layout.write_marker(stage, {**metrics, "log_history": trainer.state.log_history})
            if metrics["skipped_images"]:
                logger.warning(f"stage {stage}: skipped {metrics['skipped_images']} unreadable images")
        trainer.accelerator.wait_for_everyone()
        return self.layout.read_marker(stage)

    def summary_table(self, summaries: dict[int, dict[str, Any]]) -> str:
        """The run's stages as a markdown table: what each trains, its loss (first -> last logged), train time and
        the images it skipped. What the run prints at the end and writes as its results file."""
        rows = [[str(stage), self.stages.trains(stage), f"{m['first_loss']:.3f} -> {m['last_loss']:.3f}",
                 f"{m['train_runtime']:.1f} s", str(m.get("skipped_images", 0))] for stage, m in summaries.items()]
        return markdown_table(["stage", "trains", "loss (first -> last logged)", "train time", "skipped images"], rows)
