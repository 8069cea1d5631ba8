"""Release HIVE models to the Hugging Face Hub, with model cards.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models" (arXiv 2604.00086).

`python -m hive_hf.release RUN_DIR REPO_ID` publishes what `examples/run_pretrain.py` wrote into RUN_DIR:

- `REPO_ID`: the full model (`HiveForConditionalGeneration` + `HiveProcessor`; remote code);
- `REPO_ID-encoder` (or `--encoder_repo`): the encoder alone (`HiveVisionEncoderModel` + the tower's image processor;
  remote code), what users load with `AutoModel.from_pretrained(..., trust_remote_code=True)`;
- `--stock_encoder_repo`: optionally, the encoder as the stock transformers tower (`to_base_model()`, e.g.
  `SiglipVisionModel`), which loads with plain `AutoModel` and no remote code.

Every finished stage becomes one commit per repository, in stage order, tagged `stage1`, `stage2`, `stage3`; the last
stage is the branch head. `--dry-run` writes the exact folders locally instead of pushing.

`HiveHubCallback` covers `TrainingArguments(push_to_hub=True)`: every Trainer push carries the model code and HIVE's
model card. The cards are Jinja templates in `hive_hf/model_cards/` (package data), rendered by `render_model_card`.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import importlib
import inspect
import json
import logging as pylogging
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch
import transformers
from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import validate_repo_id
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoProcessor, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
from transformers.utils import logging

from . import __version__
from .configuration_hive import HiveConfig
from .modeling_hive import STAGE_COMPONENTS, HiveForConditionalGeneration, HiveVisionEncoderModel

logger = logging.get_logger("hive_hf.release")  # also under `python -m`, where __name__ is "__main__"

PAPER_URL = "https://arxiv.org/abs/2604.00086"
REPO_KINDS = ("full", "encoder", "stock")
CARD_TEMPLATES = {"full": "hive_full.md", "encoder": "hive_encoder.md", "stock": "stock_encoder.md"}
PIPELINE_TAGS = {"full": "image-text-to-text", "encoder": "image-feature-extraction", "stock": "image-feature-extraction"}
REPO_LABELS = {
    "full": "full model (encoder + projectors + LLM, remote code)",
    "encoder": "vision encoder (`HiveVisionEncoderModel`, remote code)",
    "stock": "vision encoder in stock transformers format (no remote code)",
}
STAGE_MARKER = "hive_stage.json"  # run_pretrain writes it when a stage has finished
RESULT_FILES = ("results.json", "probe_results.json", "eval_results.json")
FUSION_DESCRIPTIONS = {
    "joint": "at each paired LLM layer, the projected features of one tapped encoder layer become extra keys/values "
             "of that layer's self-attention (the authors' released code)",
    "gated": "a cross-attention block with a zero-initialised tanh gate before each paired LLM layer (the paper's "
             "equation read literally, as in Flamingo)",
    "concat": "the self-attention (SA) baseline the paper compares HIVE against: one layer's projected tokens are "
              "concatenated into the LLM input, LLaVA-style",
}
_COMPONENT_LABELS = {"projector": "connector", "fusion": "connector", "llm": "LLM", "vision": "vision encoder"}
# An encoder-only repo holds no LLM: its config maps only the classes it can build.
_ENCODER_AUTO_CLASSES = ("AutoConfig", "AutoModel")
# A stage commit replaces the weights: stale shards of an earlier release must not stay next to new weights.
_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin"]
_FULL_EXTRAS = ("all_results.json", "trainer_state.json")  # the stage's Trainer records, next to the full model
_RUN_LOSS_CURVES = "loss_curves.png"  # run_pretrain's plot of all stages
# `training_args.bin` is a pickle: only classes from these packages may be rebuilt from it.
_TRUSTED_PICKLE_PACKAGES = ("transformers", "accelerate")
_PROVENANCE_KEYS = ("arguments", "args", "argv")  # in results files: how the evaluation ran, with local paths


class ReleaseError(ValueError):
    """A release that cannot be made as asked (bad run folder, repo ids, results file, card)."""


# ---------------------------------------------------------------------------------------------------------------------
# What a run did
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    """What one pre-training stage did, for the model card; from a run folder or from a live `Trainer`."""

    stage: int | None
    steps: int | None = None
    epochs: float | None = None
    images_seen: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    train_loss: float | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def global_batch(self) -> int | None:
        return round(self.images_seen / self.steps) if self.images_seen and self.steps else None

    @property
    def data_size(self) -> int | None:
        """Image-caption pairs per epoch (the dataset size, rounded up to whole batches)."""
        return round(self.images_seen / self.epochs) if self.images_seen and self.epochs else None

    @property
    def trains(self) -> str:
        if self.stage not in STAGE_COMPONENTS:
            return "–"
        order = list(_COMPONENT_LABELS)
        components = sorted(STAGE_COMPONENTS[self.stage], key=order.index)
        return " + ".join(dict.fromkeys(_COMPONENT_LABELS[c] for c in components))


def training_hyperparameters(args: Any) -> dict[str, Any]:
    """The optimization settings a card reports, from `TrainingArguments`: an allowlist, never tokens or paths."""
    names = ("learning_rate", "warmup_steps", "max_grad_norm", "per_device_train_batch_size",
             "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "optim", "seed")
    values = {name: getattr(getattr(args, name, None), "value", getattr(args, name, None)) for name in names}
    values["precision"] = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"
    return values


def load_training_args(path: str | os.PathLike) -> Any | None:
    """`TrainingArguments` from a Trainer's `training_args.bin`, or None.

    The file is a pickle. It is read with `torch.load(weights_only=True)`, allowing only the classes it names from
    transformers and accelerate (the arguments, their enums and dataclasses), so a file that wants to build anything
    else is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        allowed = []
        for name in names:
            module, _, attr = name.rpartition(".")
            obj = None
            if module.split(".")[0] in _TRUSTED_PICKLE_PACKAGES:
                obj = getattr(importlib.import_module(module), attr, None)
            if not inspect.isclass(obj):
                logger.warning(f"{path} needs {name} to unpickle, which is not allowed; its hyperparameters are skipped.")
                return None
            allowed.append(obj)
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ImportError, AttributeError, EOFError) as err:
        logger.warning(f"Could not read {path} ({err}); its hyperparameters are left out of the model card.")
        return None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_record_from_folder(folder: str | os.PathLike, stage: int | None = None) -> StageRecord:
    """A stage's record from the folder run_pretrain wrote (`hive_stage.json`, `trainer_state.json`,
    `training_args.bin`); `stage` defaults to the one recorded there."""
    folder = Path(folder)
    marker = _read_json(folder / STAGE_MARKER)
    state = _read_json(folder / "trainer_state.json")
    config = _read_json(folder / "config.json")
    history = marker.get("log_history") or state.get("log_history") or []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    # The Trainer reports samples/s over the whole schedule's sample count, so their product is that count.
    per_second, runtime = marker.get("train_samples_per_second"), marker.get("train_runtime")
    args = load_training_args(folder / "training_args.bin")
    return StageRecord(
        stage=stage if stage is not None else marker.get("stage", config.get("training_stage")),
        steps=state.get("global_step"),
        epochs=marker.get("epoch", state.get("epoch")),
        images_seen=round(per_second * runtime) if per_second and runtime else None,
        first_loss=losses[0] if losses else marker.get("first_loss"),
        last_loss=losses[-1] if losses else marker.get("last_loss"),
        train_loss=marker.get("train_loss"),
        hyperparameters=training_hyperparameters(args) if args is not None else {},
    )


def stage_record_from_trainer(stage: int | None, args: Any, state: Any) -> StageRecord:
    """The record of the stage a `Trainer` is running (or just ran), from its arguments and state."""
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    summary = next((entry for entry in reversed(state.log_history) if "train_loss" in entry), {})
    batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    return StageRecord(
        stage=stage,
        steps=state.global_step,
        epochs=state.epoch,
        images_seen=state.global_step * batch,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        train_loss=summary.get("train_loss"),
        hyperparameters=training_hyperparameters(args),
    )


def finished_stages(run_dir: str | os.PathLike, warn: bool = True) -> dict[int, Path]:
    """`{stage: folder}` for the `stage<k>` folders of a run_pretrain output that finished, in stage order."""
    run_dir = Path(run_dir)
    stages = {}
    for stage in sorted(STAGE_COMPONENTS):
        folder = run_dir / f"stage{stage}"
        if not folder.is_dir():
            continue
        if (folder / STAGE_MARKER).is_file() and (folder / "config.json").is_file():
            stages[stage] = folder
        elif warn:
            logger.warning(f"{folder} has no {STAGE_MARKER}: stage {stage} did not finish and is not released.")
    return stages


def find_results(run_dir: str | os.PathLike, extra_files: Sequence[str | os.PathLike] = ()) -> list[tuple[str, str]]:
    """`(file name, Markdown)` for the evaluation results in a run folder (`results.json`, `probe_results.json`,
    `eval_results.json`) and for `extra_files`; see `results_markdown`."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in RESULT_FILES if (run_dir / name).is_file()]
    files += [Path(f) for f in extra_files if Path(f).resolve() not in {p.resolve() for p in files}]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ReleaseError(f"--results: no such file: {', '.join(missing)}.")
    return [(path.name, results_markdown(path)) for path in files]


# ---------------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".")
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = "–" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _is_rows(data: Any) -> bool:
    return bool(data) and (isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())
                           or isinstance(data, list) and all(isinstance(v, dict) for v in data))


def _table(data: Any) -> str:
    if isinstance(data, dict) and _is_rows(data):
        columns = list(dict.fromkeys(k for row in data.values() for k in row))
        header, rows = ["", *columns], [[name, *(row.get(c) for c in columns)] for name, row in data.items()]
    elif _is_rows(data):
        columns = list(dict.fromkeys(k for row in data for k in row))
        header, rows = columns, [[row.get(c) for c in columns] for row in data]
    elif isinstance(data, dict):
        header, rows = ["metric", "value"], [[k, v] for k, v in data.items()]
    else:
        header, rows = ["value"], [[data]]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(data: Any) -> str:
    """Markdown for whatever table a results JSON holds: `{metric: value}`, `{row: {column: value}}` or
    `[{column: value}, ...]`. A report that mixes them (scalars next to tables, as `run_probe.py` writes) gives a
    table of its scalars and one captioned table per nested part; run provenance (`arguments`, `argv`), which holds
    local paths, is left out. Deeper values are shown as JSON."""
    if not isinstance(data, dict) or _is_rows(data):
        return _table(data)
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    parts = [_table(scalars)] if scalars else []
    for key, value in data.items():
        if key not in _PROVENANCE_KEYS and isinstance(value, (dict, list)) and value:
            parts.append(f"**{key}**\n\n{_table(value)}")
    return "\n\n".join(parts)


def results_markdown(path: str | os.PathLike) -> str:
    """The Markdown a model card shows for a results JSON: the `.md` report written next to it, if any (headings
    moved under the card's Evaluation section), else `results_table` of the JSON."""
    path = Path(path)
    report = path.with_suffix(".md")
    if report.is_file():
        return re.sub(r"^(#+) ", r"##\1 ", report.read_text().strip(), flags=re.M)  # "# T" -> "### T"
    try:
        return results_table(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ReleaseError(f"{path} is not valid JSON: {err}") from err


@dataclass
class CardOptions:
    """What a release tells the model cards beyond the checkpoint itself.

    Args:
        license: the Hub license id for the weights (`other` when unknown: the base models' terms apply).
        datasets: Hub dataset ids (or names) the run trained on.
        vision_base_model / text_base_model: Hub ids of the backbones; None for a local checkpoint.
        repos: `{kind: repo id}` of everything released together ("full", "encoder", "stock").
        results: `(source name, Markdown or parsed JSON)` evaluation results, shown in the final card.
        template_dir: a folder with replacement templates (default: the ones shipped in `hive_hf/model_cards/`).
    """

    license: str = "other"
    datasets: list[str] = field(default_factory=list)
    vision_base_model: str | None = None
    text_base_model: str | None = None
    repos: dict[str, str] = field(default_factory=dict)
    results: list[tuple[str, Any]] = field(default_factory=list)
    template_dir: str | os.PathLike | None = None


def as_hub_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id, None if it is a local path (what `_name_or_path` holds for local
    backbones, e.g. run_pretrain's `--tiny_backbones`)."""
    if not name or name.startswith((".", "~")) or Path(name).is_absolute() or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _link(repo_id: str | None, fallback: str, prefix: str = "") -> str:
    return f"[{repo_id}]({constants.ENDPOINT}/{prefix}{repo_id})" if repo_id else fallback


def _stage_rows(stages: Sequence[StageRecord]) -> list[dict[str, str]]:
    rows = []
    for record in stages:
        hp = record.hyperparameters
        losses = "–" if record.first_loss is None else f"{record.first_loss:.3f} → {record.last_loss:.3f}"
        rows.append({
            "stage": str(record.stage or "–"),
            "trains": record.trains,
            "steps": _number(record.steps),
            "epochs": _number(record.epochs, 2),
            "images_seen": _number(record.images_seen),
            "global_batch": _number(record.global_batch),
            "learning_rate": _number(hp.get("learning_rate")),
            "warmup": _number(hp.get("warmup_steps")),
            "max_grad_norm": _number(hp.get("max_grad_norm")),
            "losses": losses,
        })
    return rows


def _optimization(stages: Sequence[StageRecord]) -> str:
    """One line for the settings every stage shares, or one clause per stage when they differ."""
    settings = {}
    for record in stages:
        hp = record.hyperparameters
        if hp:
            settings[record.stage] = (f"{hp.get('optim')}, {hp.get('lr_scheduler_type')} schedule with linear warmup, "
                                      f"weight decay {_number(hp.get('weight_decay'))}, {hp.get('precision')}")
    if len(set(settings.values())) <= 1:
        return next(iter(settings.values()), "")
    return "; ".join(f"stage {stage}: {text}" for stage, text in settings.items())


def _model_facts(config: HiveConfig, num_parameters: int | None) -> dict[str, Any]:
    vision, text = config.vision_config, config.text_config
    hidden = config.projector_hidden_size or text.hidden_size
    projector = f"2-layer {config.projector_hidden_act} MLP, {vision.hidden_size} → {hidden} → {text.hidden_size}"
    if config.fusion == "concat":
        wiring = f"{config.vision_feature_layers[0]} → the LLM input sequence"
    else:
        wiring = ", ".join(f"{v} → {t}" for v, t in zip(config.vision_feature_layers, config.cross_attention_layers))
    return {
        "fusion": config.fusion,
        "fusion_description": FUSION_DESCRIPTIONS[config.fusion] + (
            "; with separate image key/value projections, initialised as copies of the layer's own"
            if config.uses_separate_image_kv else ""),
        "vision_type": vision.model_type,
        "vision_class": MODEL_MAPPING_NAMES.get(vision.model_type, type(vision).__name__.replace("Config", "Model")),
        "vision_layers": vision.num_hidden_layers,
        "vision_width": vision.hidden_size,
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "num_image_tokens": config.num_image_tokens,
        "vision_feature_layers": list(config.vision_feature_layers),
        "num_taps": len(config.vision_feature_layers),
        "text_type": text.model_type,
        "text_layers": text.num_hidden_layers,
        "text_width": text.hidden_size,
        "wiring": wiring,
        "projector": projector + {"mlp_residual": " with a residual connection",
                                  "ln_mlp": " after a LayerNorm"}.get(config.projector_type, ""),
        "num_parameters": _number(num_parameters) if num_parameters else "–",
    }


def render_model_card(
    kind: str,
    config: HiveConfig,
    stages: Sequence[StageRecord],
    *,
    repo_id: str,
    revision: str,
    options: CardOptions,
    revision_note: str = "",
    num_parameters: int | None = None,
    loss_curve: str | None = None,
    evaluation_note: str = "No evaluation results were found in the training run folder at release time.",
) -> ModelCard:
    """The model card of a HIVE repository.

    Args:
        kind: `"full"` (`HiveForConditionalGeneration`), `"encoder"` (`HiveVisionEncoderModel`) or `"stock"` (the
            encoder as the stock transformers tower).
        config: the released model's `HiveConfig`.
        stages: what each stage so far did, in order.
        repo_id / revision: where the card lives; the loading snippets pin `revision`.
        options: license, datasets, base models, related repos and evaluation results.
        revision_note: a sentence saying what this revision holds.
        num_parameters: parameters in this repository's weights.
        loss_curve: file name of a loss plot shipped next to the card.
        evaluation_note: shown when `options.results` is empty.

    The YAML front matter is built by `huggingface_hub.ModelCardData`; the body by the Jinja templates (shared parts
    are `{% include %}`d, which `ModelCard.from_template` cannot do, so the environment is ours). The result is parsed
    back by `ModelCard`, so a template that breaks the front matter fails here rather than on the Hub.
    """
    if kind not in CARD_TEMPLATES:
        raise ValueError(f"`kind` must be one of {tuple(CARD_TEMPLATES)}, got {kind!r}.")
    base_models = [m for m in (options.vision_base_model, options.text_base_model) if m]
    tags = list(dict.fromkeys(["hive", "vision-encoder", f"hive-{config.fusion}",
                               config.vision_config.model_type, *([config.text_config.model_type] * (kind == "full"))]))
    card_data = ModelCardData(
        license=options.license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        base_model=base_models or None,
        # Several base models would otherwise read as a merge on the Hub; HIVE trains new weights from them.
        base_model_relation="finetune" if base_models else None,
        datasets=list(options.datasets) or None,
        tags=tags,
    )
    data_size = next((r.data_size for r in stages if r.data_size), None)
    datasets = ", ".join(_link(d if as_hub_id(d) else None, f"`{d}`", "datasets/") for d in options.datasets)
    data_description = (datasets or "the datasets were not named at release") + (
        f"; about {data_size:,} image-caption pairs per epoch" if data_size else "")
    released = [r.stage for r in stages]
    context = {
        "card_data": card_data.to_yaml(),
        "kind": kind,
        "title": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "revision": revision,
        "revision_note": revision_note,
        "hub_url": constants.ENDPOINT,
        "paper_url": PAPER_URL,
        "repos": {k: options.repos.get(k) for k in REPO_KINDS},
        "related": [(REPO_LABELS[k], r) for k, r in options.repos.items() if r != repo_id],
        "model": _model_facts(config, num_parameters),
        "base": {
            "vision": _link(options.vision_base_model, f"a local `{config.vision_config.model_type}` checkpoint"),
            "text": _link(options.text_base_model, f"a local `{config.text_config.model_type}` checkpoint"),
        },
        "stages": _stage_rows(stages),
        "stages_note": "" if released == sorted(STAGE_COMPONENTS) else
        f"This revision has been through stage(s) {', '.join(str(s) for s in released)}.",
        "optimization": _optimization(stages),
        "data_description": data_description,
        "loss_curve": loss_curve,
        "results": [{"source": name, "table": data if isinstance(data, str) else results_table(data)}
                    for name, data in options.results],
        "evaluation_note": evaluation_note,
        "license": options.license,
        "versions": {"hive_hf": __version__, "transformers": transformers.__version__},
    }
    if options.template_dir is not None:
        loader: jinja2.BaseLoader = jinja2.FileSystemLoader(str(options.template_dir))
    else:
        loader = jinja2.PackageLoader("hive_hf", "model_cards")
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    content = env.get_template(CARD_TEMPLATES[kind]).render(**context)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", content).lstrip())


# ---------------------------------------------------------------------------------------------------------------------
# Release folders
# ---------------------------------------------------------------------------------------------------------------------
def _plain_image_processor(image_processor: Any) -> Any:
    """A copy without the `auto_map` that `HiveProcessor.save_pretrained` leaves on its image processor: alone in an
    encoder repo it would send `AutoProcessor` looking for a `processing_hive.py` that is not there."""
    data = {k: v for k, v in image_processor.to_dict().items() if k not in ("auto_map", "processor_class")}
    return type(image_processor).from_dict(data)


def _name_backbones(config: HiveConfig, options: CardOptions) -> None:
    # `_name_or_path` of a local backbone is a path on the training machine: publish the Hub id or nothing.
    config.vision_config._name_or_path = options.vision_base_model or ""
    config.text_config._name_or_path = options.text_base_model or ""


def write_stage_folders(
    stage_dir: str | os.PathLike,
    folders: dict[str, Path],
    stages: Sequence[StageRecord],
    options: CardOptions,
    *,
    final: bool,
    loss_curve: str | os.PathLike | None = None,
) -> None:
    """Write one stage's release folders, each exactly what its repository's commit holds.

    `folders` maps a kind (`"full"`, `"encoder"`, `"stock"`) to an empty folder. The weights are loaded from
    `stage_dir` and saved again, so the folders carry this package's model code, and a checkpoint that no longer
    loads fails here instead of on a user's machine.
    """
    stage_dir = Path(stage_dir)
    stage = stages[-1].stage
    tag = f"stage{stage}"
    card_kwargs: dict[str, Any] = {
        "revision": tag,
        "revision_note": f"This revision (tag `{tag}`) holds the weights after pre-training stage {stage}"
                         + (", the last stage of this release." if final else "; later stages are newer commits."),
    }
    if not final:  # results evaluate the final weights: they go in the last stage's card only
        options = dataclasses.replace(options, results=[])
        card_kwargs["evaluation_note"] = "Evaluation results, if any, are in the card of the release's last stage."
    card_kwargs["options"] = options

    model = HiveForConditionalGeneration.from_pretrained(stage_dir)
    processor = AutoProcessor.from_pretrained(stage_dir)
    _name_backbones(model.config, options)
    if "full" in folders:
        folder = folders["full"]
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        for name in _FULL_EXTRAS:
            if (stage_dir / name).is_file():
                shutil.copyfile(stage_dir / name, folder / name)
        curve = None
        if loss_curve is not None and Path(loss_curve).is_file():
            curve = Path(loss_curve).name
            shutil.copyfile(loss_curve, folder / curve)
        card = render_model_card("full", model.config, stages, repo_id=options.repos["full"],
                                 num_parameters=model.num_parameters(), loss_curve=curve, **card_kwargs)
        card.save(folder / "README.md")
    del model

    encoder = HiveVisionEncoderModel.from_pretrained(stage_dir)
    _name_backbones(encoder.config, options)
    encoder.config.auto_map = {k: v for k, v in encoder.config.auto_map.items() if k in _ENCODER_AUTO_CLASSES}
    image_processor = _plain_image_processor(processor.image_processor)
    if "encoder" in folders:
        folder = folders["encoder"]
        encoder.save_pretrained(folder)
        image_processor.save_pretrained(folder)
        card = render_model_card("encoder", encoder.config, stages, repo_id=options.repos["encoder"],
                                 num_parameters=encoder.num_parameters(), **card_kwargs)
        card.save(folder / "README.md")
    if "stock" in folders:
        folder = folders["stock"]
        stock = encoder.to_base_model()
        stock.save_pretrained(folder)
        image_processor.save_pretrained(folder)
        card = render_model_card("stock", encoder.config, stages, repo_id=options.repos["stock"],
                                 num_parameters=stock.num_parameters(), **card_kwargs)
        card.save(folder / "README.md")


# ---------------------------------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ReleaseCommit:
    """One stage of one repository: the folder it was built from and, when pushed, its commit."""

    kind: str
    repo_id: str
    stage: int
    tag: str
    folder: Path
    commit: str | None = None


def _full_repo_id(repo_id: str, namespace: str | None) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ReleaseError(f"{repo_id!r} is not a valid repo id: {err}") from err
    return repo_id if "/" in repo_id or namespace is None else f"{namespace}/{repo_id}"


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _released_commit(api: HfApi, repo_id: str, tag: str, folder: Path, revision: str | None) -> str | None:
    """The commit `tag` points to, if it is on the target branch and holds exactly `folder`'s files (and no stale
    weights): a release run again, e.g. after an interruption, then adds no commit for that stage."""
    commit = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}.get(tag)
    if commit is None or commit not in {c.commit_id for c in api.list_repo_commits(repo_id, revision=revision)}:
        return None
    remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)}
    local = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    for name, path in local.items():
        entry, data = remote.get(name), path.read_bytes()
        if entry is None or (entry.lfs["sha256"] != hashlib.sha256(data).hexdigest() if entry.lfs is not None
                             else entry.blob_id != _git_blob_id(data)):
            return None
    stale = [n for n in remote if n not in local and any(fnmatch.fnmatch(n, p) for p in _WEIGHT_PATTERNS)]
    return None if stale else commit


def _tag_commit(api: HfApi, repo_id: str, tag: str, commit: str) -> None:
    tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
    if tags.get(tag) == commit:
        return
    if tag in tags:
        logger.warning(f"{repo_id}: moving tag {tag} from {tags[tag][:8]} to {commit[:8]}.")
        api.delete_tag(repo_id, tag=tag)
    api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"HIVE pre-training {tag}")


def _push_stage(api: HfApi, repo_id: str, tag: str, folder: Path, revision: str | None, message: str) -> str:
    """Commit `folder` to `repo_id` and tag the commit; returns it. A stage released before is left as it is."""
    try:
        ModelCard.load(folder / "README.md").validate()  # the Hub's own check of the front matter
    except ValueError as err:
        raise ReleaseError(f"The model card for {repo_id} fails the Hub's validation: {err}") from err
    commit = _released_commit(api, repo_id, tag, folder, revision)
    if commit is not None:
        logger.info(f"{repo_id}: {tag} is already released as commit {commit[:8]}")
        return commit
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, revision=revision,
                               delete_patterns=_WEIGHT_PATTERNS).oid
    _tag_commit(api, repo_id, tag, commit)
    logger.info(f"{repo_id}: {tag} is commit {commit[:8]}")
    return commit


@contextmanager
def _work_dir(dry_run_dir: Path | None) -> Iterator[Path]:
    if dry_run_dir is not None:
        dry_run_dir.mkdir(parents=True, exist_ok=True)
        yield dry_run_dir
    else:
        with tempfile.TemporaryDirectory(prefix="hive-release-") as tmp:
            yield Path(tmp)


def release_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    encoder_repo_id: str | None = None,
    stock_encoder_repo_id: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    dry_run: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
    license: str = "other",
    datasets: Sequence[str] = (),
    vision_base_model: str | None = None,
    text_base_model: str | None = None,
    results_files: Sequence[str | os.PathLike] = (),
    template_dir: str | os.PathLike | None = None,
) -> list[ReleaseCommit]:
    """Publish a run_pretrain output folder: the full model to `repo_id`, the encoder to `encoder_repo_id` (default
    `<repo_id>-encoder`) and, if given, the stock-format encoder to `stock_encoder_repo_id`.

    Each finished stage is one commit per repository, made in stage order and tagged `stage<k>`. `private`,
    `revision` (the branch to commit to, created if missing) and `token` behave as in `huggingface_hub`; repo ids
    without a namespace go to the token's user. With `dry_run`, nothing is sent: the folders are written under
    `dry_run_dir` (default `<run_dir>/release`) as `<repo_id>/stage<k>/`. Base models default to the backbones'
    `_name_or_path` when that is a Hub id. Returns one `ReleaseCommit` per repository and stage.
    """
    run_dir = Path(run_dir)
    stages = finished_stages(run_dir)
    if not stages:
        raise ReleaseError(f"{run_dir} holds no finished stage (a stage<k> folder with {STAGE_MARKER}); is it a "
                           "run_pretrain --output_dir?")
    api = None
    namespace = None
    if not dry_run:
        api = HfApi(token=token)
        namespace = api.whoami()["name"]  # fails first, with the client's own message, when there is no token
    repos = {"full": _full_repo_id(repo_id, namespace)}
    repos["encoder"] = _full_repo_id(encoder_repo_id or f"{repo_id}-encoder", namespace)
    if stock_encoder_repo_id:
        repos["stock"] = _full_repo_id(stock_encoder_repo_id, namespace)
    if len(set(repos.values())) != len(repos):
        raise ReleaseError(f"The repositories must be distinct, got {repos}.")

    last_config = HiveConfig.from_pretrained(stages[max(stages)])
    options = CardOptions(
        license=license,
        datasets=list(datasets),
        vision_base_model=vision_base_model or as_hub_id(last_config.vision_config._name_or_path),
        text_base_model=text_base_model or as_hub_id(last_config.text_config._name_or_path),
        repos=repos,
        results=find_results(run_dir, results_files),
        template_dir=template_dir,
    )
    for part, name in (("vision", options.vision_base_model), ("text", options.text_base_model)):
        if name is None:
            logger.warning(f"The {part} backbone is a local checkpoint: the cards name no {part} base model (pass "
                           f"--{part}_base_model with its Hub id).")

    if api is not None:
        for kind, rid in repos.items():
            url = api.create_repo(rid, private=private, exist_ok=True)
            if private is not None and api.model_info(rid).private != private:
                logger.warning(f"{rid} already exists and stays {'private' if not private else 'public'}: --private "
                               "applies to new repositories only.")
            if revision and not revision.startswith("refs/pr/"):
                api.create_branch(rid, branch=revision, exist_ok=True)
            logger.info(f"{REPO_LABELS[kind]}: {url}")

    commits: list[ReleaseCommit] = []
    records: list[StageRecord] = []
    dry_dir = Path(dry_run_dir or run_dir / "release") if dry_run else None
    with _work_dir(dry_dir) as work, tqdm(total=len(stages) * len(repos), desc="HIVE release",
                                          unit="folder" if dry_run else "commit") as progress:
        for stage, stage_dir in stages.items():
            records.append(stage_record_from_folder(stage_dir, stage))
            tag = f"stage{stage}"
            folders = {kind: work / rid / tag for kind, rid in repos.items()}
            for folder in folders.values():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            progress.set_postfix_str(f"writing {tag}")
            write_stage_folders(stage_dir, folders, records, options, final=stage == max(stages),
                                loss_curve=run_dir / _RUN_LOSS_CURVES)
            for kind, folder in folders.items():
                commit = ReleaseCommit(kind, repos[kind], stage, tag, folder)
                if api is not None:
                    progress.set_postfix_str(f"pushing {repos[kind]}@{tag}")
                    message = f"{commit_message} ({tag})" if commit_message else f"Release HIVE {tag}"
                    commit.commit = _push_stage(api, repos[kind], tag, folder, revision, message)
                commits.append(commit)
                progress.update()
            if api is not None:
                for folder in folders.values():
                    shutil.rmtree(folder)
    return commits


# ---------------------------------------------------------------------------------------------------------------------
# Trainer pushes
# ---------------------------------------------------------------------------------------------------------------------
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "config"):  # DDP / DeepSpeed wrappers
        model = model.module
    return model


def _write_if_changed(path: Path, data: bytes) -> None:
    # Atomic (a Trainer upload may be reading the folder) and a no-op when nothing changed. The temporary name
    # starts with "_", which the Trainer's uploads ignore.
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(f"_{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_model_code(model: torch.nn.Module, folder: str | os.PathLike) -> list[Path]:
    """Copy the file defining `model`'s class and its relative imports (for HIVE: `modeling_hive.py` and
    `configuration_hive.py`) into `folder`, as `save_pretrained` does for a class registered for an Auto class."""
    source = Path(sys.modules[type(model).__module__].__file__)
    written = []
    for path in [source, *map(Path, get_relative_import_files(str(source)))]:
        _write_if_changed(Path(folder) / path.name, path.read_bytes())
        written.append(Path(folder) / path.name)
    return written


class HiveHubCallback(TrainerCallback):
    """Makes `TrainingArguments(push_to_hub=True)` pushes of a HIVE model load with remote code and carry HIVE's card.

    At every save the Trainer copies only the weights and `config.json` from the checkpoint into `args.output_dir`,
    saves the processor there, and uploads the folder: the `modeling_hive.py` / `configuration_hive.py` that the
    config's `auto_map` points to would be missing from those commits. At each `on_push_begin` this callback writes
    them, and the model card (`hive_full.md`), into `args.output_dir`.

    The end-of-training push (`Trainer.push_to_hub`, which `save_model` triggers) replaces README.md with the
    Trainer's generic card right before uploading and offers no hook after it; call `push_card(trainer)` once it
    returned to put HIVE's card back (one small commit).

    Args:
        options: card metadata (license, datasets, base models); base models default to the backbones'
            `_name_or_path` when it is a Hub id.
        run_dir: a run_pretrain output folder whose finished stages the card also describes. Default: the parent of
            `args.output_dir` when that folder is named `stage<k>`.
    """

    def __init__(self, options: CardOptions | None = None, run_dir: str | os.PathLike | None = None):
        self.options = options or CardOptions()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._namespaces: dict[str | None, str] = {}

    def _repo_id(self, args: Any) -> str:
        repo_id = args.hub_model_id or Path(args.output_dir).absolute().name  # as `Trainer.init_hf_repo` names it
        if "/" in repo_id:
            return repo_id
        if args.hub_token not in self._namespaces:
            self._namespaces[args.hub_token] = HfApi(token=args.hub_token).whoami()["name"]
        return f"{self._namespaces[args.hub_token]}/{repo_id}"

    def render_card(self, args: Any, state: Any, model: torch.nn.Module, repo_id: str | None = None) -> ModelCard:
        """HIVE's card for what the Trainer is pushing: the current stage from `state`, earlier ones from the run."""
        model = _unwrap(model)
        config = model.config
        stage = config.training_stage
        output_dir = Path(args.output_dir)
        run_dir = self.run_dir
        if run_dir is None and re.fullmatch(r"stage\d", output_dir.name):
            run_dir = output_dir.parent
        earlier = finished_stages(run_dir, warn=False) if run_dir is not None else {}
        records = [stage_record_from_folder(folder, k) for k, folder in earlier.items() if stage is None or k < stage]
        records.append(stage_record_from_trainer(stage, args, state))
        repo_id = repo_id or self._repo_id(args)
        options = dataclasses.replace(
            self.options,
            vision_base_model=self.options.vision_base_model or as_hub_id(config.vision_config._name_or_path),
            text_base_model=self.options.text_base_model or as_hub_id(config.text_config._name_or_path),
            repos={**self.options.repos, "full": repo_id},
        )
        note = (f"Pushed by the Trainer during pre-training stage {stage}, at step {state.global_step}."
                if stage else f"Pushed by the Trainer at step {state.global_step}.")
        return render_model_card(
            "full", config, records, repo_id=repo_id, revision=args.hub_revision or "main", options=options,
            revision_note=note, num_parameters=model.num_parameters(),
            evaluation_note="No evaluation results: this checkpoint was pushed during training.",
        )

    def on_push_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or model is None:
            return
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_model_code(_unwrap(model), folder)
        card = self.render_card(args, state, model)
        _write_if_changed(folder / "README.md", str(card).encode())

    def push_card(self, trainer: transformers.Trainer) -> CommitInfo | None:
        """Replace the generic card of the Trainer's end-of-training push by HIVE's; call after `save_model` /
        `push_to_hub` returned. Returns the commit, or None on other processes or without `push_to_hub`."""
        args = trainer.args
        if not args.push_to_hub or not trainer.is_world_process_zero():
            return None
        repo_id = getattr(trainer, "hub_model_id", None) or self._repo_id(args)
        card = self.render_card(args, trainer.state, trainer.model, repo_id=repo_id)
        path = Path(args.output_dir) / "README.md"
        _write_if_changed(path, str(card).encode())
        return HfApi(token=args.hub_token).upload_file(
            path_or_fileobj=str(path), path_in_repo="README.md", repo_id=repo_id, revision=args.hub_revision,
            commit_message="HIVE model card",
        )


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hive-release",
        description="Publish a HIVE pre-training run (the --output_dir of examples/run_pretrain.py) to the Hugging "
                    "Face Hub: the full model, the encoder (remote code) and optionally the encoder in stock "
                    "transformers format, each with a model card and one commit per finished stage, tagged "
                    "stage1, stage2, stage3.",
        epilog="The token comes from --token, HF_TOKEN or `hf auth login`, as everywhere in huggingface_hub; it is "
               "never printed or written into a card.",
    )
    parser.add_argument("run_dir", type=Path, help="The run folder: init/, stage1/, stage2/, stage3/, ...")
    parser.add_argument("repo_id", help="Repository of the full model, e.g. `me/hive-siglip` (without a namespace: "
                                        "the token's user).")
    parser.add_argument("--encoder_repo", "--encoder-repo", dest="encoder_repo",
                        help="Repository of the encoder alone (default: <repo_id>-encoder).")
    parser.add_argument("--stock_encoder_repo", "--stock-encoder-repo", dest="stock_encoder_repo",
                        help="Also publish the encoder in stock transformers format (to_base_model()) here.")
    parser.add_argument("--private", action="store_true", default=None,
                        help="Create the repositories private (no effect on existing ones).")
    parser.add_argument("--revision", help="Branch to commit to (created if missing; default: main).")
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message",
                        help="Commit message; each stage's commit appends ' (stage<k>)'.")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the stored login).")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="Write the exact folders that would be committed, print them, push nothing.")
    parser.add_argument("--dry_run_dir", "--dry-run-dir", dest="dry_run_dir", type=Path,
                        help="Where --dry-run writes <repo_id>/stage<k>/ folders (default: <run_dir>/release).")
    parser.add_argument("--license", default="other",
                        help="License id of the weights for the cards (default: other; the backbones' terms apply).")
    parser.add_argument("--dataset", dest="datasets", action="append", default=[], metavar="ID",
                        help="A dataset the run trained on (Hub id or name); repeat for several.")
    parser.add_argument("--vision_base_model", help="Hub id of the vision backbone (default: from the config).")
    parser.add_argument("--text_base_model", help="Hub id of the LLM backbone (default: from the config).")
    parser.add_argument("--results", dest="results_files", action="append", default=[], type=Path, metavar="FILE",
                        help="A JSON file of evaluation results to render in the cards (results.json, "
                             "probe_results.json and eval_results.json in run_dir are found by themselves).")
    parser.add_argument("--template_dir", type=Path, help="A folder of replacement card templates.")
    return parser


def _size(num_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return ""


def _print_plan(commits: Sequence[ReleaseCommit], dry_run: bool, private: bool | None, revision: str | None) -> None:
    if dry_run:
        print("Dry run: nothing was pushed. These folders are exactly what each commit would upload:")
    else:
        print("Released:")
    for repo_id in dict.fromkeys(c.repo_id for c in commits):
        kind = next(c.kind for c in commits if c.repo_id == repo_id)
        visibility = {None: "hub default", True: "private", False: "public"}[private]
        print(f"\n{repo_id}  [{REPO_LABELS[kind]}; {visibility}; branch {revision or 'main'}]")
        for commit in (c for c in commits if c.repo_id == repo_id):
            target = f"commit {commit.commit}" if commit.commit else str(commit.folder)
            print(f"  tag {commit.tag}: {target}")
            if dry_run:
                for path in sorted(p for p in commit.folder.rglob("*") if p.is_file()):
                    print(f"    {str(path.relative_to(commit.folder)):<32} {_size(path.stat().st_size):>10}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m hive_hf.release` / `hive-release`. Returns the exit code."""
    args = build_parser().parse_args(argv)
    pylogging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    pylogging.getLogger("hive_hf").setLevel(pylogging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # one progress bar: the release's
    try:
        with logging_redirect_tqdm(loggers=[pylogging.getLogger()]):  # log lines above the progress bar
            commits = release_run(
                args.run_dir, args.repo_id, encoder_repo_id=args.encoder_repo,
                stock_encoder_repo_id=args.stock_encoder_repo, private=args.private, revision=args.revision,
                commit_message=args.commit_message, token=args.token, dry_run=args.dry_run,
                dry_run_dir=args.dry_run_dir, license=args.license, datasets=args.datasets,
                vision_base_model=args.vision_base_model, text_base_model=args.text_base_model,
                results_files=args.results_files, template_dir=args.template_dir,
            )
    except (HfHubHTTPError, LocalTokenNotFoundError) as err:  # the Hub client's own message says what to do
        print(f"hive-release: {err}", file=sys.stderr)
        return 1
    except ReleaseError as err:
        print(f"hive-release: error: {err}", file=sys.stderr)
        return 2
    _print_plan(commits, args.dry_run, args.private, args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
