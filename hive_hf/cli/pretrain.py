"""`examples/run_pretrain.py`: pre-train a vision encoder the HIVE way: three stages, each a `Trainer` run with its
own optimizer and schedule.

Stage 1 trains the connector, stage 2 adds the LLM (in full, or LoRA with --lora_r), stage 3 adds the vision
encoder. Each stage starts from the previous stage's weights and writes its own folder (`<output_dir>/stage<k>`:
checkpoint + processor, metrics, loss_curve.png). Run the same command again after a crash: finished stages are
skipped and the interrupted one resumes from its last checkpoint.

    # the demo: tiny backbones on the embedded synthetic shapes, a few minutes on CPU
    python examples/run_pretrain.py examples/configs/demo.json

    # real backbones and data (flags or a JSON file; flags after a JSON file override it)
    python examples/run_pretrain.py \
        --vision_model_name_or_path google/siglip-large-patch16-384 \
        --text_model_name_or_path facebook/MobileLLM-350M --text_model_type llama \
        --dataset /data/cc595k --image_column image --caption_column caption \
        --per_device_train_batch_size 32 --bf16 --output_dir runs/hive-siglip

    # the paper's recipe, or the authors' released one (see the README for what differs)
    python examples/run_pretrain.py examples/configs/paper.json --dataset /data/cc595k
    python examples/run_pretrain.py examples/configs/authors_florence.json --dataset /data/cc3m_florence

    # several processes (CPU: gloo)
    torchrun --nproc_per_node=2 examples/run_pretrain.py examples/configs/demo.json --use_cpu True
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from transformers import AutoConfig, AutoProcessor, AutoTokenizer, set_seed
from transformers.utils import logging

from ..compat import AutoImageProcessor, checkpointing_enabled, checkpointing_kwargs
from ..configuration_hive import HiveConfig
from ..data import check_source_exists, decode_image, load_caption_dataset
from ..modeling_hive import HiveForConditionalGeneration, causal_lm_config_as
from ..processing_hive import HiveProcessor
from ..release import HiveHubCallback
from ..runs.layout import RunLayout
from ..runs.recipes import STAGE_RECIPES, StageHyperparameters
from ..runs.records import write_results
from ..runs.stages import HIVE_STAGES
from ..tiny_backbones import tiny_configs, write_tiny_backbones
from ..training import HiveCaptionCollator, StagedRun, StagedTrainingArguments
from .options import config_options
from .parsing import HiveArgumentParser, setup_logging, take_hub_token, user_errors

logger = logging.get_logger("hive_hf.run_pretrain")

@dataclass
class ModelSources:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing HIVE checkpoint (folder or Hub id) to continue from."}
    )
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Vision tower checkpoint (SigLIP, CLIP; folder or Hub id)."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Llama-family causal LM checkpoint (folder or Hub id), with its tokenizer."}
    )
    text_model_type: str | None = field(
        default=None,
        metadata={"help": "Load the LM as this architecture (e.g. llama) whatever its config names: MobileLLM's Hub "
                          "checkpoints say model_type 'mobilellm' with custom code."},
    )
    tiny_backbones: bool = field(
        default=False,
        metadata={"help": "Write tiny SigLIP/Llama backbones and a word tokenizer built from the captions (offline)."},
    )
    tiny_text_pretrain_steps: int = field(
        default=300, metadata={"help": "With --tiny_backbones: text-only steps that make the tiny LLM 'pretrained'."}
    )
    tiny_vision_pretrain_steps: int = field(
        default=300, metadata={"help": "With --tiny_backbones: SigLIP-style image-caption steps for the tiny tower."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})


def _check_model_arguments(self: ModelArguments) -> None:
    pair = self.vision_model_name_or_path is not None or self.text_model_name_or_path is not None
    sources = sum([self.model_name_or_path is not None, pair, self.tiny_backbones])
    if sources != 1:
        raise ValueError(
            "Give exactly one model source: --model_name_or_path (a HIVE checkpoint), or "
            "--vision_model_name_or_path with --text_model_name_or_path, or --tiny_backbones."
        )
    if pair and (self.vision_model_name_or_path is None or self.text_model_name_or_path is None):
        raise ValueError("--vision_model_name_or_path and --text_model_name_or_path go together; give both.")
    self.check_choices()
    for option in self.joint_options_off():  # a config file written for joint (the demo's) trains the others too
        logger.warning(f"--{option} applies to --fusion joint only; ignored for --fusion {self.fusion}")


# Where the model comes from, then its wiring: `HiveConfig`'s own fields, defaults and documentation.
ModelArguments = config_options("ModelArguments", bases=(ModelSources,), post_init=_check_model_arguments)


@dataclass
class DataArguments:
    dataset: str = field(
        default="synthetic",
        metadata={"help": "'synthetic' (embedded captioned shapes), an imagefolder with metadata.jsonl/csv, a folder "
                          "or glob of webdataset .tar shards, or any `datasets.load_dataset` name."},
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column holding the captions."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs --stage_max_steps)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many rows (the synthetic set's size; default 2000)."}
    )
    max_caption_length: int = field(default=77, metadata={"help": "Caption tokens kept (the paper's 77)."})
    prompt: str | None = field(default=None, metadata={"help": "Text before every caption, left out of the loss."})

    def __post_init__(self):
        for name in ("max_train_samples", "max_caption_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")


@dataclass
class HivePretrainingArguments(StagedTrainingArguments):
    """The three stages with a named recipe of per-stage hyperparameters (`STAGE_RECIPES`: the paper's table or the
    authors' released script), per-stage clipping and warmup, and per-component learning rates."""

    STAGES = HIVE_STAGES

    recipe: str = field(
        default="paper",
        metadata={"help": f"Per-stage hyperparameters, one of {sorted(STAGE_RECIPES)} (hive_hf.runs.recipes); "
                          "the --stage_* flags override its values. authors_florence also sets per stage the lr "
                          "schedule, weight decay, Adam beta2 and seed, over --lr_scheduler_type and friends."},
    )
    stage_max_grad_norms: list[float] | None = field(
        default=None, metadata={"help": "Gradient clipping per stage (default: the recipe's)."}
    )
    stage_warmup_steps: list[float] | None = field(
        default=None, metadata={"help": "Linear warmup per stage: steps, or a fraction of the steps when below 1 "
                                        "(default: the recipe's)."}
    )
    vision_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for the vision encoder."})
    projector_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for the projectors."})
    fusion_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for new cross-attention."})
    llm_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for the LLM."})
    results_file: str | None = field(
        default=None,
        metadata={"help": "Where the run's summary table goes (with its command, seed, threads and versions, and a "
                          ".json beside it); default <output_dir>/results.md."},
    )

    def __post_init__(self):
        if self.recipe not in STAGE_RECIPES:
            raise ValueError(f"--recipe must be one of {sorted(STAGE_RECIPES)}, got {self.recipe!r}.")
        super().__post_init__()

    @property
    def STAGE_DEFAULTS(self) -> dict[int, StageHyperparameters]:  # noqa: N802 (the base class's per-stage defaults)
        return STAGE_RECIPES[self.recipe]

    def stage_settings(self, stage: int) -> dict:
        """What the recipe sets beyond the per-stage flags: schedule, weight decay, Adam beta2, seed."""
        return self.STAGE_DEFAULTS[stage].training_arguments()

    @property
    def lr_multipliers(self) -> dict[str, float]:
        return {"vision": self.vision_lr_scale, "projector": self.projector_lr_scale,
                "fusion": self.fusion_lr_scale, "llm": self.llm_lr_scale}


def parser() -> HiveArgumentParser:
    return HiveArgumentParser((ModelArguments, DataArguments, HivePretrainingArguments), prog=_prog())


def _prog() -> str:
    return Path(sys.argv[0]).name


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, HivePretrainingArguments]:
    """The three argument groups from flags, or one JSON file followed by flags that override it."""
    return parser().parse(argv)


def check_combinations(model_args: ModelArguments, data_args: DataArguments, args: HivePretrainingArguments) -> None:
    """Reject what cannot work before any download or training starts."""
    if data_args.streaming:
        missing = [s for s in args.stages if args.stage_max_steps[s - 1] <= 0]
        if missing:
            raise ValueError(
                f"--streaming has no length, so --stage_max_steps must be positive for stages {missing} "
                f"(got {args.stage_max_steps})."
            )
    if model_args.model_name_or_path and (model_args.vision_feature_layers or model_args.cross_attention_layers):
        raise ValueError("--vision_feature_layers/--cross_attention_layers come from --model_name_or_path's config.")
    if checkpointing_enabled(args) and checkpointing_kwargs(args).get("use_reentrant"):
        raise ValueError("HIVE needs non-reentrant checkpointing (frozen inputs); drop use_reentrant=True.")


def hive_config_kwargs(model_args: ModelArguments) -> dict:
    """The `HiveConfig` fields the flags set; the wiring lists only when given (else the paper's rule)."""
    return model_args.config_kwargs()


def check_wiring(model_args: ModelArguments) -> None:
    """Build the run's `HiveConfig` from the backbones' configs alone, so that a wiring they cannot hold (a tapped
    layer beyond the encoder's depth, more taps than LLM layers) fails before any weights are downloaded or tiny
    backbones pre-trained."""
    for name in ("model_name_or_path", "vision_model_name_or_path", "text_model_name_or_path"):
        if getattr(model_args, name) is not None:
            check_source_exists(getattr(model_args, name), what=f"--{name}")
    if model_args.model_name_or_path:
        HiveConfig.from_pretrained(model_args.model_name_or_path)
        return
    if model_args.tiny_backbones:
        vision, text = tiny_configs()  # what write_tiny_backbones builds, its vocabulary aside
    else:
        vision = AutoConfig.from_pretrained(model_args.vision_model_name_or_path)
        if model_args.text_model_type:
            text, _ = causal_lm_config_as(model_args.text_model_name_or_path, model_args.text_model_type)
        else:
            text = AutoConfig.from_pretrained(model_args.text_model_name_or_path)
    HiveConfig(vision_config=vision, text_config=text, **hive_config_kwargs(model_args))


def build_start(model_args: ModelArguments, data_args: DataArguments, args: HivePretrainingArguments, train_data,
                layout: RunLayout) -> Path:
    """The stage-1 starting point, saved once to `<output_dir>/init` so that a restarted run starts identically."""
    def build():
        if model_args.model_name_or_path:
            model = HiveForConditionalGeneration.from_pretrained(model_args.model_name_or_path)
            return model, AutoProcessor.from_pretrained(model_args.model_name_or_path)
        if model_args.tiny_backbones:
            rows = [(decode_image(r["image"]), r["caption"]) for r in _take(train_data, 5000)]  # renamed columns
            rows = [(image, caption) for image, caption in rows if image is not None]
            vision_path, text_path = write_tiny_backbones(
                layout.backbones_dir, [c for _, c in rows], images=[i for i, _ in rows], seed=args.seed,
                text_pretrain_steps=model_args.tiny_text_pretrain_steps,
                vision_pretrain_steps=model_args.tiny_vision_pretrain_steps, show_progress=not args.disable_tqdm,
            )
        else:
            vision_path, text_path = model_args.vision_model_name_or_path, model_args.text_model_name_or_path
        model = HiveForConditionalGeneration.from_vision_text_pretrained(
            vision_path, text_path, text_model_type=model_args.text_model_type, **hive_config_kwargs(model_args)
        )
        processor = HiveProcessor.for_model_config(
            model.config, AutoImageProcessor.from_pretrained(vision_path), AutoTokenizer.from_pretrained(text_path),
            max_length=data_args.max_caption_length,
        )
        return model, processor

    return layout.write_init(build)


def _take(dataset, n: int):
    for i, row in enumerate(dataset):
        if i >= n:
            return
        yield row


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    # A mistake in the flags, a config file, the backbones' wiring or the data is reported in one line (exit 2) before
    # anything is downloaded or trained; later errors keep their traceback.
    command = parser()
    with user_errors(command.prog, command.flag_names()):
        model_args, data_args, args = command.parse(argv)
        hub_token = take_hub_token(args)  # kept in memory: the Trainer pickles its arguments into every checkpoint
        check_combinations(model_args, data_args, args)
        setup_logging(args.should_log)
        set_seed(args.seed)
        check_wiring(model_args)
        train_data = load_caption_dataset(
            data_args.dataset, image_column=data_args.image_column, caption_column=data_args.caption_column,
            split=data_args.train_split, streaming=data_args.streaming, max_samples=data_args.max_train_samples,
            seed=args.seed,
        )
    layout = RunLayout(args.output_dir)
    # once for the whole run, nodes included: every node reads the shared --output_dir
    with args.main_process_first(local=False, desc="building the starting model"):
        start = build_start(model_args, data_args, args, train_data, layout)
        if args.process_index == 0:  # what was run, readable without unpickling training_args.bin (no tokens)
            layout.write_run_args(model=model_args, data=data_args, stages=args.stage_settings_record())

    # Pushes with the model code and the HIVE card, and without pickles (the Trainer's own pushes are off)
    hub = HiveHubCallback(run_dir=layout.root, token=hub_token) if args.push_to_hub else None
    run = StagedRun(
        layout, args, HIVE_STAGES,
        make_collator=partial(HiveCaptionCollator, prompt=data_args.prompt, max_length=data_args.max_caption_length),
        model_kwargs={"attn_implementation": model_args.attn_implementation}, lr_multipliers=args.lr_multipliers,
        callbacks=[hub] if hub else (),
        after_save=hub.push_final if hub else None,  # each stage's end-of-training push
    )
    summaries = run.run(start, train_data)

    if args.process_index == 0:
        wall = time.time() - started
        table = run.summary_table(summaries) + f"\n\nThe whole command, backbone set-up included: {wall:.0f} s."
        write_results(args.results_file or layout.results, table, {"stages": summaries, "wall_seconds": wall},
                      seeds=[args.seed])
        print(f"\nHIVE pre-training finished\n\n{table}\n")
        print(f"  results: {args.results_file or layout.results}")
        print(f"  loss curves: {layout.loss_curves}")
        print(f"  final model: {layout.stage_dir(args.stages[-1])} (AutoModel.from_pretrained(..., "
              "trust_remote_code=True) gives the encoder)")


if __name__ == "__main__":
    main()
