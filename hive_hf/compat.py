"""Transformers release differences that the library (not the Hub-shipped model code) meets.

The Hub-shipped files keep theirs in one section of `modeling_hive.py` ("Transformers release differences"), since
they must stay self-contained; the library's own are here. Each difference is detected by feature, never by version
string. The supported range is the one `pyproject.toml` declares and CI tests.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainingArguments

# 5.6-5.17: `from transformers import AutoImageProcessor` returns a placeholder that demands torchvision, although
# the class itself runs on PIL alone; its own module never does that.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .modeling_hive import CHECKPOINTING


def checkpointing_kwargs(args: TrainingArguments) -> dict[str, Any]:
    """The activation checkpointing options `args` ask for, under either name: 5.23 renamed
    `gradient_checkpointing_kwargs` to `activation_checkpointing_kwargs` (`CHECKPOINTING`), and still reads the old
    one."""
    names = dict.fromkeys((f"{CHECKPOINTING}_kwargs", "gradient_checkpointing_kwargs"))
    return next((value for name in names if (value := getattr(args, name, None))), None) or {}


def checkpointing_enabled(args: TrainingArguments) -> bool:
    """Whether `args` turn activation checkpointing on, under either name (see `checkpointing_kwargs`)."""
    return any(getattr(args, name, False) for name in dict.fromkeys((CHECKPOINTING, "gradient_checkpointing")))


__all__ = ["AutoImageProcessor", "checkpointing_enabled", "checkpointing_kwargs"]
