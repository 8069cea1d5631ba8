"""`examples/run_vlm_finetune.py`: fine-tune a LLaVA-style VLM on a vision encoder and evaluate it on VQA
benchmarks (HIVE paper, Table 2). See that script for the commands; this module holds its flags and its steps."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, Trainer, set_seed
from transformers.utils import logging

from ..data import check_source_exists
from ..data.vqa import (
    BENCHMARKS,
    SCIENCEQA_SUBSETS,
    TRAIN_SOURCES,
    check_benchmark_files,
    load_conversations,
    load_vqa_benchmark,
    training_texts,
    vqa_conversations,
)
from ..evaluation.vlm import (
    IMAGE_ASPECT_RATIOS,
    SCORING_OPTIONS,
    ConversationCollator,
    apply_vlm_lora,
    blind_baseline_scores,
    build_llava,
    format_results_table,
    generate_answers,
    merge_vlm_lora,
    score_predictions,
)
from ..release import HubPushCallback
from ..runs.layout import VLM_STAGE_MARKER, RunLayout
from ..runs.recipes import VLM_STAGE_DEFAULTS
from ..runs.records import write_results
from ..runs.stages import VLM_STAGES
from ..tiny_backbones import write_tiny_backbones
from ..training import StagedRun, StagedTrainingArguments
from .parsing import HiveArgumentParser, flags_for, setup_logging, take_hub_token, user_errors

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The vision encoder: a HIVE checkpoint (full or encoder-only) or a stock SigLIP/CLIP "
                          "checkpoint (folder or Hub id)."},
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Causal LM checkpoint with its tokenizer and chat template (folder or Hub id): the paper "
                          "fine-tunes meta-llama/Llama-3.2-1B-Instruct, the authors' scripts Qwen/Qwen2-0.5B-Instruct."},
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
    vision_feature_layer: int = field(
        default=-2,
        metadata={"help": "The encoder's hidden_states index the projector reads (-2: the second-to-last block's raw "
                          "output, as the authors and LLaVA)."},
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "A Jinja chat template (or a file holding one) for an LLM whose tokenizer has none."},
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
                             or self.vision_feature_select_strategy or self.chat_template):
            raise ValueError("--model_name_or_path is a complete LLaVA checkpoint; drop --text_model_name_or_path, "
                             "--tiny_text_backbone, --image_processor_name_or_path, --vision_feature_select_strategy "
                             "and --chat_template.")
        if self.chat_template is not None and self.tiny_text_backbone:
            raise ValueError("--tiny_text_backbone brings its own chat template; drop --chat_template.")
        if self.chat_template is not None and Path(self.chat_template).is_file():
            self.chat_template = Path(self.chat_template).read_text()
        if self.vision_feature_select_strategy not in (None, "default", "full"):
            raise ValueError(f"--vision_feature_select_strategy must be 'default' or 'full', got "
                             f"{self.vision_feature_select_strategy!r}.")


# The parameters of `check_benchmark_files`, in its order; the flags of the training data put `train_` before them.
_BENCHMARK_FILES = ("benchmark", "questions_file", "annotations_file", "image_dir")


@dataclass
class DataArguments:
    train_benchmark: str = field(
        default="shapes",
        metadata={"help": f"Training data, one of {TRAIN_SOURCES}: 'conversations' LLaVA-style JSON (conversations "
                          "of from/value turns) or a datasets source with a messages column; 'shapes' the embedded "
                          "synthetic VQA; 'records' generic JSON/JSONL records or a datasets name; the others the "
                          "benchmarks' own layouts (each question one conversation)."},
    )
    train_questions_file: str | None = field(
        default=None, metadata={"help": "Training conversations or questions: a file or a datasets source."}
    )
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
        default=None,
        metadata={"help": "Benchmark questions (GQA/OK-VQA json, ScienceQA problems.json or lmms-lab parquet, MME "
                          "parquet)."},
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
    image_aspect_ratio: str = field(
        default="pad",
        metadata={"help": f"One of {IMAGE_ASPECT_RATIOS}: pad images to a square of the image processor's mean colour "
                          "(the authors' fine-tuning and evaluation), or let the processor squash them."},
    )
    max_length: int | None = field(
        default=2048, metadata={"help": "Training: cut conversations to this many tokens (the authors' 2048)."}
    )
    max_new_tokens: int = field(
        default=16, metadata={"help": "Evaluation: generated tokens per answer, greedy (lmms-eval's 16)."}
    )
    scienceqa_subset: str = field(
        default="full",
        metadata={"help": f"One of {SCIENCEQA_SUBSETS}: every test problem, text-only ones included (lmms-eval's "
                          "scienceqa, the paper's number), or those with an image (scienceqa_img)."},
    )
    scienceqa_parsing: str = field(
        default="strict",
        metadata={"help": f"One of {SCORING_OPTIONS['scienceqa'][1]}: the option letter as lmms-eval reads it, or "
                          "also '(B)', 'The answer is B.' and the option text."},
    )
    mme_parsing: str = field(
        default="official",
        metadata={"help": f"One of {SCORING_OPTIONS['mme'][1]}: the official tool's yes/no parsing (as lmms-eval), or "
                          "an answer that starts with yes or no."},
    )
    gqa_normalization: str = field(
        default="lmms_eval",
        metadata={"help": f"One of {SCORING_OPTIONS['gqa'][1]}: lmms-eval's (case, all punctuation), LLaVA-1.5's "
                          "(trailing periods, case), or lenient (also articles and spaces)."},
    )
    vqa_normalization: str = field(
        default="lmms_eval",
        metadata={"help": f"One of {SCORING_OPTIONS['vqa'][1]}: OK-VQA answers normalised as lmms-eval does (its "
                          "EvalAI answer processor), or as the official vqaEval.py."},
    )
    blind_baseline: bool = field(
        default=True,
        metadata={"help": "Also score a blind question-prior baseline (the most frequent training answer per "
                          "question), which a model that looks at the image should beat (VQA training data only)."},
    )

    def __post_init__(self):
        for prefix, choices in (("train_", TRAIN_SOURCES), ("", BENCHMARKS)):
            with flags_for(self.flags(prefix)):
                check_benchmark_files(*(getattr(self, prefix + name) for name in _BENCHMARK_FILES), choices=choices)
        choices = {"--image_aspect_ratio": (self.image_aspect_ratio, IMAGE_ASPECT_RATIOS),
                   "--scienceqa_subset": (self.scienceqa_subset, SCIENCEQA_SUBSETS)}
        for task, (option, allowed) in SCORING_OPTIONS.items():
            choices[f"--{task}_{option}"] = (getattr(self, f"{task}_{option}"), allowed)
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{flag} must be one of {allowed}, got {value!r}.")
        if self.max_new_tokens < 1 or (self.max_length is not None and self.max_length < 1):
            raise ValueError(f"--max_new_tokens and --max_length must be positive, got {self.max_new_tokens} and "
                             f"{self.max_length}.")

    @staticmethod
    def flags(prefix: str) -> dict[str, str]:
        """The flags of the benchmark parameters for the training data (`prefix="train_"`) or the evaluation
        (`""`)."""
        return {name: f"--{prefix}{name}" for name in _BENCHMARK_FILES}

    @property
    def scoring(self) -> dict[str, dict[str, str]]:
        """The metrics' options per task, for `score_predictions`."""
        return {task: {option: getattr(self, f"{task}_{option}")} for task, (option, _) in SCORING_OPTIONS.items()}


@dataclass
class VLMTrainingArguments(StagedTrainingArguments):
    """LLaVA's two stages with the paper's and the authors' hyperparameters (`VLM_STAGE_DEFAULTS`: global batch 256
    then 64, lr 1e-3 then 2e-5, one epoch each; warmup 3%, cosine, no weight decay, gradient clipping 1.0)."""

    STAGES = VLM_STAGES
    STAGE_DEFAULTS = VLM_STAGE_DEFAULTS

    warmup_steps: float = field(default=0.03, metadata={"help": "Warmup steps, or a ratio below 1 (LLaVA: 0.03)."})

    def __post_init__(self):
        super().__post_init__()
        if not self.do_train and not self.do_eval:
            raise ValueError("Nothing to do: pass --do_train (stages --stages) and/or --do_eval (--benchmark).")


def parser() -> HiveArgumentParser:
    return HiveArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments), prog=Path(sys.argv[0]).name)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, VLMTrainingArguments]:
    """The three argument groups from flags, or one JSON file followed by flags that override it."""
    return parser().parse(argv)


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
            dataset_source = benchmark in ("records", "conversations", "mme") or (
                benchmark == "scienceqa" and not value.endswith(".json"))
            if name == "questions_file" and dataset_source:  # may also be a `datasets` name (lmms-lab/MME, ...)
                check_source_exists(value, what=f"--{prefix}{name}")
            elif not Path(value).expanduser().exists():
                raise FileNotFoundError(f"--{prefix}{name} {value} does not exist")
    for name in ("model_name_or_path", "vision_model_name_or_path", "text_model_name_or_path"):
        if getattr(model_args, name) is not None:
            check_source_exists(getattr(model_args, name), what=f"--{name}")
            AutoConfig.from_pretrained(getattr(model_args, name))  # fails now, not after the data is loaded


def load_data(data_args: DataArguments, args: VLMTrainingArguments) -> tuple[Dataset | None, Dataset | None]:
    """(training data or None, evaluation questions or None): conversations (`vqa_data.CONVERSATION_FEATURES`) or
    questions (`vqa_data.VQA_FEATURES`) to train on, questions to evaluate on."""
    shapes = {"image_size": data_args.shapes_image_size, "seed": args.seed}
    train = evaluation = None
    if args.do_train and data_args.train_benchmark == "conversations":
        with flags_for({"source": "--train_questions_file", **data_args.flags("train_")}):
            train = load_conversations(data_args.train_questions_file, data_args.train_image_dir,
                                       split=data_args.train_split or "train")
    elif args.do_train:
        with flags_for(data_args.flags("train_")):
            train = load_vqa_benchmark(
                data_args.train_benchmark, data_args.train_questions_file, data_args.train_annotations_file,
                data_args.train_image_dir, split=data_args.train_split or "train",
                num_images=data_args.shapes_train_images, scienceqa_subset=data_args.scienceqa_subset, **shapes,
            )
        if data_args.max_train_samples is not None:
            train = train.select(range(min(data_args.max_train_samples, len(train))))
    if args.do_eval:
        with flags_for(data_args.flags("")):
            evaluation = load_vqa_benchmark(
                data_args.benchmark, data_args.questions_file, data_args.annotations_file, data_args.image_dir,
                split=data_args.eval_split, num_images=data_args.shapes_eval_images,
                scienceqa_subset=data_args.scienceqa_subset, **shapes,
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
                layout.backbones_dir, training_texts(train), hidden_size=model_args.tiny_text_hidden_size,
                num_layers=model_args.tiny_text_layers, seed=args.seed,
                text_pretrain_steps=model_args.tiny_text_pretrain_steps, chat_template=True, lowercase=False,
                show_progress=not args.disable_tqdm,
            )
        set_seed(args.seed)  # the projector's initialisation
        return build_llava(
            model_args.vision_model_name_or_path, text_path,
            image_processor_name_or_path=model_args.image_processor_name_or_path,
            vision_feature_select_strategy=model_args.vision_feature_select_strategy,
            vision_feature_layer=model_args.vision_feature_layer, chat_template=model_args.chat_template,
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
    predictions = generate_answers(model, processor, evaluation, batch_size=args.per_device_eval_batch_size,
                                   max_new_tokens=data_args.max_new_tokens,
                                   image_aspect_ratio=data_args.image_aspect_ratio,
                                   desc=f"{data_args.benchmark}: generating answers")
    results = score_predictions(evaluation, predictions, data_args.scoring)
    runs = {args.run_name or out.name: results}
    metrics = {"eval_samples": len(evaluation), **_flatten(results)}
    if data_args.blind_baseline and train is not None and "question" in train.column_names:
        blind = blind_baseline_scores(train, evaluation, data_args.scoring)
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
    write_results(RunLayout(out).results, f"benchmark: {data_args.benchmark}, model: {model_dir}\n\n{table}",
                  {"runs": runs, "eval_samples": len(evaluation)}, seeds=[args.seed])
    return table


def main(argv: list[str] | None = None) -> None:
    # Mistakes in the flags, config file, paths and data are reported in one line (exit 2) before anything is built
    # or trained; later errors keep their traceback.
    command = parser()
    with user_errors(command.prog, command.flag_names()):
        model_args, data_args, args = command.parse(argv)
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
        collator = partial(ConversationCollator, image_aspect_ratio=data_args.image_aspect_ratio,
                           max_length=data_args.max_length)
        run = StagedRun(
            layout, args, VLM_STAGES, make_collator=collator,
            model_kwargs={"attn_implementation": model_args.attn_implementation},
            apply_lora=apply_vlm_lora, merge_lora=merge_vlm_lora,
            callbacks=[hub] if hub else (), after_save=hub.push_final if hub else None,
        )
        conversations = train if "messages" in train.column_names else vqa_conversations(train)
        summaries = run.run(start, conversations)
        start = layout.stage_dir(args.stages[-1])

    if args.process_index == 0:
        if summaries:
            print(f"\nLLaVA fine-tuning finished\n\n{run.summary_table(summaries)}\n")
        if args.do_eval:
            table = run_evaluation(start, data_args, args, train, evaluation, layout.root)
            print(f"\n{data_args.benchmark} ({len(evaluation)} questions), model {start}:\n{table}")
            print(f"  predictions: {layout.root / 'predictions.jsonl'}, scores: {layout.root / 'eval_results.json'}")


if __name__ == "__main__":
    main()
