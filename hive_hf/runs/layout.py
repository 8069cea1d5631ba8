"""The folder a staged run writes: the one place that knows its file names (`RunLayout`).

HIVE pre-training (`hive_hf.cli.pretrain`, stages 1-3) and the LLaVA fine-tuning of an encoder
(`hive_hf.cli.vlm_finetune`, stages 1-2) write the same layout; the release, the analyses and the benchmarks read it.

    run_args.json               what was run, readable without unpickling (no tokens)
    results.md / results.json   the run's summary table and its numbers (`hive_hf.runs.records.write_results`)
    backbones/vision, text      tiny stand-in backbones (`--tiny_backbones`, `--tiny_text_backbone`), pre-trained
                                briefly on the run's own data (`--tiny_*_pretrain_steps`)
    init/                       the model and processor before stage 1, saved once so that a restart starts from the
                                same weights
    stage<k>/checkpoint-<step>  the Trainer's checkpoints while stage k runs (`--save_steps`; kept for resuming)
    stage<k>/                   once stage k finished: the weights with config and processor, ready for
                                `from_pretrained`; the marker (`hive_stage.json` / `vlm_stage.json`: metrics and loss
                                history); all_results.json, train_results.json, trainer_state.json;
                                training_args.json (the stage's arguments; the Trainer's training_args.bin holds
                                the same pickled, and is never pushed); loss_curve.png
    loss_curves.png             every stage run, one after another

A stage folder's name is also the tag its weights get on the Hub (`stage_tag`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from transformers import PreTrainedModel, ProcessorMixin, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

HIVE_STAGE_MARKER = "hive_stage.json"  # a finished pre-training stage
VLM_STAGE_MARKER = "vlm_stage.json"  # a finished VLM fine-tuning stage
TRAINING_ARGS_JSON = "training_args.json"  # next to the Trainer's `training_args.bin`, which is a pickle

_STAGE_NAME = re.compile(r"stage(\d+)")


def stage_tag(stage: int) -> str:
    """The name of stage `stage`'s folder, and the Hub tag of its weights: `stage<k>`."""
    return f"stage{stage}"


def stage_of(name: str) -> int | None:
    """The stage a folder name or tag (`stage<k>`) stands for, or None."""
    match = _STAGE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def read_stage_marker(stage_dir: str | Path, marker: str = HIVE_STAGE_MARKER) -> dict[str, Any]:
    """What a finished stage recorded in its folder (metrics and loss history); `{}` when it wrote no marker."""
    path = Path(stage_dir) / marker
    return json.loads(path.read_text()) if path.is_file() else {}


def write_training_args(args: TrainingArguments, folder: str | Path) -> Path:
    """Write `args` as `training_args.json` in `folder` (`TrainingArguments.to_json_string`: tokens masked), what a
    run's records and the Hub get instead of the pickled `training_args.bin`."""
    path = Path(folder) / TRAINING_ARGS_JSON
    path.write_text(args.to_json_string() + "\n")
    return path


def read_training_args(folder: str | Path) -> dict[str, Any] | None:
    """The arguments `write_training_args` wrote into `folder`, or None if it wrote none."""
    path = Path(folder) / TRAINING_ARGS_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest `checkpoint-<step>` in `folder` that was written to the end, or None.

    A run killed while saving leaves a checkpoint folder without (or with a half-written) `trainer_state.json`,
    which the Trainer writes last; resuming from it would fail, so it is passed over.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_dir())
    for _step, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning(f"{path} is incomplete (the run stopped while saving it); looking for an older one")
            continue
        return str(path)
    return None


@dataclass(frozen=True)
class RunLayout:
    """Where a staged run keeps what (see the module docstring). `marker` names the file that says a stage finished:
    `HIVE_STAGE_MARKER` for pre-training, `VLM_STAGE_MARKER` for the VLM fine-tuning."""

    root: Path
    marker: str = HIVE_STAGE_MARKER

    RUN_ARGS: ClassVar[str] = "run_args.json"
    RESULTS: ClassVar[str] = "results.md"
    LOSS_CURVE: ClassVar[str] = "loss_curve.png"
    LOSS_CURVES: ClassVar[str] = "loss_curves.png"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def init_dir(self) -> Path:
        return self.root / "init"

    @property
    def backbones_dir(self) -> Path:
        return self.root / "backbones"

    @property
    def vision_backbone(self) -> Path:
        return self.backbones_dir / "vision"

    @property
    def text_backbone(self) -> Path:
        return self.backbones_dir / "text"

    @property
    def run_args(self) -> Path:
        return self.root / self.RUN_ARGS

    @property
    def results(self) -> Path:
        return self.root / self.RESULTS

    @property
    def loss_curves(self) -> Path:
        return self.root / self.LOSS_CURVES

    def stage_dir(self, stage: int) -> Path:
        return self.root / stage_tag(stage)

    def marker_path(self, stage: int) -> Path:
        return self.stage_dir(stage) / self.marker

    def finished(self, stage: int) -> bool:
        """Stage `stage` ran to the end: its marker is written after its weights."""
        return self.marker_path(stage).is_file() and (self.stage_dir(stage) / "config.json").is_file()

    def read_marker(self, stage: int) -> dict[str, Any]:
        """What a finished stage recorded (its metrics and loss history); `{}` when it wrote no marker."""
        return read_stage_marker(self.stage_dir(stage), self.marker)

    def write_marker(self, stage: int, record: Mapping[str, Any]) -> None:
        """Mark stage `stage` finished, with what it recorded; written last, after the weights."""
        self.marker_path(stage).write_text(json.dumps(dict(record), indent=2))

    def finished_stages(self, stages: Sequence[int], warn: bool = True) -> dict[int, Path]:
        """`{stage: folder}` for the stages among `stages` that finished, in order; a stage folder left unfinished
        is reported (with `warn`) and left out."""
        done = {}
        for stage in stages:
            folder = self.stage_dir(stage)
            if self.finished(stage):
                done[stage] = folder
            elif warn and folder.is_dir():
                logger.warning(f"{folder} has no {self.marker}: stage {stage} did not finish.")
        return done

    def last_checkpoint(self, stage: int) -> str | None:
        """The checkpoint an interrupted stage resumes from (`last_complete_checkpoint`)."""
        return last_complete_checkpoint(self.stage_dir(stage))

    def write_init(self, build: Callable[[], tuple[PreTrainedModel, ProcessorMixin]]) -> Path:
        """The stage-1 starting point: `build()` once, saved to `init/`; a restarted run finds it there."""
        if (self.init_dir / "config.json").is_file() and (self.init_dir / "processor_config.json").is_file():
            return self.init_dir
        model, processor = build()
        model.save_pretrained(self.init_dir)
        processor.save_pretrained(self.init_dir)
        return self.init_dir

    def write_run_args(self, **groups: Any) -> Path:
        """`run_args.json`: what was run, one entry per argument group (dataclasses are written field by field),
        readable without unpickling `training_args.bin`. Tokens must be taken out of the groups before."""
        record = {name: dataclasses.asdict(group) if dataclasses.is_dataclass(group) else group
                  for name, group in groups.items()}
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_args.write_text(json.dumps(record, indent=2, default=str))
        return self.run_args
