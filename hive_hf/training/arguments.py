"""Argument plumbing shared by the example scripts: one JSON file plus flags, and per-stage `TrainingArguments`."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)


def parse_json_or_flags(parser: HfArgumentParser, argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse flags, or one JSON file optionally followed by flags that override it (lists become repeated values)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        flags = []
        for key, value in json.loads(Path(argv[0]).read_text()).items():
            values = value if isinstance(value, list) else [value]
            flags += [f"--{key}", *(str(v) for v in values)]
        argv = flags + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def stage_training_args(
    args: TrainingArguments, stage: int, output_dir: str | Path, global_batch_size: int, **overrides: Any
) -> TrainingArguments:
    """Plain `TrainingArguments` for one stage: `args` with the stage's folder, run name, Hub repo and
    hyperparameters (`overrides`), and the gradient accumulation that makes up `global_batch_size` over
    `per_device_train_batch_size` x processes."""
    per_step = args.per_device_train_batch_size * args.world_size
    accumulation = max(1, math.ceil(global_batch_size / per_step))
    if accumulation * per_step != global_batch_size:
        logger.warning(
            f"stage {stage}: global batch {global_batch_size} is not a multiple of {args.per_device_train_batch_size}"
            f" x {args.world_size} processes; using {accumulation * per_step}."
        )
    plain = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    plain.update(
        output_dir=str(output_dir),
        gradient_accumulation_steps=accumulation,
        run_name=f"{args.run_name or Path(args.output_dir).name}-stage{stage}",
        hub_model_id=f"{args.hub_model_id}-stage{stage}" if args.hub_model_id else None,
        **overrides,
    )
    return TrainingArguments(**plain)
