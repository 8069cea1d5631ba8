"""HiveTrainer: `Trainer` with stage-aware optimizer groups and a count of skipped images (kept across a resume).

It overrides only documented hooks (`create_optimizer`, `compute_loss`); everything that does not change the loop
(applying and guarding the stage) is `HiveStageCallback`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer
from transformers.utils import logging

from ..data.collate import SKIPPED_KEY
from ..modeling_hive import parameter_component
from ..runs.stages import StageSetter
from .callback import HiveStageCallback, SkippedImagesCallback

logger = logging.get_logger(__name__)


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
        if not any(isinstance(c, SkippedImagesCallback) for c in callbacks):
            callbacks.append(SkippedImagesCallback())
        self.lr_multipliers = lr_multipliers
        self.component_rule = component_rule
        super().__init__(*args, callbacks=callbacks, **kwargs)

    def _skip_counter(self) -> SkippedImagesCallback:
        # Looked up each time: resuming with `restore_callback_states_from_checkpoint` replaces callback objects.
        return next(c for c in self.callback_handler.callbacks if isinstance(c, SkippedImagesCallback))

    @property
    def skipped_images(self) -> int:
        """Images this process's batches skipped in this stage; after a resume, the main process includes the total
        from before it (see `SkippedImagesCallback`)."""
        return self._skip_counter().count()

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
