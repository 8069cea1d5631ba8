"""HiveProcessor: the vision tower's image processor paired with the LLM's tokenizer.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models" (arXiv 2604.00086).
Captions are truncated to 77 tokens as in the paper. This file is shipped to the Hub next to the weights, so it
imports nothing but transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature, ProcessorMixin

IGNORE_INDEX = -100


class HiveProcessor(ProcessorMixin):
    r"""
    Turns images and captions into `pixel_values`, `input_ids` and `attention_mask` (and `labels` when asked).

    Each sequence is laid out as `[tokenizer prefix, e.g. BOS] [image placeholders (concat only)] [prompt]
    [caption, truncated to max_length] [EOS when add_eos]`; `labels` keep only the caption and EOS.

    Args:
        image_processor: the vision tower's image processor (e.g. `SiglipImageProcessorPil`).
        tokenizer: the LLM's tokenizer.
        num_image_tokens (`int`, *optional*, defaults to 0):
            Placeholders inserted per image; non-zero only for `fusion="concat"`, where the vision tokens take their
            place in the sequence. Use `HiveProcessor.for_model_config` to set it from a `HiveConfig`.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder token; added to the tokenizer as a special token when `num_image_tokens > 0`.
        max_length (`int`, *optional*, defaults to 77):
            Caption tokens kept (the paper truncates text at 77 tokens).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int = 0,
        image_token: str = "<image>",
        max_length: int = 77,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        if num_image_tokens < 0 or max_length < 1:
            raise ValueError(
                f"`num_image_tokens` must be >= 0 and `max_length` >= 1, got {num_image_tokens} and {max_length}."
            )
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.max_length = max_length
        if tokenizer is not None and num_image_tokens and image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([image_token], special_tokens=True)
        if tokenizer is not None and tokenizer.pad_token is None:  # Llama-family tokenizers often ship without one
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def for_model_config(cls, config, image_processor, tokenizer, **kwargs: Any) -> HiveProcessor:
        """A processor matching `config` (a `HiveConfig`); it records in `config` what the model needs to know of the
        layout: the placeholder id in concat mode, and where the image sits (after the tokenizer's prefix, before the
        prompt and caption) as `image_position` when joint fusion places it (`image_rope`)."""
        num_image_tokens = config.num_image_tokens if config.fusion == "concat" else 0
        processor = cls(image_processor, tokenizer, num_image_tokens=num_image_tokens, **kwargs)
        if num_image_tokens:
            config.image_token_id = processor.image_token_id
        if getattr(config, "image_rope", "none") != "none":
            config.image_position = len(processor.tokenizer("", add_special_tokens=True)["input_ids"])
        return processor

    @property
    def image_token_id(self) -> int | None:
        if not self.num_image_tokens:
            return None
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def _caption_ids(self, caption: str, prompt_ids: list[int], prefix: list[int], max_length: int, add_eos: bool):
        caption_ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"][:max_length]
        if add_eos:
            caption_ids = caption_ids + [self.tokenizer.eos_token_id]
        placeholders = [self.image_token_id] * self.num_image_tokens
        head = prefix + placeholders + prompt_ids
        return head + caption_ids, [IGNORE_INDEX] * len(head) + caption_ids

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        prompt: str | None = None,
        max_length: int | None = None,
        add_eos: bool = False,
        return_labels: bool = False,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list, one per caption (PIL, numpy or torch, as the image processor takes).
            text: one caption or a list.
            prompt (`str`, *optional*): text put before every caption, never in `labels` (e.g. "A photo of").
            max_length (`int`, *optional*): caption tokens kept; defaults to `self.max_length` (77).
            add_eos (`bool`): end every caption with the tokenizer's EOS (what training wants).
            return_labels (`bool`): also return `labels` (prefix, placeholders, prompt and padding set to -100).
            kwargs: passed to the image processor.
        """
        if images is None and text is None:
            raise ValueError("HiveProcessor needs `images`, `text` or both.")
        data: dict[str, Any] = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            data.update(self.image_processor(images=list(images), return_tensors=return_tensors, **kwargs))
        if text is None:
            return BatchFeature(data=data, tensor_type=return_tensors)

        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and len(images) != len(texts):
            raise ValueError(
                f"Got {len(images)} images and {len(texts)} texts; HiveProcessor pairs exactly one image with each "
                "text."
            )
        max_length = self.max_length if max_length is None else max_length
        prefix = self.tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [BOS] for Llama, [] for Qwen
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        rows = [self._caption_ids(t, prompt_ids, prefix, max_length, add_eos) for t in texts]

        longest = max(len(ids) for ids, _ in rows)
        pad_id = self.tokenizer.pad_token_id
        left = self.tokenizer.padding_side == "left"
        input_ids, attention_mask, labels = [], [], []
        for ids, targets in rows:
            pad = longest - len(ids)
            input_ids.append([pad_id] * pad + ids if left else ids + [pad_id] * pad)
            attention_mask.append([0] * pad + [1] * len(ids) if left else [1] * len(ids) + [0] * pad)
            labels.append([IGNORE_INDEX] * pad + targets if left else targets + [IGNORE_INDEX] * pad)
        data.update(input_ids=input_ids, attention_mask=attention_mask)
        if return_labels:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["HiveProcessor"]
