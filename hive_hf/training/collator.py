"""Batches image-caption rows for HIVE training; unreadable images are skipped and counted, never fatal."""

from __future__ import annotations

from typing import Any

import torch

from ..data.captions import decode_image
from ..data.collate import SkippingCollator


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
