"""HiveStageCallback: applies a pre-training stage and makes sure frozen weights stay frozen."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "set_training_stage"):  # DDP / DeepSpeed wrappers
        model = model.module
    return model


def _fingerprint(param: torch.Tensor) -> tuple[float, float]:
    values = param.detach().double()
    return float(values.sum()), float((values * values).sum())


class HiveStageCallback(TrainerCallback, ExportableState):
    """Applies `stage` when the Trainer is built (before its optimizer exists), logs trainable parameters per
    component at train start, and raises if a frozen parameter ever holds a gradient or changes value.

    The stage is saved in every checkpoint's `trainer_state.json` (stateful callback) and in the model config.
    Frozen values are compared by float64 sums at every epoch end and at train end; the check is cheap and catches
    any optimizer update, though not a permutation of values.
    """

    def __init__(self, stage: int):
        if stage not in (1, 2, 3):
            raise ValueError(f"`stage` must be 1, 2 or 3, got {stage!r}.")
        self.stage = stage
        self._frozen: dict[str, tuple[float, float]] = {}

    def state(self) -> dict[str, Any]:
        return {"args": {"stage": self.stage}, "attributes": {}}

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            _unwrap(model).set_training_stage(self.stage)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = _unwrap(model)
        counts = model.set_training_stage(self.stage)  # idempotent; re-applied in case something toggled flags
        summary = ", ".join(f"{c} {v['trainable']:,}/{v['total']:,}" for c, v in counts.items())
        logger.info(f"HIVE stage {self.stage}: trainable parameters per component: {summary}")
        self._frozen = {n: _fingerprint(p) for n, p in model.named_parameters() if not p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # Judged against the stage as applied at train start, so a weight unfrozen since then is caught too.
        for name, param in _unwrap(model).named_parameters():
            if name in self._frozen and param.grad is not None:
                raise RuntimeError(f"Stage {self.stage}: frozen parameter {name} received a gradient.")

    def _check_unchanged(self, model: torch.nn.Module) -> None:
        params = dict(_unwrap(model).named_parameters())
        for name, before in self._frozen.items():
            if name in params and _fingerprint(params[name]) != before:
                raise RuntimeError(f"Stage {self.stage}: frozen parameter {name} changed during training.")

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._check_unchanged(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._check_unchanged(model)
