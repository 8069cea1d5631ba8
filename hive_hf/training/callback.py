"""Callbacks of a training stage: `HiveStageCallback` applies the stage and makes sure frozen weights stay frozen;
`SkippedImagesCallback` keeps the count of skipped images across a resume."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import extract_model_from_parallel, reduce
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from ..runs.stages import StageSetter

logger = logging.get_logger(__name__)

# Setters saved under an earlier import path by checkpoints of runs from before they moved.
_MOVED_SETTERS = {"hive_hf.evaluation.vlm:set_vlm_training_stage": "hive_hf.runs.stages:set_vlm_training_stage"}


def _fingerprint(param: torch.Tensor) -> tuple[float, float]:
    values = param.detach().double()
    return float(values.sum()), float((values * values).sum())


def _runs_ddp() -> bool:
    """The Trainer's model is wrapped in `DistributedDataParallel`: accelerate does that for every `MULTI_<device>`
    type; FSDP and DeepSpeed are types of their own (they shard gradients, so a `.grad` may be None on purpose)."""
    state = AcceleratorState()
    return state.use_distributed and state.distributed_type.name.startswith("MULTI_")


def _setter_path(setter: StageSetter) -> str:
    return f"{setter.__module__}:{setter.__qualname__}"


def _resolve_setter(path: str) -> StageSetter:
    module, _, name = _MOVED_SETTERS.get(path, path).partition(":")
    return getattr(importlib.import_module(module), name)


class HiveStageCallback(TrainerCallback, ExportableState):
    """Applies `stage` when the Trainer is built (before its optimizer exists), logs trainable parameters per
    component at train start, and raises if a frozen parameter ever holds a gradient or changes value.

    The stage is applied by `model.set_training_stage(stage)` (HIVE models), or by `stage_setter(model, stage)` for a
    model without that method (e.g. `hive_hf.runs.stages.set_vlm_training_stage` for a LLaVA model); a setter is
    a module-level function, saved by import path so that restoring the callback from a checkpoint finds it again.
    Either one rejects a stage that does not exist, when the Trainer is built.

    Under DDP without `find_unused_parameters` (`--ddp_find_unused_parameters False`, the staged runs' default), a
    trainable parameter that gets no gradient in a step is an error naming it, raised on every process that lacks it
    before the optimizer steps (DDP itself would stop only at the next forward, naming parameter indices).

    The stage is saved in every checkpoint's `trainer_state.json` (stateful callback); HIVE models also record it in
    their config. Frozen values are compared by float64 sums at every epoch end and at train end; the check is cheap
    and catches any optimizer update, though not a permutation of values.
    """

    def __init__(self, stage: int, stage_setter: StageSetter | str | None = None):
        self.stage = stage
        self.stage_setter = _resolve_setter(stage_setter) if isinstance(stage_setter, str) else stage_setter
        self._frozen: dict[str, tuple[float, float]] = {}
        self._every_grad = False  # every trainable parameter must get a gradient (DDP, find_unused_parameters off)

    def state(self) -> dict[str, Any]:
        args: dict[str, Any] = {"stage": self.stage}
        if self.stage_setter is not None:
            args["stage_setter"] = _setter_path(self.stage_setter)
        return {"args": args, "attributes": {}}

    def _apply(self, model: torch.nn.Module) -> dict[str, dict[str, int]]:
        if self.stage_setter is not None:
            return self.stage_setter(model, self.stage)
        return model.set_training_stage(self.stage)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._apply(extract_model_from_parallel(model))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = extract_model_from_parallel(model)
        counts = self._apply(model)  # idempotent; re-applied in case something toggled flags
        summary = ", ".join(f"{c} {v['trainable']:,}/{v['total']:,}" for c, v in counts.items())
        logger.info(f"Stage {self.stage}: trainable parameters per component: {summary}")
        self._frozen = {n: _fingerprint(p) for n, p in model.named_parameters() if not p.requires_grad}
        self._every_grad = args.ddp_find_unused_parameters is False and _runs_ddp()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # Judged against the stage as applied at train start, so a weight unfrozen since then is caught too.
        no_grad = []
        for name, param in extract_model_from_parallel(model).named_parameters():
            if name in self._frozen and param.grad is not None:
                raise RuntimeError(f"Stage {self.stage}: frozen parameter {name} received a gradient.")
            if self._every_grad and param.requires_grad and param.grad is None:
                no_grad.append(name)
        if no_grad:
            names = ", ".join(no_grad[:5]) + (", ..." if len(no_grad) > 5 else "")
            raise RuntimeError(
                f"Stage {self.stage}, step {state.global_step + 1}: {len(no_grad)} trainable parameters received no "
                f"gradient on process {args.process_index}: {names}. DDP runs with find_unused_parameters=False, "
                "which needs every trainable parameter in the loss; freeze them in this stage, or pass "
                "--ddp_find_unused_parameters True."
            )

    def _check_unchanged(self, model: torch.nn.Module) -> None:
        params = dict(extract_model_from_parallel(model).named_parameters())
        for name, before in self._frozen.items():
            if name in params and _fingerprint(params[name]) != before:
                raise RuntimeError(f"Stage {self.stage}: frozen parameter {name} changed during training.")

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._check_unchanged(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._check_unchanged(model)


class SkippedImagesCallback(TrainerCallback, ExportableState):
    """Counts the images the collator skipped in a stage (`HiveTrainer` adds what each batch reports) and keeps the
    count in every checkpoint, so that a stage resumed after a crash reports the images skipped over the whole stage.

    The count is per pass over the data: an unreadable image is counted each time its batch is trained on (once per
    epoch). Each process counts its own batches; at every save the counts are summed over processes and stored with
    the checkpoint (`trainer_state.json`, as a stateful callback). On resume the main process starts from that sum and
    the others from zero, so `total` stays the sum over processes: what the run would have reported uninterrupted.
    """

    def __init__(self, saved: int = 0):
        self.saved = saved  # the total over processes at the last save
        self.local = 0  # this process, since this `train()` started
        self.restored = 0  # the total before a resume, on the main process

    def state(self) -> dict[str, Any]:
        return {"args": {"saved": self.saved}, "attributes": {}}

    def add(self, count: int) -> None:
        self.local += count

    def count(self) -> int:
        """This process's count (a resumed stage's earlier total included on the main process)."""
        return self.restored + self.local

    def total(self, args: Any) -> int:
        """The count summed over processes; every process must call it (a collective)."""
        count = torch.tensor(self.count(), device=args.device)
        return int(reduce(count, reduction="sum")) if args.world_size > 1 else int(count)

    def on_train_begin(self, args, state, control, **kwargs):
        # `state` is the checkpoint's when resuming (Trainer loads it before this event), else a fresh one holding 0.
        stored = state.stateful_callbacks.get(type(self).__name__) or {}
        self.restored = stored.get("args", {}).get("saved", 0) if args.process_index == 0 else 0
        self.local = 0

    def _before_save(self, args, control) -> None:
        if control.should_save:  # the Trainer saves right after this event, on every process
            self.saved = self.total(args)

    def on_step_end(self, args, state, control, **kwargs):
        self._before_save(args, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before_save(args, control)
