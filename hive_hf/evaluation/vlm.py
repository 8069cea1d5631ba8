"""LLaVA-style VLM fine-tuning and evaluation of a vision encoder (HIVE, arXiv 2604.00086, Sec. 4 and Table 2).

The pre-trained encoder feeds a stock `transformers` `LlavaForConditionalGeneration`, as the authors' stages 4-5
(`scripts/train/HIVE_florence.sh`, GitHub eugenelet/HIVE @ a5160ce) do: the output of the second-to-last block
(`vision_feature_layer=-2`, LLaVA's `mm_vision_select_layer -2`: a raw block output, no post-norm; SigLIP has no class
token, so all patches, `"full"`; CLIP's class token is dropped, `"default"`) goes through a fresh 2-layer MLP projector
into any causal LM's input sequence. Images are padded to a square of the image processor's mean colour before
resizing (`image_aspect_ratio="pad"`, LLaVA's `expand2square`). Training has two stages, LLaVA's: 1 trains the
projector (encoder and LLM frozen), 2 adds the LLM (in full, or LoRA adapters); the encoder is always frozen. The
result is a plain LLaVA checkpoint with a `LlavaProcessor`: it loads with `AutoModelForImageTextToText` /
`AutoProcessor` and no remote code.

Training data are conversations (`vqa_data.CONVERSATION_FEATURES`) rendered with the LLM's own chat template; the loss
covers the assistant turns only (`ConversationCollator`). Evaluation asks lmms-eval's prompts in the same template,
decodes greedily (16 new tokens) and scores with each benchmark's own metric (`hive_hf.metrics`), on data in the
layout of :mod:`hive_hf.data.vqa`.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
)
from transformers.utils import logging

from ..compat import AutoImageProcessor
from ..configuration_hive import VisionTokenLayout, vision_token_layout
from ..data.captions import decode_image
from ..data.collate import SkippingCollator
from ..data.vqa import IMAGE_TOKEN, TASK_METRICS, training_answer, user_message
from ..metrics import load_metric
from ..modeling_hive import load_vision_tower
from ..runs.tables import markdown_table
from ..training.lora import apply_lora, merge_lora

logger = logging.get_logger(__name__)

__all__ = [
    "IMAGE_ASPECT_RATIOS",
    "IMAGE_TOKEN",
    "SCORING_OPTIONS",
    "TASK_TITLES",
    "ConversationCollator",
    "apply_vlm_lora",
    "assistant_spans",
    "blind_baseline_scores",
    "build_llava",
    "compose_llava",
    "expand_to_square",
    "format_results_table",
    "generate_answers",
    "load_vision_tower",
    "merge_vlm_lora",
    "question_prior_predictions",
    "score_predictions",
]

IMAGE_ASPECT_RATIOS = ("pad", "square")

# The scoring options of the metrics (`hive_hf.metrics`, whose scripts cannot be imported from): task -> (option, its
# values), the first being the metric's default, lmms-eval's. `tests/test_vlm.py` checks these against the metrics.
SCORING_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scienceqa": ("parsing", ("strict", "lenient")),
    "mme": ("parsing", ("official", "strict")),
    "gqa": ("normalization", ("lmms_eval", "llava", "lenient")),
    "vqa": ("normalization", ("lmms_eval", "official")),
}

# Column titles of the results table, in the paper's order (Table 2).
TASK_TITLES: dict[str, str] = {"mme": "MME", "gqa": "GQA", "vqa": "OK-VQA", "scienceqa": "ScienceQA"}


# -- building the model -----------------------------------------------------------------------------------------------
def _processed_size(image_processor: Any, size: int) -> tuple[int, int]:
    pixels = image_processor(PIL.Image.new("RGB", (size + 7, size + 3)), return_tensors="np")["pixel_values"]
    return tuple(pixels.shape[-2:])


def _check_llava_inputs(vision_config: Any, layout: VisionTokenLayout, image_processor: Any,
                        vision_feature_select_strategy: str | None, vision_feature_layer: int) -> str:
    """Raise on a feature layer, strategy or image processor that does not fit the tower; return the strategy,
    defaulting to what the tower needs (`"default"` drops a class token, `"full"` keeps every token)."""
    blocks = vision_config.num_hidden_layers
    if not -blocks - 1 <= vision_feature_layer <= blocks:
        raise ValueError(f"vision_feature_layer must be a hidden_states index of the {blocks}-block tower, in "
                         f"[{-blocks - 1}, {blocks}]; got {vision_feature_layer}.")
    if vision_feature_select_strategy is None:
        vision_feature_select_strategy = "default" if layout.class_tokens else "full"
    if vision_feature_select_strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got "
                         f"{vision_feature_select_strategy!r}.")
    if vision_feature_select_strategy == "default" and not layout.class_tokens:
        raise ValueError("vision_feature_select_strategy='default' drops a class token, but this tower has none "
                         "(e.g. SigLIP); use 'full'.")
    processed = _processed_size(image_processor, vision_config.image_size)
    if processed != (vision_config.image_size,) * 2:
        raise ValueError(f"The image processor outputs {processed} pixels but the vision tower expects "
                         f"{vision_config.image_size}; pass the tower's own image processor.")
    return vision_feature_select_strategy


def _add_image_token(tokenizer: Any, llm: PreTrainedModel, image_token: str) -> None:
    """Add `image_token` (special) and a pad token where missing; grow `llm`'s embeddings by the added rows only."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        logger.info(f"The tokenizer has no pad token; padding with its EOS token {tokenizer.eos_token!r}.")
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))


def compose_llava(
    vision: PreTrainedModel,
    llm: PreTrainedModel,
    tokenizer: Any,
    image_processor: Any,
    vision_feature_select_strategy: str | None = None,
    image_token: str = IMAGE_TOKEN,
    projector_hidden_act: str = "gelu",
    vision_feature_layer: int = -2,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A `LlavaForConditionalGeneration` holding `vision`'s and `llm`'s weights exactly, with a fresh projector
    (seeded by the caller's RNG state), and its `LlavaProcessor`.

    `vision_feature_layer` is the `hidden_states` index the projector reads (-2: the second-to-last block's raw
    output, as the authors and LLaVA; -1: the last block's, still without SigLIP's post-norm).

    `vision_feature_select_strategy` defaults to what the tower needs, as `vision_token_layout` says: `"full"` when
    it outputs patch tokens only (SigLIP), `"default"` when it adds one class token (CLIP), which LLaVA drops.
    `image_token` is added to the tokenizer as a special token if missing, and `llm`'s embeddings grow by the added
    rows only (the existing rows are left as they were): both are changed in place. A tokenizer without a pad token pads with its EOS token.
    """
    layout = vision_token_layout(vision.config)  # CLIP: one class token first; SigLIP: patches only
    vision_feature_select_strategy = _check_llava_inputs(vision.config, layout, image_processor,
                                                         vision_feature_select_strategy, vision_feature_layer)
    _add_image_token(tokenizer, llm, image_token)

    image_seq_length = layout.num_tokens - (1 if vision_feature_select_strategy == "default" else 0)
    config = LlavaConfig(
        vision_config=copy.deepcopy(vision.config),
        text_config=copy.deepcopy(llm.config),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
        image_seq_length=image_seq_length,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_hidden_act=projector_hidden_act,
        tie_word_embeddings=llm.config.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    result = model.model.language_model.load_state_dict(llm.get_decoder().state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"The LLM's decoder ({type(llm.get_decoder()).__name__}) does not fit LLaVA's language model "
            f"({type(model.model.language_model).__name__}): missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}."
        )
    model.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    model.generation_config = copy.deepcopy(llm.generation_config)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(llm.dtype)

    image_processor = copy.deepcopy(image_processor)
    # A HIVE checkpoint's image processor remembers HiveProcessor's remote-code entry; a LLaVA folder needs none.
    vars(image_processor).pop("auto_map", None)
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.config.patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy, num_additional_image_tokens=layout.class_tokens,
        image_token=image_token,
    )
    return model, processor


def build_llava(
    vision_name_or_path: str,
    text_name_or_path: str,
    image_processor_name_or_path: str | None = None,
    vision_feature_select_strategy: str | None = None,
    image_token: str = IMAGE_TOKEN,
    vision_kwargs: dict[str, Any] | None = None,
    text_kwargs: dict[str, Any] | None = None,
    vision_feature_layer: int = -2,
    chat_template: str | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """:func:`compose_llava` from checkpoints: a vision encoder (see `hive_hf.modeling_hive.load_vision_tower`) and a
    causal LM with its tokenizer (local folders or Hub ids). The image processor comes from the vision checkpoint
    unless `image_processor_name_or_path` is given; `chat_template` (a Jinja string) replaces the tokenizer's."""
    vision_kwargs, text_kwargs = dict(vision_kwargs or {}), dict(text_kwargs or {})
    vision = load_vision_tower(vision_name_or_path, **vision_kwargs)
    image_processor = AutoImageProcessor.from_pretrained(image_processor_name_or_path or vision_name_or_path)
    llm = AutoModelForCausalLM.from_pretrained(text_name_or_path, **text_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(text_name_or_path, **text_kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return compose_llava(vision, llm, tokenizer, image_processor,
                         vision_feature_select_strategy=vision_feature_select_strategy, image_token=image_token,
                         vision_feature_layer=vision_feature_layer)


# -- training stages --------------------------------------------------------------------------------------------------
# `LlavaForConditionalGeneration` names: `model.vision_tower.*`, `model.multi_modal_projector.*`,
# `model.language_model.*` (peft's LoRA wrappers included), `lm_head.*`.
def apply_vlm_lora(model: LlavaForConditionalGeneration, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> None:
    """LoRA adapters (peft) on the LLM's attention and MLP projections, for a light stage 2."""
    apply_lora(model.model, r=r, alpha=alpha, dropout=dropout)


def merge_vlm_lora(model: LlavaForConditionalGeneration) -> None:
    """Fold the adapters into the LLM's weights: a plain LLaVA model again, ready to save."""
    merge_lora(model.model)


# -- images and chat ---------------------------------------------------------------------------------------------------
def expand_to_square(image: PIL.Image.Image, background: tuple[int, ...]) -> PIL.Image.Image:
    """LLaVA's `expand2square`: the image centred on a square canvas of `background` colour (unchanged if square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _prepare_image(image: PIL.Image.Image, image_processor: Any, image_aspect_ratio: str) -> PIL.Image.Image:
    """`"pad"`: padded to a square of the processor's mean colour (`int(mean * 255)`, as the authors); `"square"`:
    as is (the processor squashes it)."""
    if image_aspect_ratio == "square":
        return image
    return expand_to_square(image, tuple(int(m * 255) for m in image_processor.image_mean))


def _check_aspect_ratio(image_aspect_ratio: str) -> None:
    if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"--image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {image_aspect_ratio!r}.")


def _check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The LLM's tokenizer ({type(tokenizer).__name__}) has no chat template; conversations and benchmark "
            "prompts are rendered with it. Use a chat/instruct LLM or give a template (--chat_template, a Jinja "
            "string or a file holding one)."
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered with the tokenizer's chat template and the character span of each assistant turn in
    it: from the end of the generation prompt before the turn (e.g. `<|im_start|>assistant\\n`) to the end of the
    turn, its end-of-turn marker included (what the model must learn to produce, stopping included)."""
    text = _render(tokenizer, messages)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                "The tokenizer's chat template does not render a conversation as its turns one after another (the "
                f"first {i + 1} turns are not a prefix of the whole), so the assistant turns cannot be told apart; "
                "give another template (--chat_template)."
            )
        spans.append((len(before), len(through)))
    return text, spans


# -- batches ----------------------------------------------------------------------------------------------------------
class ConversationCollator(SkippingCollator):
    """Training batches from conversations (`vqa_data.CONVERSATION_FEATURES`: `image`, `messages`), rendered with the
    tokenizer's chat template, the image token expanded by the processor. Labels are the tokens of the assistant
    turns (their end-of-turn marker included); system and user turns, image tokens and padding are -100. Rows
    without an image are text-only conversations; rows whose image is unreadable are skipped and counted (see
    `SkippingCollator`).

    Args:
        processor: the model's `LlavaProcessor`; its tokenizer must have a chat template.
        image_aspect_ratio: `"pad"` (to a square of the image processor's mean colour, as the authors' fine-tuning)
            or `"square"` (the processor squashes the image).
        max_length: cut longer conversations to this many tokens (the authors' `model_max_length` is 2048); a cut
            inside the image raises.
    """

    def __init__(self, processor: LlavaProcessor, image_aspect_ratio: str = "pad", max_length: int | None = None):
        super().__init__()
        _check_aspect_ratio(image_aspect_ratio)
        _check_chat_template(processor.tokenizer)
        self.processor = processor
        self.image_aspect_ratio = image_aspect_ratio
        self.max_length = max_length

    def usable(self, row: dict[str, Any]) -> tuple[list[dict[str, str]], PIL.Image.Image | None] | None:
        if row.get("image") is None:
            return row["messages"], None
        image = decode_image(row["image"])
        return None if image is None else (row["messages"], image)

    def _labels(self, text: str, spans: list[tuple[int, int]], ids: list[int], offsets: list) -> list[int]:
        """`ids` where a token starts inside an assistant span, else -100. The processor wrote every image token of
        `text` as many; the offsets are in that expanded text, so spans after an image move along."""
        token = self.processor.image_token
        placeholders = text.count(token)
        grow = (ids.count(self.processor.image_token_id) // placeholders - 1) * len(token) if placeholders else 0
        moved = [(s + text[:s].count(token) * grow, e + text[:s].count(token) * grow) for s, e in spans]
        return [i if any(s <= start < e for s, e in moved) else -100 for i, (start, _) in zip(ids, offsets)]

    def collate(self, items: list[tuple[list[dict[str, str]], PIL.Image.Image | None]]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        rendered = [assistant_spans(tokenizer, messages) for messages, _ in items]
        images = [_prepare_image(image, self.processor.image_processor, self.image_aspect_ratio)
                  for _, image in items if image is not None]
        encoded = self.processor(images=images or None, text=[text for text, _ in rendered],
                                 add_special_tokens=False, return_offsets_mapping=True)
        sequences, labels = [], []
        for (text, spans), ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
            ids = list(ids)
            row_labels = self._labels(text, spans, ids, offsets)
            if self.max_length is not None and len(ids) > self.max_length:
                if self.processor.image_token_id in ids[self.max_length:]:
                    raise ValueError(f"A conversation of {len(ids)} tokens would be cut inside its image at "
                                     f"--max_length {self.max_length}; raise --max_length.")
                ids, row_labels = ids[: self.max_length], row_labels[: self.max_length]
            sequences.append(ids)
            labels.append(row_labels)
        length = max(len(s) for s in sequences)
        batch = {
            "input_ids": torch.tensor([s + [tokenizer.pad_token_id] * (length - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences]),
            "labels": torch.tensor([lab + [-100] * (length - len(lab)) for lab in labels]),
        }
        if images:
            batch["pixel_values"] = torch.stack([torch.as_tensor(np.asarray(p)) for p in encoded["pixel_values"]])
        return batch


# -- evaluation -------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate_answers(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    dataset: Any,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    image_aspect_ratio: str = "pad",
    desc: str = "generating answers",
    add_special_tokens: bool = False,
) -> list[str]:
    """One answer per record, as lmms-eval asks and reads it: :func:`vqa_data.user_message` (`<image>\\n`, the question
    and the task's post-prompt) as the user turn of the LLM's chat template, greedy decoding of at most
    `max_new_tokens` (lmms-eval's 16), the text stripped of surrounding whitespace. A text-only record (no image, as
    in ScienceQA-FULL) is asked without one; a record whose image cannot be read gets the empty answer, which every
    metric scores as wrong, so the question set stays the benchmark's.

    The prompt is the chat template's text alone, as in training (`ConversationCollator`); `add_special_tokens=True`
    also adds the tokenizer's own (e.g. a BOS), as lmms-eval's `llava_hf` does. With that, `image_aspect_ratio=
    "square"` and `batch_size=1`, the answers are the ones `llava_hf` generates (`hive_hf.evaluation.lmms`)."""
    _check_aspect_ratio(image_aspect_ratio)
    _check_chat_template(processor.tokenizer)
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    unreadable = 0
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch"):
        rows = dataset[start:start + batch_size]
        records = [dict(zip(rows, values)) for values in zip(*rows.values())]
        images = [None if r["image"] is None else decode_image(r["image"]) for r in records]
        unreadable += sum(r["image"] is not None and image is None for r, image in zip(records, images))
        batch_answers = [""] * len(records)
        with_image = [i for i, image in enumerate(images) if image is not None]
        text_only = [i for i, r in enumerate(records) if r["image"] is None]
        for group in (with_image, text_only):
            if not group:
                continue
            prompts = [_render(processor.tokenizer, [{"role": "user", "content": user_message(
                records[i], processor.image_token)}], add_generation_prompt=True) for i in group]
            pictures = [_prepare_image(images[i], processor.image_processor, image_aspect_ratio) for i in group
                        if images[i] is not None]
            inputs = processor(images=pictures or None, text=prompts, padding=True, padding_side="left",
                               add_special_tokens=add_special_tokens, return_tensors="pt").to(device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(group, texts):
                batch_answers[i] = text.strip()
        answers.extend(batch_answers)
    if unreadable:
        logger.warning(f"{unreadable} of {len(dataset)} images could not be read; their answers count as wrong.")
    return answers


def question_prior_predictions(train: Any, dataset: Any) -> list[str]:
    """A blind baseline: for each question, the answer most often trained on for the same question text (and
    choices), else the most common training answer of its task, else of all. What a model scores without looking at
    the image; a VLM should beat it."""
    by_question: dict[tuple, Counter] = defaultdict(Counter)
    by_task: dict[str, Counter] = defaultdict(Counter)
    for row in train.remove_columns("image"):
        answer = training_answer(row)
        by_question[(row["question"], tuple(row["choices"]))][answer] += 1
        by_task[row["task"]][answer] += 1
    overall = sum(by_task.values(), Counter())
    predictions = []
    for row in dataset.remove_columns("image"):
        counts = by_question.get((row["question"], tuple(row["choices"]))) or by_task.get(row["task"]) or overall
        predictions.append(counts.most_common(1)[0][0])
    return predictions


def blind_baseline_scores(train: Any, dataset: Any, scoring: dict[str, dict[str, Any]] | None = None
                          ) -> dict[str, dict[str, Any]]:
    """`score_predictions` of the blind question-prior baseline (`question_prior_predictions`): what a model that
    never looks at the image scores on `dataset`, trained on the questions of `train`."""
    return score_predictions(dataset, question_prior_predictions(train, dataset), scoring)


def _metric_inputs(task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if task == "mme":
        return {"references": [r["answers"][0] for r in rows], "image_ids": [r["image_id"] for r in rows],
                "categories": [r["category"] for r in rows]}
    if task == "scienceqa":
        return {"references": [r["answer_index"] for r in rows], "choices": [r["choices"] for r in rows]}
    if task == "vqa":
        return {"references": [r["answers"] for r in rows]}
    return {"references": [r["answers"][0] for r in rows]}


def score_predictions(
    dataset: Any, predictions: Sequence[str], scoring: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Score `predictions` (one per record) with each record's task metric (:data:`TASK_METRICS`).

    The metrics score as lmms-eval does by default; `scoring` passes options per task, e.g. `{"scienceqa": {"parsing":
    "lenient"}, "mme": {"parsing": "strict"}, "gqa": {"normalization": "llava"}, "vqa": {"normalization":
    "official"}}`.

    Returns `{task: {"score": headline number, "num_questions": n, ...metric outputs}}` for the tasks present; MME's
    headline is perception + cognition, the others are accuracies in %.
    """
    if len(predictions) != len(dataset):
        raise ValueError(f"Got {len(predictions)} predictions for {len(dataset)} questions.")
    rows_by_task: dict[str, list[int]] = defaultdict(list)
    for i, task in enumerate(dataset["task"]):
        rows_by_task[task].append(i)
    records = dataset.remove_columns("image").to_list()
    results = {}
    for task in TASK_METRICS:
        if task not in rows_by_task:
            continue
        index = rows_by_task[task]
        metric_name, key = TASK_METRICS[task]
        rows = [records[i] for i in index]
        output = load_metric(metric_name).compute(predictions=[predictions[i] for i in index],
                                                  **_metric_inputs(task, rows), **(scoring or {}).get(task, {}))
        results[task] = {"score": float(output[key]), "num_questions": len(index),
                         **{k: v for k, v in output.items() if k != key}}
    return results


def format_results_table(runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A markdown table: one row per run (`{run name: score_predictions output}`), one column per task present, in
    the paper's order (MME, GQA, OK-VQA, ScienceQA)."""
    tasks = [t for t in TASK_TITLES if any(t in results for results in runs.values())]
    rows = [[name, *(f"{results[t]['score']:.2f}" if t in results else "-" for t in tasks)]
            for name, results in runs.items()]
    return markdown_table(["", *(TASK_TITLES[t] for t in tasks)], rows)
