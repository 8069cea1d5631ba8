"""The pickle rules: nothing pickled is ever pushed, and a pickle is read only without running code it names.

Loading a pickle runs whatever code it names; torch and the Trainer write several (`training_args.bin`, the
optimizer, scheduler and RNG state of a checkpoint). So a push never carries one (`PICKLE_PATTERNS`, `pickled_files`),
Hub strategies that upload checkpoint folders are refused (`check_hub_strategy`), a token is never left in arguments
the Trainer pickles (`check_hub_settings`), and an older run's `training_args.bin` is read with an allowlist
(`load_training_args`).
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import HubStrategy
from transformers.utils import logging

logger = logging.get_logger(__name__)

# What torch and pickle write (`torch.save`: training_args.bin, optimizer.pt, rng_state.pth, ...): weights go up as
# safetensors, records as JSON.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
# Hub strategies that upload checkpoint folders as they are: with the optimizer, scheduler and RNG state, which torch
# saves as pickles.
PICKLING_HUB_STRATEGIES = (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS)


def pickled_files(folder: str | os.PathLike) -> list[str]:
    """The files under `folder` (relative paths) that `PICKLE_PATTERNS` name."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in PICKLE_PATTERNS))


def check_hub_strategy(strategy: HubStrategy | str) -> None:
    """Refuse a `hub_strategy` that uploads checkpoint folders: their optimizer, scheduler and RNG state are pickles."""
    strategy = HubStrategy(strategy)
    if strategy in PICKLING_HUB_STRATEGIES:
        raise ValueError(
            f"`hub_strategy` must be 'every_save' or 'end', got {strategy.value!r}: it uploads whole checkpoint "
            "folders, whose optimizer, scheduler and RNG state torch saves as pickles, and nothing pickled is pushed. "
            "Checkpoints to resume from stay in --output_dir."
        )


def check_hub_settings(args: TrainingArguments) -> None:
    """Refuse Hub settings that would put a secret or a pickle on disk or on the Hub (`ValueError` naming the
    field): a `hub_token` left in the arguments, or a `hub_strategy` that uploads checkpoint folders."""
    if args.hub_token is not None:
        raise ValueError(
            "`hub_token` is set in the training arguments, which the Trainer pickles into every checkpoint "
            "(training_args.bin) with the token in clear text. Pass the token to the push callback instead "
            "(HubPushCallback(token=...)), or use HF_TOKEN / `hf auth login`."
        )
    check_hub_strategy(args.hub_strategy)

# `training_args.bin` is a pickle: only classes from these packages may be rebuilt from it.
_TRUSTED_PICKLE_PACKAGES = ("transformers", "accelerate")


def load_training_args(path: str | os.PathLike) -> Any | None:
    """`TrainingArguments` from a Trainer's `training_args.bin`, or None.

    The file is a pickle. It is read with `torch.load(weights_only=True)`, allowing only the classes it names from
    transformers and accelerate (the arguments, their enums and dataclasses), so a file that wants to build anything
    else is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        allowed = []
        for name in names:
            module, _, attr = name.rpartition(".")
            obj = None
            if module.split(".")[0] in _TRUSTED_PICKLE_PACKAGES:
                obj = getattr(importlib.import_module(module), attr, None)
            if not inspect.isclass(obj):
                logger.warning(f"{path} needs {name} to unpickle, which is not allowed; its hyperparameters are skipped.")
                return None
            allowed.append(obj)
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ImportError, AttributeError, EOFError) as err:
        logger.warning(f"Could not read {path} ({err}); its hyperparameters are left out of the model card.")
        return None
