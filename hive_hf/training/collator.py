"""Batches image-caption rows for HIVE training; unreadable images are skipped and counted, never fatal."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

from ..data.captions import decode_image

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


class HiveCaptionCollator(SkippingCollator):
    """`HiveProcessor` over a list of `{"image": ..., "caption": ...}` rows, with `labels` for the LM loss.

    Images may be PIL images, bytes, `{"bytes", "path"}` dicts (a `datasets.Image(decode=False)` column) or paths.
    Rows whose image is missing or unreadable, or whose caption is empty or not a string, are skipped and counted
    (see `SkippingCollator`).
    """

    def __init__(
        self,
        processor: Any,
        prompt: str | None = None,
        max_length: int | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
    ):
        super().__init__()
        self.processor = processor
        self.prompt = prompt
        self.max_length = max_length
        self.image_column = image_column
        self.caption_column = caption_column

    def usable(self, row: dict[str, Any]) -> tuple[Any, str] | None:
        image = decode_image(row.get(self.image_column))
        caption = row.get(self.caption_column)
        if image is None or not isinstance(caption, str) or not caption.strip():
            return None
        return image, caption

    def empty_batch_message(self, num_rows: int) -> str:
        return (f"None of the {num_rows} rows of the first batch has a readable image and a caption: check "
                f"--image_column {self.image_column!r} and --caption_column {self.caption_column!r}.")

    def collate(self, items: list[tuple[Any, str]]) -> dict[str, torch.Tensor]:
        return self.processor(
            images=[image for image, _ in items], text=[caption for _, caption in items], prompt=self.prompt,
            max_length=self.max_length, add_eos=True, return_labels=True,
        )
