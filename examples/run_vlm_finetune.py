#!/usr/bin/env python
"""Fine-tune a LLaVA-style VLM on top of a vision encoder and evaluate it on VQA benchmarks (HIVE paper, Table 2).

The encoder (a HIVE checkpoint, an encoder-only HIVE release, or a stock SigLIP/CLIP checkpoint) feeds a stock
`LlavaForConditionalGeneration` through a fresh projector: its final-layer tokens are put into the LLM's input.
Stage 1 trains the projector, stage 2 the LLM as well (in full, or LoRA with --lora_r); the encoder stays frozen.
Each stage writes `<output_dir>/stage<k>` (a plain LLaVA checkpoint + `LlavaProcessor`, loadable with
`AutoModelForImageTextToText` and no remote code); the last one is then evaluated with greedy short answers and
each benchmark's own metric, printing a table and writing `eval_results.json`, `predictions.jsonl`, `results.md`.
Run the same command again after a crash: finished stages are skipped, the interrupted one resumes.

    # the embedded demo: VQA on the synthetic shapes (all four scoring styles), a tiny LLM built offline
    python examples/run_vlm_finetune.py --vision_model_name_or_path /tmp/vlm_run/stage3 --tiny_text_backbone \\
        --do_train --do_eval --output_dir /tmp/vlm_hive

    # real backbones, LLaVA-style training records, and GQA testdev-balanced as the benchmark
    python examples/run_vlm_finetune.py \\
        --vision_model_name_or_path runs/hive-siglip/stage3 --text_model_name_or_path meta-llama/Llama-3.2-1B-Instruct \\
        --train_benchmark records --train_questions_file llava_vqa.jsonl --train_image_dir /data/coco \\
        --benchmark gqa --questions_file testdev_balanced_questions.json --image_dir /data/gqa/images \\
        --do_train --do_eval --per_device_train_batch_size 16 --bf16 --output_dir runs/vlm-hive

    # evaluate an existing LLaVA checkpoint only
    python examples/run_vlm_finetune.py --model_name_or_path runs/vlm-hive/stage2 --do_eval \\
        --benchmark mme --questions_file /data/MME/data --output_dir runs/vlm-hive/mme
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    HfArgumentParser,
    Trainer,
    set_seed,
)
from transformers.utils import logging

from hive_hf.data import check_source_exists
from hive_hf.evaluation.vlm import (
    IMAGE_TOKEN,
    VLM_STAGE_DEFAULTS,
    VLM_STAGES,
    VQACollator,
    apply_vlm_lora,
    build_llava,
    format_results_table,
    generate_answers,
    merge_vlm_lora,
    question_prior_predictions,
    score_predictions,
)
from hive_hf.evaluation.vqa_data import (
    BENCHMARKS,
    DEFAULT_PROMPT_TEMPLATE,
    load_vqa_benchmark,
    training_texts,
)
from hive_hf.tiny_backbones import write_tiny_backbones
from hive_hf.training.arguments import (
    StagedTrainingArguments,
    parse_json_or_flags,
    setup_logging,
    take_hub_token,
    user_errors,
)
from hive_hf.training.hub import HubPushCallback
from hive_hf.training.staged_run import VLM_STAGE_MARKER, RunLayout, StagedRun

logger = logging.get_logger("hive_hf.run_vlm_finetune")


@dataclass
class ModelArguments:
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The vision encoder: a HIVE checkpoint (full or encoder-only) or a stock SigLIP/CLIP "
                          "checkpoint (folder or Hub id)."},
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal LM checkpoint with its tokenizer (folder or Hub id)."}
    )
    tiny_text_backbone: bool = field(
        default=False,
        metadata={"help": "Instead of --text_model_name_or_path: write a tiny Llama with a word tokenizer built from "
                          "the training prompts and answers (offline demo)."},
    )
    tiny_text_hidden_size: int = field(default=64, metadata={"help": "--tiny_text_backbone: hidden size."})
    tiny_text_layers: int = field(default=4, metadata={"help": "--tiny_text_backbone: decoder layers."})
    tiny_text_pretrain_steps: int = field(
        default=300, metadata={"help": "--tiny_text_backbone: text-only steps that make the tiny LLM 'pretrained'."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing LLaVA checkpoint to continue from or to evaluate."}
    )
    image_processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Image processor, if not the vision checkpoint's own."}
    )
    vision_feature_select_strategy: str | None = field(
        default=None,
        metadata={"help": "'full' keeps every final-layer token (SigLIP), 'default' drops the class token (CLIP); "
                          "default: what the tower needs."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})

    def __post_init__(self):
        composed = self.vision_model_name_or_path is not None
        text_sources = sum([self.text_model_name_or_path is not None, self.tiny_text_backbone])
        if composed == (self.model_name_or_path is not None):
            raise ValueError("Give exactly one model source: --vision_model_name_or_path (with "
                             "--text_model_name_or_path or --tiny_text_backbone), or --model_name_or_path (a LLaVA "
                             "checkpoint).")
        if composed and text_sources != 1:
            raise ValueError("--vision_model_name_or_path needs exactly one of --text_model_name_or_path and "
                             "--tiny_text_backbone.")
        if not composed and (text_sources or self.image_processor_name_or_path
                             or self.vision_feature_select_strategy):
            raise ValueError("--model_name_or_path is a complete LLaVA checkpoint; drop --text_model_name_or_path, "
                             "--tiny_text_backbone, --image_processor_name_or_path and "
                             "--vision_feature_select_strategy.")
        if self.vision_feature_select_strategy not in (None, "default", "full"):
            raise ValueError(f"--vision_feature_select_strategy must be 'default' or 'full', got "
                             f"{self.vision_feature_select_strategy!r}.")


@dataclass
class DataArguments:
    train_benchmark: str = field(
        default="shapes",
        metadata={"help": f"Training data, one of {BENCHMARKS}: 'shapes' is the embedded synthetic VQA, 'records' "
                          "generic JSON/JSONL records or a datasets name, the others the benchmarks' own layouts."},
    )
    train_questions_file: str | None = field(default=None, metadata={"help": "Training questions file or source."})
    train_annotations_file: str | None = field(default=None, metadata={"help": "OK-VQA-style training annotations."})
    train_image_dir: str | None = field(default=None, metadata={"help": "Folder holding the training images."})
    train_split: str | None = field(default=None, metadata={"help": "Split to train on (shapes: 'train')."})
    benchmark: str = field(
        default="shapes",
        metadata={"help": f"Evaluation benchmark, one of {BENCHMARKS}: gqa (questions json keyed by id + images), "
                          "okvqa (questions + annotations json + COCO images), scienceqa (problems.json + images), "
                          "mme (lmms-lab/MME parquet files or folder), records, or shapes (embedded)."},
    )
    questions_file: str | None = field(
        default=None, metadata={"help": "Benchmark questions (GQA/OK-VQA json, ScienceQA problems.json, MME parquet)."}
    )
    annotations_file: str | None = field(default=None, metadata={"help": "OK-VQA annotations json."})
    image_dir: str | None = field(default=None, metadata={"help": "Folder holding the benchmark images."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Benchmark split (ScienceQA: 'test'; shapes: 'validation')."}
    )
    shapes_train_images: int = field(default=1000, metadata={"help": "shapes: training pictures (5 questions each)."})
    shapes_eval_images: int = field(default=200, metadata={"help": "shapes: evaluation pictures (5 questions each)."})
    shapes_image_size: int = field(default=32, metadata={"help": "shapes: picture side in pixels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many questions."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate at most this many questions."})
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Chat-free prompt with one {question} and one <image>; the answer follows it."},
    )
    max_new_tokens: int = field(default=8, metadata={"help": "Evaluation: generated tokens per answer (greedy)."})
    blind_baseline: bool = field(
        default=True,
        metadata={"help": "Also score a blind question-prior baseline (the most frequent training answer per "
                          "question), which a model that looks at the image should beat."},
    )

    def __post_init__(self):
        for prefix in ("train_", ""):
            name = getattr(self, f"{prefix}benchmark")
            flag = f"--{prefix}benchmark {name}"
            if name not in BENCHMARKS:
                raise ValueError(f"--{prefix}benchmark must be one of {BENCHMARKS}, got {name!r}.")
            if name != "shapes" and getattr(self, f"{prefix}questions_file") is None:
                raise ValueError(f"{flag} reads --{prefix}questions_file; give its path.")
            if name in ("gqa", "okvqa", "scienceqa") and getattr(self, f"{prefix}image_dir") is None:
                raise ValueError(f"{flag} needs --{prefix}image_dir.")
            if name == "okvqa" and getattr(self, f"{prefix}annotations_file") is None:
                raise ValueError(f"{flag} needs --{prefix}annotations_file.")
        if self.prompt_template.count("{question}") != 1 or self.prompt_template.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"--prompt_template needs exactly one {{question}} and one {IMAGE_TOKEN}, got "
                             f"{self.prompt_template!r}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")


@dataclass
class VLMTrainingArguments(StagedTrainingArguments):
    """LLaVA's two stages (`VLM_STAGE_DEFAULTS`) with its warmup ratio."""

    STAGES = VLM_STAGES
    STAGE_DEFAULTS = VLM_STAGE_DEFAULTS

    warmup_steps: float = field(default=0.03, metadata={"help": "Warmup steps, or a ratio below 1 (LLaVA: 0.03)."})

    def __post_init__(self):
        super().__post_init__()
        if not self.do_train and not self.do_eval:
            raise ValueError("Nothing to do: pass --do_train (stages --stages) and/or --do_eval (--benchmark).")


def parse_args() -> tuple[ModelArguments, DataArguments, VLMTrainingArguments]:
    return parse_json_or_flags(HfArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments)))


def check_combinations(model_args: ModelArguments, data_args: DataArguments, args: VLMTrainingArguments) -> None:
    """Reject what cannot work before any data is read, LLM pre-trained or model built: flags that do not go together,
    files that are not there, checkpoints without a config."""
    if model_args.tiny_text_backbone and not args.do_train:
        raise ValueError("--tiny_text_backbone builds its vocabulary from the training data; pass --do_train.")
    for prefix, used in (("train_", args.do_train), ("", args.do_eval)):
        benchmark = getattr(data_args, f"{prefix}benchmark")
        for name in ("questions_file", "annotations_file", "image_dir"):
            value = getattr(data_args, prefix + name)
            if not used or benchmark == "shapes" or value is None:
                continue
            if benchmark == "records" and name == "questions_file":
                check_source_exists(value, what=f"--{prefix}{name}")  # records may also be a `datasets` name
            elif not Path(value).expanduser().exists():
                raise FileNotFoundError(f"--{prefix}{name} {value} does not exist")
    for name in ("model_name_or_path", "vision_model_name_or_path", "text_model_name_or_path"):
        if getattr(model_args, name) is not None:
            check_source_exists(getattr(model_args, name), what=f"--{name}")
            AutoConfig.from_pretrained(getattr(model_args, name))  # fails now, not after the data is loaded


def load_data(data_args: DataArguments, args: VLMTrainingArguments) -> tuple[Dataset | None, Dataset | None]:
    """(training questions or None, evaluation questions or None), in the `vqa_data.VQA_FEATURES` layout."""
    shapes = {"image_size": data_args.shapes_image_size, "seed": args.seed}
    train = evaluation = None
    if args.do_train:
        train = load_vqa_benchmark(
            data_args.train_benchmark, data_args.train_questions_file, data_args.train_annotations_file,
            data_args.train_image_dir, split=data_args.train_split or "train",
            num_images=data_args.shapes_train_images, **shapes,
        )
        if data_args.max_train_samples is not None:
            train = train.select(range(min(data_args.max_train_samples, len(train))))
    if args.do_eval:
        evaluation = load_vqa_benchmark(
            data_args.benchmark, data_args.questions_file, data_args.annotations_file, data_args.image_dir,
            split=data_args.eval_split, num_images=data_args.shapes_eval_images, **shapes,
        )
        if data_args.max_eval_samples is not None:
            evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation


def build_start(model_args: ModelArguments, data_args: DataArguments, args: VLMTrainingArguments,
                train: Dataset | None, layout: RunLayout) -> Path:
    """The composed LLaVA model before stage 1, saved once to `<output_dir>/init` so a restart starts identically."""
    if model_args.model_name_or_path:
        return Path(model_args.model_name_or_path)

    def build():
        text_path = model_args.text_model_name_or_path
        if model_args.tiny_text_backbone:  # with --do_train (check_combinations)
            _, text_path = write_tiny_backbones(
                layout.backbones_dir, training_texts(train, data_args.prompt_template),
                hidden_size=model_args.tiny_text_hidden_size, num_layers=model_args.tiny_text_layers, seed=args.seed,
                text_pretrain_steps=model_args.tiny_text_pretrain_steps,
            )
        set_seed(args.seed)  # the projector's initialisation
        return build_llava(
            model_args.vision_model_name_or_path, text_path,
            image_processor_name_or_path=model_args.image_processor_name_or_path,
            vision_feature_select_strategy=model_args.vision_feature_select_strategy,
        )

    return layout.write_init(build)


def _flatten(results: dict[str, dict], prefix: str = "") -> dict[str, float]:
    """`score_predictions` output as flat numbers for `log_metrics`: `<prefix><task>_<key>`."""
    return {f"{prefix}{task}_{key}": value for task, values in results.items() for key, value in values.items()
            if isinstance(value, (int, float))}


def run_evaluation(model_dir: Path, data_args: DataArguments, args: VLMTrainingArguments, train: Dataset | None,
                   evaluation: Dataset, out: Path) -> str:
    # Plain transformers: what a user of the released folder runs.
    dtype = {"dtype": torch.bfloat16} if args.bf16 else {}
    model = AutoModelForImageTextToText.from_pretrained(model_dir, **dtype)
    processor = AutoProcessor.from_pretrained(model_dir)
    model.to(args.device)
    predictions = generate_answers(model, processor, evaluation, data_args.prompt_template,
                                   batch_size=args.per_device_eval_batch_size, max_new_tokens=data_args.max_new_tokens,
                                   desc=f"{data_args.benchmark}: generating answers")
    results = score_predictions(evaluation, predictions)
    runs = {args.run_name or out.name: results}
    metrics = {"eval_samples": len(evaluation), **_flatten(results)}
    if data_args.blind_baseline and train is not None:
        blind = score_predictions(evaluation, question_prior_predictions(train, evaluation))
        runs["blind question prior"] = blind
        metrics.update(_flatten(blind, prefix="blind_"))
    table = format_results_table(runs)

    # For log/save_metrics and save_state; it pushes nothing (with push_to_hub it would create a repository).
    reporter = Trainer(model=model, args=dataclasses.replace(args, push_to_hub=False), processing_class=processor)
    reporter.log_metrics("eval", metrics)
    reporter.save_metrics("eval", metrics)
    reporter.save_state()
    records = evaluation.remove_columns("image").to_list()
    with open(out / "predictions.jsonl", "w") as handle:
        for record, prediction in zip(records, predictions):
            handle.write(json.dumps({**record, "prediction": prediction}) + "\n")
    (out / "results.md").write_text(f"benchmark: {data_args.benchmark}, model: {model_dir}\n\n{table}\n")
    return table


def main() -> None:
    # Mistakes in the flags, config file, paths and data are reported in one line (exit 2) before anything is built
    # or trained; later errors keep their traceback.
    with user_errors():
        model_args, data_args, args = parse_args()
        hub_token = take_hub_token(args)  # kept in memory: the Trainer pickles its arguments into every checkpoint
        set_seed(args.seed)
        setup_logging(args.should_log)
        check_combinations(model_args, data_args, args)
        train, evaluation = load_data(data_args, args)

    layout = RunLayout(args.output_dir, marker=VLM_STAGE_MARKER)
    layout.root.mkdir(parents=True, exist_ok=True)
    # once for the whole run, nodes included: every node reads the shared --output_dir
    with args.main_process_first(local=False, desc="building the starting model"):
        start = build_start(model_args, data_args, args, train, layout)

    summaries = {}
    if args.do_train:
        hub = HubPushCallback(token=hub_token) if args.push_to_hub else None  # without pickles: see its docstring
        run = StagedRun(
            layout, args, VLM_STAGES, make_collator=partial(VQACollator, template=data_args.prompt_template),
            model_kwargs={"attn_implementation": model_args.attn_implementation},
            apply_lora=apply_vlm_lora, merge_lora=merge_vlm_lora,
            callbacks=[hub] if hub else (), after_save=hub.push_final if hub else None,
        )
        summaries = run.run(start, train)
        start = layout.stage_dir(args.stages[-1])

    if args.process_index == 0:
        if summaries:
            print("\nLLaVA fine-tuning finished")
            print("\n".join(run.summary(summaries)))
        if args.do_eval:
            table = run_evaluation(start, data_args, args, train, evaluation, layout.root)
            print(f"\n{data_args.benchmark} ({len(evaluation)} questions), model {start}:\n{table}")
            print(f"  predictions: {layout.root / 'predictions.jsonl'}, scores: {layout.root / 'eval_results.json'}")


if __name__ == "__main__":
    main()
