"""HiveTrainer: `Trainer` with stage-aware optimizer groups, a count of skipped images (kept across a resume), and
streamed data that each process reads its own part of and that resumes where it stopped (`streaming`).

It overrides only documented hooks (`create_optimizer`, `compute_loss`, `get_train_dataloader`,
`get_resumed_dataloader`) and `train`, to know the checkpoint it resumes from; everything that does not change the
loop (applying and guarding the stage, saving the data position) is a callback.
"""

from __future__ import annotations

import logging as pylogging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..data.collate import SKIPPED_KEY
from ..modeling_hive import parameter_component
from ..runs.stages import StageSetter
from .callback import HiveStageCallback, SkippedImagesCallback
from .streaming import DataStateCallback, is_stream, load_data_state, streamed_dataloader

logger = logging.get_logger(__name__)


class _MtimeFallbackFilter(pylogging.Filter):
    """Drops transformers' "mtime may not be reliable on this filesystem" warning. `Trainer` orders checkpoints by
    modification time and, when the oldest and newest are less than a second apart, says the filesystem is to blame
    and orders them by step. Runs that save every few seconds (the demo, the streamed example) meet this on any
    filesystem, and the step order it falls back to is the right one: the warning tells a user nothing true."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return "mtime may not be reliable" not in record.getMessage()


logging.get_logger("transformers.trainer_utils").addFilter(_MtimeFallbackFilter())


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Norm weights, biases and tanh gates are 1-D; decaying them pulls gates back to zero and norms to nothing.
    return param.ndim < 2 or name.endswith(".bias") or name.endswith(".gate")


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    learning_rate: float,
    lr_multipliers: dict[str, float] | None = None,
    component_rule: Callable[[str], str] = parameter_component,
) -> list[dict[str, Any]]:
    """Optimizer groups over the trainable parameters only: per component (vision, projector, fusion, llm, as
    `component_rule` names them from parameter names; HIVE's by default) and decay / no-decay, each with
    `learning_rate * lr_multipliers.get(component, 1)`."""
    lr_multipliers = dict(lr_multipliers or {})
    unknown = set(lr_multipliers) - {"vision", "projector", "fusion", "llm"}
    if unknown:
        raise ValueError(f"lr multipliers name unknown components {sorted(unknown)}; use vision, projector, fusion, llm.")
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        component = component_rule(name)
        decay = not _no_decay(name, param)
        group = groups.setdefault((component, decay), {
            "params": [], "names": [], "component": component,
            "weight_decay": weight_decay if decay else 0.0,
            "lr": learning_rate * lr_multipliers.get(component, 1.0),
        })
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("No parameter is trainable: apply a training stage (model.set_training_stage) first.")
    return list(groups.values())


class HiveTrainer(Trainer):
    """`Trainer` for one training stage (HIVE pre-training, or the LLaVA fine-tuning of `hive_hf.evaluation.vlm`).

    Args:
        stage (`int`, *optional*): 1, 2 or 3; adds a `HiveStageCallback` that applies it before the optimizer is
            built and guards frozen weights during training.
        stage_setter (`Callable`, *optional*): `stage_setter(model, stage)` applies the stage for a model without a
            `set_training_stage` method (see `HiveStageCallback`).
        component_rule (`Callable`, *optional*): which component a parameter belongs to, by name, for the optimizer
            groups and `lr_multipliers`; default: HIVE's `parameter_component`. `TrainingStages` bundles both.
        lr_multipliers (`dict[str, float]`, *optional*): per-component learning-rate factors, e.g. `{"vision": 0.1}`.
        All other arguments are `Trainer`'s.
    """

    def __init__(self, *args: Any, stage: int | None = None, lr_multipliers: dict[str, float] | None = None,
                 stage_setter: StageSetter | None = None, component_rule: Callable[[str], str] = parameter_component,
                 **kwargs: Any):
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if stage is not None and not any(isinstance(c, HiveStageCallback) for c in callbacks):
            callbacks.append(HiveStageCallback(stage, stage_setter=stage_setter))
        for needed in (SkippedImagesCallback, DataStateCallback):
            if not any(isinstance(c, needed) for c in callbacks):
                callbacks.append(needed())
        self.lr_multipliers = lr_multipliers
        self.component_rule = component_rule
        self.resumed_from: str | None = None
        super().__init__(*args, callbacks=callbacks, **kwargs)

    def _skip_counter(self) -> SkippedImagesCallback:
        # Looked up each time: resuming with `restore_callback_states_from_checkpoint` replaces callback objects.
        return next(c for c in self.callback_handler.callbacks if isinstance(c, SkippedImagesCallback))

    @property
    def skipped_images(self) -> int:
        """Images this process's batches skipped in this stage; after a resume, the main process includes the total
        from before it (see `SkippedImagesCallback`)."""
        return self._skip_counter().count()

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`, remembering the checkpoint it resumes from: a streamed dataset's position is read from
        there (`get_resumed_dataloader`)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # what Trainer.train does with True
        self.resumed_from = resume_from_checkpoint or None
        if self.resumed_from and is_stream(self.train_dataset) and not hasattr(Trainer, "get_resumed_dataloader"):
            logger.warning("This transformers version has no `Trainer.get_resumed_dataloader`: the stream is read "
                           "again from its start up to the resumed step (upgrade transformers to resume at once).")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        """A streamed dataset (`datasets.IterableDataset`) is read by a `StatefulDataLoader` over this process's own
        shards (`hive_hf.training.streaming`); a map-style one as `Trainer` reads it."""
        if not is_stream(self.train_dataset):
            return super().get_train_dataloader()
        # `_train_batch_size`: what Trainer.get_train_dataloader uses (it follows auto_find_batch_size)
        return streamed_dataloader(self.train_dataset, self._train_batch_size, self.data_collator, self.args)

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        """A stream resumes at the position saved in the checkpoint, reading nothing already trained; a checkpoint
        without one (or map-style data) skips `num_batches` batches as `Trainer` does."""
        state = None
        if self.resumed_from and hasattr(dataloader, "load_state_dict"):
            state = load_data_state(self.resumed_from, self.args, num_batches)
        if state is None:
            if is_stream(self.train_dataset):
                logger.warning(f"{self.resumed_from} holds no data position for process {self.args.process_index}: "
                               f"reading the stream again up to batch {num_batches}.")
            return super().get_resumed_dataloader(dataloader, num_batches)
        dataloader.load_state_dict(state)
        logger.info(f"Resumed the stream after {num_batches} batches from {self.resumed_from}, reading nothing again.")
        return dataloader

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = build_param_groups(model, self.args.weight_decay, self.args.learning_rate, self.lr_multipliers,
                                        self.component_rule)
            for group in groups:
                group.pop("names")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None):
        skipped = inputs.pop(SKIPPED_KEY, None)
        if skipped is not None:
            self._skip_counter().add(int(skipped))
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def total_skipped_images(self) -> int:
        """Skipped images summed over all processes, over the whole stage (a resume included); counted per pass over
        the data. Every process must call it."""
        return self._skip_counter().total(self.args)
