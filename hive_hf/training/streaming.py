"""Streamed training data that resumes exactly and cheaply.

A `datasets.IterableDataset` is read by a `torchdata` `StatefulDataLoader` over this process's own shards
(`hive_hf.data.shards.split_stream`). Every checkpoint holds the loader's state, one file per process
(`<checkpoint>/data_state/rank<r>.json`): for each DataLoader worker its shard, the offset in it and its epoch, and
which worker gives the next batch. A resumed run loads it (`Trainer.get_resumed_dataloader`, which transformers 5.25
has and 5.6 has not) and reads on from there: nothing trained is decoded or collated again, so resuming costs the
same at any step (at most each worker reads its current shard's tar entries up to the offset, without decoding
them), and the batches are the ones an uninterrupted run trains on.

The loader is deliberately not `accelerator.prepare`d: accelerate would shard the stream again per process (or, with
older accelerate or too few shards, have every process read all of it and keep its slice of each batch).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import datasets
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..data.shards import split_stream

logger = logging.get_logger(__name__)

DATA_STATE_DIR = "data_state"


def is_stream(dataset: Any) -> bool:
    return isinstance(dataset, datasets.IterableDataset)


def streamed_dataloader(dataset: datasets.IterableDataset, batch_size: int, collate_fn: Any,
                        args: TrainingArguments) -> StatefulDataLoader:
    """A `StatefulDataLoader` over this process's shards of `dataset`, with the DataLoader settings of `args`
    (workers, pinning, prefetch; batches in worker order, so the order is the same on every run)."""
    dataset = split_stream(dataset, args.process_index, args.world_size, args.dataloader_num_workers)
    workers = args.dataloader_num_workers
    with warnings.catch_warnings():
        # torchdata's constructor calls torch.set_vital, which torch deprecated; nothing of ours to change.
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return StatefulDataLoader(
            dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, drop_last=args.dataloader_drop_last,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
            multiprocessing_context=args.dataloader_multiprocessing_context if workers > 0 else None,
            in_order=True,
        )


def data_state_path(checkpoint: str | Path, process_index: int) -> Path:
    return Path(checkpoint) / DATA_STATE_DIR / f"rank{process_index}.json"


def save_data_state(checkpoint: str | Path, args: TrainingArguments, batches: int, loader: StatefulDataLoader) -> Path:
    """Write `loader`'s position after `batches` batches to `checkpoint` (written, then renamed), with the readers
    it is a position of."""
    path = data_state_path(checkpoint, args.process_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    record = {"batches": batches, "processes": args.world_size, "workers": args.dataloader_num_workers,
              "loader": loader.state_dict()}
    partial.write_text(json.dumps(record))
    os.replace(partial, path)
    return path


def load_data_state(checkpoint: str | Path, args: TrainingArguments, batches: int) -> dict[str, Any] | None:
    """The loader state saved in `checkpoint` for this process, or None if it holds none.

    Raises `ValueError` when it was saved by another number of processes or workers (its shards are other readers'),
    or after another number of batches than the resumed run skips (`batches`)."""
    path = data_state_path(checkpoint, args.process_index)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    saved = (record["processes"], record["workers"])
    if saved != (args.world_size, args.dataloader_num_workers):
        raise ValueError(f"{checkpoint} holds the stream position of {saved[0]} process(es) x {saved[1]} DataLoader "
                         f"worker(s); resume with those (`dataloader_num_workers` {saved[1]}), since each reads its "
                         "own shards.")
    if record["batches"] != batches:
        raise ValueError(f"The stream position in {checkpoint} is after {record['batches']} batches, but the "
                         f"resumed run skips {batches}: resume with the checkpoint's batch size and gradient "
                         "accumulation.")
    return record["loader"]


class DataStateCallback(TrainerCallback):
    """Saves the training DataLoader's position into every checkpoint, on every process, when the loader is a
    `StatefulDataLoader` (a streamed dataset: `HiveTrainer.get_train_dataloader`). `on_save` runs right after the
    Trainer wrote the checkpoint, when the loader has given exactly the batches of the steps trained so far."""

    def on_save(self, args: TrainingArguments, state, control, train_dataloader=None, **kwargs):
        if isinstance(train_dataloader, StatefulDataLoader):
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            batches = state.global_step * args.gradient_accumulation_steps  # what a resume would skip
            save_data_state(checkpoint, args, batches, train_dataloader)
        return control
