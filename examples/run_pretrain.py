#!/usr/bin/env python
"""Pre-train a vision encoder the HIVE way: three stages, each a `Trainer` run with its own optimizer and schedule.

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

import dataclasses
import json
import logging as pylogging
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging

from hive_hf import HiveForConditionalGeneration, HiveProcessor
from hive_hf.analysis import plot_loss_curves
from hive_hf.backbones import write_tiny_backbones
from hive_hf.compat import AutoImageProcessor
from hive_hf.configuration_hive import (
    FUSION_MODES,
    IMAGE_KV_MODES,
    IMAGE_ROPE_MODES,
    LLM_TRAIN_SCOPES,
    PROJECTOR_TYPES,
)
from hive_hf.data import decode_image, load_caption_dataset
from hive_hf.release import HiveHubCallback
from hive_hf.training import (
    STAGE_RECIPES,
    HiveCaptionCollator,
    HiveTrainer,
    StageHyperparameters,
    apply_lora,
    last_complete_checkpoint,
    merge_lora,
)
from hive_hf.training.arguments import parse_json_or_flags, stage_training_args

logger = logging.get_logger("hive_hf.run_pretrain")
STAGE_MARKER = "hive_stage.json"

# Joint-fusion options and their off values: a config written for joint (the demo's) still trains the other fusions.
JOINT_ONLY = {"qk_norm": False, "image_rope": "none", "image_kv": None}


@dataclass
class ModelArguments:
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
    fusion: str = field(default="joint", metadata={"help": f"One of {FUSION_MODES}; concat is the SA baseline."})
    vision_feature_layers: list[int] | None = field(
        default=None, metadata={"help": "Tapped encoder layers (hidden_states indices); default: the paper's rule."}
    )
    cross_attention_layers: list[int] | None = field(
        default=None, metadata={"help": "LLM layers fed by the tapped layers; default: spread over the depth."}
    )
    connection_density: float = field(default=0.25, metadata={"help": "Fraction of encoder layers tapped."})
    projector_type: str = field(
        default="mlp_residual",
        metadata={"help": f"One of {PROJECTOR_TYPES}: mlp_residual is the paper's text, ln_mlp the authors' code."},
    )
    qk_norm: bool = field(default=False, metadata={"help": "joint only: the authors' q/k RMSNorms (--mm_qknorm)."})
    image_rope: str = field(
        default="none",
        metadata={"help": f"joint only, one of {IMAGE_ROPE_MODES}: 2d places the image after the tokenizer's prefix "
                          "with a 2-D rotary (the authors' --mm_rope)."},
    )
    image_kv: list[str] | None = field(
        default=None,
        metadata={"help": f"joint only: per stage (1 2 3, or one for all) {IMAGE_KV_MODES}; the authors': shared "
                          "separate separate. Default: shared."},
    )
    llm_train_scope: str = field(
        default="all", metadata={"help": f"LLM weights stages 2-3 train, one of {LLM_TRAIN_SCOPES}."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})

    def __post_init__(self):
        pair = self.vision_model_name_or_path is not None or self.text_model_name_or_path is not None
        sources = sum([self.model_name_or_path is not None, pair, self.tiny_backbones])
        if sources != 1:
            raise ValueError(
                "Give exactly one model source: --model_name_or_path (a HIVE checkpoint), or "
                "--vision_model_name_or_path with --text_model_name_or_path, or --tiny_backbones."
            )
        if pair and (self.vision_model_name_or_path is None or self.text_model_name_or_path is None):
            raise ValueError("--vision_model_name_or_path and --text_model_name_or_path go together; give both.")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"--fusion must be one of {FUSION_MODES}, got {self.fusion!r}.")
        for name, off in JOINT_ONLY.items():
            if self.fusion != "joint" and getattr(self, name) not in (off, [off]):
                logger.warning(f"--{name} applies to --fusion joint only; ignored for --fusion {self.fusion}")
                setattr(self, name, off)

    def config_kwargs(self) -> dict:
        """The `HiveConfig` fields these arguments set."""
        names = ("fusion", "connection_density", "vision_feature_layers", "cross_attention_layers", "projector_type",
                 "qk_norm", "image_rope", "image_kv", "llm_train_scope")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


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


@dataclass
class HivePretrainingArguments(TrainingArguments):
    stages: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Stages to run, in order."})
    recipe: str = field(
        default="paper",
        metadata={"help": f"Per-stage hyperparameters, one of {sorted(STAGE_RECIPES)} (hive_hf.training.stages); "
                          "the --stage_* flags override its values. authors_florence also sets per stage the lr "
                          "schedule, weight decay, Adam beta2 and seed, over --lr_scheduler_type and friends."},
    )
    stage_batch_sizes: list[int] | None = field(
        default=None,
        metadata={"help": "Global batch per stage (1 2 3); gradient accumulation makes up the difference."},
    )
    stage_epochs: list[float] | None = field(default=None, metadata={"help": "Epochs per stage."})
    stage_learning_rates: list[float] | None = field(default=None, metadata={"help": "Peak learning rate per stage."})
    stage_max_grad_norms: list[float] | None = field(default=None, metadata={"help": "Gradient clipping per stage."})
    stage_warmup_steps: list[float] | None = field(
        default=None, metadata={"help": "Linear warmup per stage: steps, or a fraction of the steps when below 1."}
    )
    stage_max_steps: list[int] = field(
        default_factory=lambda: [-1, -1, -1], metadata={"help": "Steps per stage; -1 runs the epochs instead."}
    )
    lora_r: int = field(default=0, metadata={"help": "Stage 2: LoRA rank for the LLM (0 trains it in full)."})
    lora_alpha: int = field(default=32, metadata={"help": "Stage 2 LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Stage 2 LoRA dropout."})
    vision_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for the vision encoder."})
    projector_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for the projectors."})
    fusion_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for new cross-attention."})
    llm_lr_scale: float = field(default=1.0, metadata={"help": "Learning-rate factor for the LLM."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "The paper decays with a cosine."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator needs the raw columns."})

    def __post_init__(self):
        super().__post_init__()
        if not self.stages or sorted(set(self.stages)) != list(self.stages) or not set(self.stages) <= {1, 2, 3}:
            raise ValueError(f"--stages must be distinct stages from 1 2 3 in order, got {self.stages}.")
        if self.recipe not in STAGE_RECIPES:
            raise ValueError(f"--recipe must be one of {sorted(STAGE_RECIPES)}, got {self.recipe!r}.")
        for name, attr in (("stage_batch_sizes", "batch_size"), ("stage_epochs", "epochs"),
                           ("stage_learning_rates", "learning_rate"), ("stage_max_grad_norms", "max_grad_norm"),
                           ("stage_warmup_steps", "warmup_steps")):
            if getattr(self, name) is None:
                setattr(self, name, [getattr(self.stage_recipe(s), attr) for s in (1, 2, 3)])
        for name in ("stage_batch_sizes", "stage_epochs", "stage_learning_rates", "stage_max_grad_norms",
                     "stage_warmup_steps", "stage_max_steps"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"--{name} takes one value per stage (1 2 3), got {getattr(self, name)}.")
        if any(b < 1 for b in self.stage_batch_sizes):
            raise ValueError(f"--stage_batch_sizes must be positive, got {self.stage_batch_sizes}.")
        if self.lora_r and 2 not in self.stages:
            raise ValueError(f"--lora_r {self.lora_r} applies to stage 2, which --stages {self.stages} does not run.")

    def stage_recipe(self, stage: int) -> StageHyperparameters:
        return STAGE_RECIPES[self.recipe][stage]

    @property
    def lr_multipliers(self) -> dict[str, float]:
        return {"vision": self.vision_lr_scale, "projector": self.projector_lr_scale,
                "fusion": self.fusion_lr_scale, "llm": self.llm_lr_scale}

    def for_stage(self, stage: int, output_dir: Path) -> TrainingArguments:
        """Plain `TrainingArguments` for one stage: its hyperparameters, its folder, its run name."""
        i = stage - 1
        return stage_training_args(
            self, stage, output_dir, self.stage_batch_sizes[i], learning_rate=self.stage_learning_rates[i],
            num_train_epochs=self.stage_epochs[i], max_steps=self.stage_max_steps[i],
            max_grad_norm=self.stage_max_grad_norms[i], warmup_steps=self.stage_warmup_steps[i],
            **self.stage_recipe(stage).training_arguments(),
        )


def parse_args() -> tuple[ModelArguments, DataArguments, HivePretrainingArguments]:
    return parse_json_or_flags(HfArgumentParser((ModelArguments, DataArguments, HivePretrainingArguments)))


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
    if args.gradient_checkpointing and args.gradient_checkpointing_kwargs and \
            args.gradient_checkpointing_kwargs.get("use_reentrant"):
        raise ValueError("HIVE needs non-reentrant checkpointing (frozen inputs); drop use_reentrant=True.")


def build_start(model_args, data_args, args, train_data, out: Path):
    """The stage-1 starting point, saved once to `<output_dir>/init` so that a restarted run starts identically."""
    init_dir = out / "init"
    if (init_dir / "config.json").exists() and (init_dir / "processor_config.json").exists():
        return init_dir
    if model_args.model_name_or_path:
        model = HiveForConditionalGeneration.from_pretrained(model_args.model_name_or_path)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    else:
        if model_args.tiny_backbones:
            rows = [(decode_image(r["image"]), r["caption"]) for r in _take(train_data, 5000)]  # renamed columns
            rows = [(image, caption) for image, caption in rows if image is not None]
            vision_path, text_path = write_tiny_backbones(
                out / "backbones", [c for _, c in rows], images=[i for i, _ in rows], seed=args.seed,
                text_pretrain_steps=model_args.tiny_text_pretrain_steps,
                vision_pretrain_steps=model_args.tiny_vision_pretrain_steps,
            )
        else:
            vision_path, text_path = model_args.vision_model_name_or_path, model_args.text_model_name_or_path
        model = HiveForConditionalGeneration.from_vision_text_pretrained(
            vision_path, text_path, text_model_type=model_args.text_model_type, **model_args.config_kwargs(),
        )
        processor = HiveProcessor.for_model_config(
            model.config, AutoImageProcessor.from_pretrained(vision_path), AutoTokenizer.from_pretrained(text_path),
            max_length=data_args.max_caption_length,
        )
    model.save_pretrained(init_dir)
    processor.save_pretrained(init_dir)
    return init_dir


def _take(dataset, n: int):
    for i, row in enumerate(dataset):
        if i >= n:
            return
        yield row


def run_stage(stage, start_dir: Path, model_args, data_args, args, train_data, out: Path) -> dict:
    stage_dir = out / f"stage{stage}"
    marker = stage_dir / STAGE_MARKER
    if marker.exists():
        logger.warning(f"stage {stage} already finished ({marker}); skipping it")
        return json.loads(marker.read_text())

    model = HiveForConditionalGeneration.from_pretrained(start_dir, attn_implementation=model_args.attn_implementation)
    processor = AutoProcessor.from_pretrained(start_dir)
    lora = stage == 2 and args.lora_r > 0
    if lora:
        apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    stage_args = args.for_stage(stage, stage_dir)
    if data_args.streaming:
        # Skipped images make batch sizes vary; each process then collates its own batches instead of the main
        # process concatenating equal-sized ones.
        stage_args.accelerator_config.dispatch_batches = False
    collator = HiveCaptionCollator(processor, prompt=data_args.prompt, max_length=data_args.max_caption_length)
    hub_callback = HiveHubCallback(run_dir=out) if stage_args.push_to_hub else None  # model code + HIVE card in pushes
    trainer = HiveTrainer(
        model=model, args=stage_args, train_dataset=train_data, data_collator=collator, stage=stage,
        lr_multipliers=args.lr_multipliers, processing_class=processor,  # checkpoints carry the processor too
        callbacks=[hub_callback] if hub_callback else None,
    )
    last = last_complete_checkpoint(stage_dir)
    if last:
        logger.warning(f"stage {stage}: resuming from {last}")
    result = trainer.train(resume_from_checkpoint=last)
    if lora:
        merge_lora(trainer.model)
    trainer.model.config.training_stage = stage
    trainer.save_model(str(stage_dir))
    if hub_callback is not None:
        hub_callback.push_card(trainer)  # the Trainer's end-of-training push wrote its generic card: put HIVE's back
    metrics = dict(result.metrics)
    metrics["skipped_images"] = trainer.total_skipped_images()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [metrics["train_loss"]]
    metrics.update(stage=stage, first_loss=losses[0], last_loss=losses[-1])
    trainer.log_metrics(f"stage{stage}", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        plot_loss_curves({f"stage {stage}": trainer.state.log_history}, stage_dir / "loss_curve.png",
                         title=f"HIVE stage {stage} ({model.config.fusion})")
        marker.write_text(json.dumps({**metrics, "log_history": trainer.state.log_history}, indent=2))
        if metrics["skipped_images"]:
            logger.warning(f"stage {stage}: skipped {metrics['skipped_images']} unreadable images")
    trainer.accelerator.wait_for_everyone()
    return json.loads(marker.read_text())


def main() -> None:
    model_args, data_args, args = parse_args()
    check_combinations(model_args, data_args, args)
    # transformers at warning level (the Trainer's progress bars still show); hive_hf at info on the main process.
    pylogging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    pylogging.getLogger("hive_hf").setLevel(pylogging.INFO if args.should_log else pylogging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(args.seed)

    out = Path(args.output_dir)
    train_data = load_caption_dataset(
        data_args.dataset, image_column=data_args.image_column, caption_column=data_args.caption_column,
        split=data_args.train_split, streaming=data_args.streaming, max_samples=data_args.max_train_samples,
        seed=args.seed,
    )
    with args.main_process_first(desc="building the starting model"):
        start = build_start(model_args, data_args, args, train_data, out)
        if args.process_index == 0:  # what was run, readable without unpickling training_args.bin (no tokens)
            stage_fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(HivePretrainingArguments)
                            if f.name.startswith(("stage", "lora_", "recipe"))}
            record = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), **stage_fields}
            (out / "run_args.json").write_text(json.dumps(record, indent=2, default=str))

    summaries = {}
    for stage in args.stages:
        summaries[stage] = run_stage(stage, start, model_args, data_args, args, train_data, out)
        start = out / f"stage{stage}"

    if args.process_index == 0:
        curves = plot_loss_curves(
            {f"stage {s}": summaries[s]["log_history"] for s in args.stages}, out / "loss_curves.png",
            title=f"HIVE pre-training ({model_args.fusion})",
        )
        print("\nHIVE pre-training finished")
        for s in args.stages:
            m = summaries[s]
            print(f"  stage {s}: loss {m['first_loss']:.3f} -> {m['last_loss']:.3f} in {m['train_runtime']:.1f}s "
                  f"({m['skipped_images']} images skipped), checkpoint {out / f'stage{s}'}")
        print(f"  loss curves: {curves}")
        print(f"  final model: {out / f'stage{args.stages[-1]}'} (AutoModel.from_pretrained(..., "
              "trust_remote_code=True) gives the encoder)")


if __name__ == "__main__":
    main()
