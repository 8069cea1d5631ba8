"""LLaVA-style VLM fine-tuning and evaluation of a vision encoder (HIVE, arXiv 2604.00086, Sec. 4 and Table 2).

The pre-trained encoder feeds a stock `transformers` `LlavaForConditionalGeneration`: its final-layer tokens
(`vision_feature_layer=-1`; SigLIP has no class token, so all of them, `"full"`; CLIP's class token is dropped,
`"default"`) go through a fresh 2-layer MLP projector into any causal LM's input sequence. Training has two stages,
LLaVA's: 1 trains the projector (encoder and LLM frozen), 2 adds the LLM (in full, or LoRA adapters); the encoder is
always frozen. The result is a plain LLaVA checkpoint with a `LlavaProcessor`: it loads with
`AutoModelForImageTextToText` / `AutoProcessor` and no remote code.

Evaluation generates short answers greedily and scores them with each benchmark's own metric (`hive_hf.metrics`),
on data in the layout of :mod:`hive_hf.evaluation.vqa_data`.
"""

from __future__ import annotations

import copy
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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
from ..data.captions import decode_image
from ..metrics import load_metric
from ..modeling_hive import load_vision_tower
from ..training import TrainingStages, apply_lora, merge_lora
from ..training.collator import SkippingCollator
from .vqa_data import DEFAULT_PROMPT_TEMPLATE, TASK_METRICS, build_prompt, training_answer

logger = logging.get_logger(__name__)

__all__ = [
    "IMAGE_TOKEN",
    "TASK_TITLES",
    "VLM_STAGES",
    "VLM_STAGE_COMPONENTS",
    "VLM_STAGE_DEFAULTS",
    "VLMStageHyperparameters",
    "VQACollator",
    "apply_vlm_lora",
    "build_llava",
    "compose_llava",
    "format_results_table",
    "generate_answers",
    "llava_parameter_component",
    "load_vision_tower",
    "merge_vlm_lora",
    "question_prior_predictions",
    "score_predictions",
    "set_vlm_training_stage",
]

IMAGE_TOKEN = "<image>"

# What each VLM stage trains (LLaVA; the paper's Sec. 4): the encoder never.
VLM_STAGE_COMPONENTS: dict[int, frozenset[str]] = {1: frozenset({"projector"}), 2: frozenset({"projector", "llm"})}


@dataclass(frozen=True)
class VLMStageHyperparameters:
    batch_size: int
    epochs: float
    learning_rate: float


# LLaVA-1.5's recipe (pretrain / finetune; warmup ratio 0.03, cosine, no weight decay). LLaVA's LoRA fine-tuning
# uses 2e-4 in stage 2.
VLM_STAGE_DEFAULTS: dict[int, VLMStageHyperparameters] = {
    1: VLMStageHyperparameters(batch_size=256, epochs=1, learning_rate=1e-3),
    2: VLMStageHyperparameters(batch_size=128, epochs=1, learning_rate=2e-5),
}

# Column titles of the results table, in the paper's order (Table 2).
TASK_TITLES: dict[str, str] = {"mme": "MME", "gqa": "GQA", "vqa": "OK-VQA", "scienceqa": "ScienceQA"}


# -- building the model -----------------------------------------------------------------------------------------------
def _extra_tokens(vision: PreTrainedModel) -> tuple[int, int]:
    """(patch tokens, extra tokens such as a class token) the tower outputs for one image of its configured size;
    measured rather than looked up by architecture name."""
    config = vision.config
    size, patch = config.image_size, config.patch_size
    pixels = torch.zeros(1, getattr(config, "num_channels", 3), size, size, dtype=vision.dtype, device=vision.device)
    with torch.no_grad():
        tokens = vision(pixel_values=pixels).last_hidden_state.shape[1]
    patches = (size // patch) ** 2
    return patches, tokens - patches


def _processed_size(image_processor: Any, size: int) -> tuple[int, int]:
    pixels = image_processor(PIL.Image.new("RGB", (size + 7, size + 3)), return_tensors="np")["pixel_values"]
    return tuple(pixels.shape[-2:])


def compose_llava(
    vision: PreTrainedModel,
    llm: PreTrainedModel,
    tokenizer: Any,
    image_processor: Any,
    vision_feature_select_strategy: str | None = None,
    image_token: str = IMAGE_TOKEN,
    projector_hidden_act: str = "gelu",
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A `LlavaForConditionalGeneration` holding `vision`'s and `llm`'s weights exactly, with a fresh projector
    (seeded by the caller's RNG state), and its `LlavaProcessor`.

    `vision_feature_select_strategy` defaults to what the tower needs: `"full"` when it outputs patch tokens only
    (SigLIP), `"default"` when it adds one class token (CLIP), which LLaVA drops. `image_token` is added to the
    tokenizer as a special token if missing, and `llm`'s embeddings grow by the added rows only (the existing rows
    are left as they were): both are changed in place. A tokenizer without a pad token pads with its EOS token.
    """
    patches, extra = _extra_tokens(vision)
    if vision_feature_select_strategy is None:
        if extra not in (0, 1):
            raise ValueError(
                f"The vision tower outputs {extra} tokens besides its {patches} patches; pass "
                "vision_feature_select_strategy ('default' drops the first token, 'full' keeps all)."
            )
        vision_feature_select_strategy = "default" if extra == 1 else "full"
    if vision_feature_select_strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got "
                         f"{vision_feature_select_strategy!r}.")
    if vision_feature_select_strategy == "default" and extra == 0:
        raise ValueError("vision_feature_select_strategy='default' drops a class token, but this tower has none "
                         "(e.g. SigLIP); use 'full'.")
    processed = _processed_size(image_processor, vision.config.image_size)
    if processed != (vision.config.image_size,) * 2:
        raise ValueError(f"The image processor outputs {processed} pixels but the vision tower expects "
                         f"{vision.config.image_size}; pass the tower's own image processor.")

    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        logger.info(f"The tokenizer has no pad token; padding with its EOS token {tokenizer.eos_token!r}.")
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))

    image_seq_length = patches + extra - (1 if vision_feature_select_strategy == "default" else 0)
    config = LlavaConfig(
        vision_config=copy.deepcopy(vision.config),
        text_config=copy.deepcopy(llm.config),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
        image_seq_length=image_seq_length,
        vision_feature_layer=-1,
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
        vision_feature_select_strategy=vision_feature_select_strategy, num_additional_image_tokens=extra,
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
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """:func:`compose_llava` from checkpoints: a vision encoder (see `hive_hf.modeling_hive.load_vision_tower`) and a
    causal LM with its tokenizer (local folders or Hub ids). The image processor comes from the vision checkpoint
    unless `image_processor_name_or_path` is given."""
    vision_kwargs, text_kwargs = dict(vision_kwargs or {}), dict(text_kwargs or {})
    vision = load_vision_tower(vision_name_or_path, **vision_kwargs)
    image_processor = AutoImageProcessor.from_pretrained(image_processor_name_or_path or vision_name_or_path)
    llm = AutoModelForCausalLM.from_pretrained(text_name_or_path, **text_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(text_name_or_path, **text_kwargs)
    return compose_llava(vision, llm, tokenizer, image_processor,
                         vision_feature_select_strategy=vision_feature_select_strategy, image_token=image_token)


# -- training stages --------------------------------------------------------------------------------------------------
# `LlavaForConditionalGeneration` names: `model.vision_tower.*`, `model.multi_modal_projector.*`,
# `model.language_model.*` (peft's LoRA wrappers included), `lm_head.*`.
_LLAVA_VISION = re.compile(r"(^|\.)vision_tower\.")
_LLAVA_PROJECTOR = re.compile(r"(^|\.)multi_modal_projector\.")


def llava_parameter_component(name: str) -> str:
    """Which part of a LLaVA model a parameter belongs to: vision_tower -> vision, multi_modal_projector ->
    projector, the rest (language_model, lm_head) -> llm. The component rule of `VLM_STAGES`."""
    if _LLAVA_VISION.search(name):
        return "vision"
    if _LLAVA_PROJECTOR.search(name):
        return "projector"
    return "llm"


def set_vlm_training_stage(model: LlavaForConditionalGeneration, stage: int) -> dict[str, dict[str, int]]:
    """Make exactly what VLM `stage` trains trainable: 1 the projector, 2 + the LLM (only its LoRA adapters when it
    carries some); the vision encoder never. A stage setter for `HiveStageCallback` / `HiveTrainer(stage_setter=)`.
    Returns `{component: {"trainable": n, "total": n}}` for vision, projector and llm."""
    VLM_STAGES.check_stage(stage)
    components = VLM_STAGE_COMPONENTS[stage]
    has_lora = any("lora_" in name for name, _ in model.named_parameters())
    counts = {c: {"trainable": 0, "total": 0} for c in ("vision", "projector", "llm")}
    for name, param in model.named_parameters():
        component = llava_parameter_component(name)
        trainable = component in components and (component != "llm" or not has_lora or "lora_" in name)
        param.requires_grad_(trainable)
        counts[component]["total"] += param.numel()
        counts[component]["trainable"] += param.numel() if trainable else 0
    return counts


# LLaVA's two stages, the encoder frozen in both (the paper's Sec. 4).
VLM_STAGES = TrainingStages("VLM fine-tuning (the encoder stays frozen)", VLM_STAGE_COMPONENTS,
                            llava_parameter_component, stage_setter=set_vlm_training_stage)


def apply_vlm_lora(model: LlavaForConditionalGeneration, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> None:
    """LoRA adapters (peft) on the LLM's attention and MLP projections, for a light stage 2."""
    apply_lora(model.model, r=r, alpha=alpha, dropout=dropout)


def merge_vlm_lora(model: LlavaForConditionalGeneration) -> None:
    """Fold the adapters into the LLM's weights: a plain LLaVA model again, ready to save."""
    merge_lora(model.model)


# -- batches ----------------------------------------------------------------------------------------------------------
class VQACollator(SkippingCollator):
    """Training batches from VQA records: `<prompt> <answer><eos>` with labels on the answer and EOS only (prompt
    and image tokens -100). Rows whose image is unreadable are skipped and counted (see `SkippingCollator`).

    The answer's tokens are taken in context (the tokens of `prompt + " " + answer` after those of `prompt`), so they
    are the ones a model continuing the prompt would produce.
    """

    def __init__(self, processor: LlavaProcessor, template: str = DEFAULT_PROMPT_TEMPLATE):
        super().__init__()
        self.processor = processor
        self.template = template
        self._warned = False

    def _answer_ids(self, prompt: str, answer: str) -> list[int]:
        tokenizer = self.processor.tokenizer
        prompt_ids = tokenizer(prompt).input_ids
        full_ids = tokenizer(f"{prompt} {answer}").input_ids
        if full_ids[: len(prompt_ids)] == prompt_ids:
            return full_ids[len(prompt_ids):]
        if not self._warned:
            logger.warning("The tokenizer merges the prompt's last token with the answer; tokenizing answers alone.")
            self._warned = True
        return tokenizer(f" {answer}", add_special_tokens=False).input_ids

    def usable(self, row: dict[str, Any]) -> tuple[dict[str, Any], PIL.Image.Image] | None:
        image = decode_image(row["image"])
        return None if image is None else (row, image)

    def collate(self, items: list[tuple[dict[str, Any], PIL.Image.Image]]) -> dict[str, torch.Tensor]:
        prompts = [build_prompt(row, self.template) for row, _ in items]
        encoded = self.processor(images=[image for _, image in items], text=prompts)
        tokenizer = self.processor.tokenizer
        sequences, labels = [], []
        for (row, _), prompt, prompt_ids in zip(items, prompts, encoded["input_ids"]):
            answer_ids = self._answer_ids(prompt, training_answer(row)) + [tokenizer.eos_token_id]
            sequences.append(list(prompt_ids) + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        length = max(len(s) for s in sequences)
        return {
            "input_ids": torch.tensor([s + [tokenizer.pad_token_id] * (length - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences]),
            "labels": torch.tensor([lab + [-100] * (length - len(lab)) for lab in labels]),
            "pixel_values": torch.stack([torch.as_tensor(np.asarray(p)) for p in encoded["pixel_values"]]),
        }


# -- evaluation -------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate_answers(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    dataset: Any,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    batch_size: int = 16,
    max_new_tokens: int = 10,
    desc: str = "generating answers",
) -> list[str]:
    """Greedy short answers, one per record (its first line, stripped). A record whose image cannot be read gets
    the empty answer, which every metric scores as wrong, so the question set stays the benchmark's."""
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    unreadable = 0
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch"):
        rows = dataset[start:start + batch_size]
        images = [decode_image(value) for value in rows["image"]]
        keep = [i for i, image in enumerate(images) if image is not None]
        unreadable += len(images) - len(keep)
        batch_answers = [""] * len(images)
        if keep:
            records = [{k: rows[k][i] for k in ("question", "choices")} for i in keep]
            inputs = processor(
                images=[images[i] for i in keep], text=[build_prompt(r, template) for r in records],
                padding=True, padding_side="left", return_tensors="pt",
            ).to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(keep, texts):
                batch_answers[i] = text.strip().split("\n")[0].strip()
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


def _metric_inputs(task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if task == "mme":
        return {"references": [r["answers"][0] for r in rows], "image_ids": [r["image_id"] for r in rows],
                "categories": [r["category"] for r in rows]}
    if task == "scienceqa":
        return {"references": [r["answer_index"] for r in rows], "choices": [r["choices"] for r in rows]}
    if task == "vqa":
        return {"references": [r["answers"] for r in rows]}
    return {"references": [r["answers"][0] for r in rows]}


def score_predictions(dataset: Any, predictions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Score `predictions` (one per record) with each record's task metric (:data:`TASK_METRICS`).

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
                                                  **_metric_inputs(task, rows))
        results[task] = {"score": float(output[key]), "num_questions": len(index),
                         **{k: v for k, v in output.items() if k != key}}
    return results


def format_results_table(runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A markdown table: one row per run (`{run name: score_predictions output}`), one column per task present, in
    the paper's order (MME, GQA, OK-VQA, ScienceQA)."""
    tasks = [t for t in TASK_TITLES if any(t in results for results in runs.values())]
    header = "| | " + " | ".join(TASK_TITLES[t] for t in tasks) + " |"
    lines = [header, "|---" * (len(tasks) + 1) + "|"]
    for name, results in runs.items():
        cells = [f"{results[t]['score']:.2f}" if t in results else "-" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
