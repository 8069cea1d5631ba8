"""The folders a release commits, one per repository and stage: weights, processor, model code and card."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoProcessor

from ..configuration_hive import HiveConfig
from ..modeling_hive import HiveForConditionalGeneration, HiveVisionEncoderModel
from ..runs.layout import stage_tag
from .cards import CardOptions, render_model_card
from .records import StageRecord

# An encoder-only repo holds no LLM: its config maps only the classes it can build.
_ENCODER_AUTO_CLASSES = ("AutoConfig", "AutoModel")
_FULL_EXTRAS = ("all_results.json", "trainer_state.json")  # the stage's Trainer records, next to the full model


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
    tag = stage_tag(stage)
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
    encoder.config.encoder_only = True  # the full model's from_pretrained refuses it
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
