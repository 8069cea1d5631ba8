"""Transformers release differences that the library (not the Hub-shipped model code) meets.

The Hub-shipped files keep theirs in one section of `modeling_hive.py` ("Transformers release differences"), since
they must stay self-contained; this module re-exports those names and adds the library-only ones, so that scripts,
training and evaluation code import every version-dependent name from here. Each difference is detected by feature,
never by version string. The supported range is the one `pyproject.toml` declares and CI tests.
"""

from __future__ import annotations

# 5.6-5.17: `from transformers import AutoImageProcessor` returns a placeholder that demands torchvision, although
# the class itself runs on PIL alone; its own module never does that.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .modeling_hive import CACHE_NAME, CHECKPOINTING

__all__ = ["AutoImageProcessor", "CACHE_NAME", "CHECKPOINTING"]
