"""Reading a Trainer's `training_args.bin` (a pickle) without running code it names, for run folders from before
stages recorded their arguments as `training_args.json`. Only local run folders are read: nothing pickled is pushed."""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

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
