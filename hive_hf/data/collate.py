"""Batching rows that may be unusable: an unreadable image or an empty caption is skipped and counted, never fatal."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

SKIPPED_KEY = "num_skipped_images"


class SkippingCollator:
    """Batches rows, dropping those `usable` rejects (an unreadable image, an empty caption) and counting them.

    The batch carries the count under `num_skipped_images`, which `HiveTrainer` removes and sums (so counts from
    DataLoader workers and from every process add up). A batch with no usable row repeats the last good row rather
    than stopping the run; if the very first batch has none, the data are wrong and `empty_batch_message` says how.
    Subclasses define `usable(row)` (what `collate` needs from the row, or None to skip it) and `collate(items)`.
    """

    def __init__(self) -> None:
        self._last_good: Any = None

    def usable(self, row: dict[str, Any]) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def empty_batch_message(self, num_rows: int) -> str:
        return f"None of the {num_rows} rows of the first batch has a readable image."

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        items = [item for item in map(self.usable, rows) if item is not None]
        skipped = len(rows) - len(items)
        if not items:
            if self._last_good is None:
                raise ValueError(self.empty_batch_message(len(rows)))
            logger.warning("A batch had no readable image; repeating the last good row in its place.")
            items = [self._last_good]
        self._last_good = items[-1]
        batch = dict(self.collate(items))
        batch[SKIPPED_KEY] = torch.tensor(skipped)
        return batch
