"""HIVE model cards: Jinja templates (`hive_hf/model_cards/`, package data) filled with what a release knows."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import transformers
from huggingface_hub import ModelCard, ModelCardData, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from .. import __version__
from ..configuration_hive import HiveConfig
from ..runs.stages import HIVE_STAGES
from ..runs.tables import results_table
from .records import StageRecord

PAPER_URL = "https://arxiv.org/abs/2604.00086"
REPO_KINDS = ("full", "encoder", "stock")
CARD_TEMPLATES = {"full": "hive_full.md", "encoder": "hive_encoder.md", "stock": "stock_encoder.md"}
PIPELINE_TAGS = {"full": "image-text-to-text", "encoder": "image-feature-extraction", "stock": "image-feature-extraction"}
REPO_LABELS = {
    "full": "full model (encoder + projectors + LLM, remote code)",
    "encoder": "vision encoder (`HiveVisionEncoderModel`, remote code)",
    "stock": "vision encoder in stock transformers format (no remote code)",
}
FUSION_DESCRIPTIONS = {
    "joint": "at each paired LLM layer, the projected features of one tapped encoder layer become extra keys/values "
             "of that layer's self-attention (the authors' released code)",
    "gated": "a cross-attention block with a zero-initialised tanh gate before each paired LLM layer (the paper's "
             "equation read literally, as in Flamingo)",
    "concat": "the self-attention (SA) baseline the paper compares HIVE against: one layer's projected tokens are "
              "concatenated into the LLM input, LLaVA-style",
}


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


def _card_data(kind: str, config: HiveConfig, options: CardOptions) -> ModelCardData:
    """The card's YAML front matter: license, pipeline tag, base models, datasets and tags."""
    base_models = [m for m in (options.vision_base_model, options.text_base_model) if m]
    tags = list(dict.fromkeys(["hive", "vision-encoder", f"hive-{config.fusion}",
                               config.vision_config.model_type, *([config.text_config.model_type] * (kind == "full"))]))
    return ModelCardData(
        license=options.license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        base_model=base_models or None,
        # Several base models would otherwise read as a merge on the Hub; HIVE trains new weights from them.
        base_model_relation="finetune" if base_models else None,
        datasets=list(options.datasets) or None,
        tags=tags,
    )


def _data_description(stages: Sequence[StageRecord], options: CardOptions) -> str:
    """The training data in one line: the named datasets (linked when they are Hub ids) and pairs per epoch."""
    data_size = next((r.data_size for r in stages if r.data_size), None)
    datasets = ", ".join(_link(d if as_hub_id(d) else None, f"`{d}`", "datasets/") for d in options.datasets)
    return (datasets or "the datasets were not named at release") + (
        f"; about {data_size:,} image-caption pairs per epoch" if data_size else "")


def _templates(template_dir: str | os.PathLike | None) -> jinja2.Environment:
    """The card templates: the package's `model_cards/`, or `template_dir`."""
    if template_dir is not None:
        loader: jinja2.BaseLoader = jinja2.FileSystemLoader(str(template_dir))
    else:
        loader = jinja2.PackageLoader("hive_hf", "model_cards")
    return jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)


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
    released = [r.stage for r in stages]
    context = {
        "card_data": _card_data(kind, config, options).to_yaml(),
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
        "stages_note": "" if released == list(HIVE_STAGES.stages) else
        f"This revision has been through stage(s) {', '.join(str(s) for s in released)}.",
        "optimization": _optimization(stages),
        "data_description": _data_description(stages, options),
        "loss_curve": loss_curve,
        "results": [{"source": name, "table": data if isinstance(data, str) else results_table(data)}
                    for name, data in options.results],
        "evaluation_note": evaluation_note,
        "license": options.license,
        "versions": {"hive_hf": __version__, "transformers": transformers.__version__},
    }
    content = _templates(options.template_dir).get_template(CARD_TEMPLATES[kind]).render(**context)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", content).lstrip())
