#!/usr/bin/env python
"""Data throughput of a streamed pre-training: images per second per DataLoader worker through the read, the JPEG
decode, the SigLIP-384 preprocessing and the tokenisation, the number of workers that keep up with a given step
time, and what resuming a stream costs near the start and near the end of a stage.

    # JPEG shards of the embedded shapes drawn at 512 px (a web image's size), written once to outputs/
    python benchmarks/bench_data.py
    # the file the README quotes
    python benchmarks/bench_data.py --output results/bench_data.json

Everything is offline: the shards are the captioned shapes (`hive_hf.data.synthetic`) written by `write_shards` as
JPEG (quality 95); the image processor is a `SiglipImageProcessorPil` built here with the paper's 384 x 384 (the
PIL backend; transformers' torchvision backend, where installed, is another measurement); the tokenizer is a
word-level one built from the captions, captions cut at 77 tokens. The per-stage times run in this process, one
image (or one batch) after another: one worker's work. The DataLoader rows run the training collator
(`HiveCaptionCollator`: decode + preprocess + tokenise) in `--workers` worker processes over the shards
(`hive_hf.training.streaming.streamed_dataloader`, as a streamed stage reads them). The resume rows time a new
loader's first batch after restoring a position saved at batch k (`load_state_dict`, what a resumed stage does)
against replaying the k batches before it (accelerate's `skip_first_batches`, what `Trainer` does by default).
"""

from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import skip_first_batches
from transformers import SiglipImageProcessorPil, TrainingArguments
from transformers.utils import logging

from hive_hf.cli.parsing import HiveArgumentParser, user_errors
from hive_hf.data import decode_image, load_caption_dataset, make_shapes_dataset, write_shards
from hive_hf.processing_hive import HiveProcessor
from hive_hf.runs.records import write_results
from hive_hf.runs.tables import markdown_table
from hive_hf.tiny_backbones import build_word_tokenizer
from hive_hf.training import HiveCaptionCollator
from hive_hf.training.streaming import streamed_dataloader

logger = logging.get_logger("hive_hf.bench_data")


@dataclass
class DataBenchmarkArguments:
    num_images: int = field(default=512, metadata={"help": "Images in the shards."})
    source_size: int = field(default=512, metadata={"help": "Side of the JPEGs in the shards (web images: ~500)."})
    image_size: int = field(default=384, metadata={"help": "Side the image processor resizes to (the paper's 384)."})
    max_caption_length: int = field(default=77, metadata={"help": "Caption tokens kept (the paper's 77)."})
    num_shards: int = field(default=8, metadata={"help": "Shards written."})
    batch_size: int = field(default=32, metadata={"help": "Images per collated batch (one process's micro-batch)."})
    workers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "DataLoader worker counts timed."})
    process_batch: int = field(
        default=128, metadata={"help": "Images one process trains on per optimizer step, for the workers table "
                                       "(the paper: global batch 1024 over 8 GPUs)."})
    step_seconds: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0],
        metadata={"help": "Optimizer step times (s) the workers table is made for."})
    shards_dir: str = field(default="outputs/bench_data/shards", metadata={"help": "Where the shards are written."})
    output: str = field(default="outputs/bench_data.json",
                        metadata={"help": "Results (.json and .md); results/bench_data.json regenerates the README's."})
    repeats: int = field(default=3, metadata={"help": "Resume timings per position (their median is reported)."})
    seed: int = field(default=0, metadata={"help": "Seed of the shapes."})
    threads: int = field(default=1, metadata={"help": "torch threads of this process (OMP_NUM_THREADS)."})

    def __post_init__(self):
        for name in ("num_images", "source_size", "image_size", "num_shards", "batch_size", "process_batch",
                     "repeats", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.num_images < 4 * self.batch_size:
            raise ValueError(f"--num_images {self.num_images} must hold at least 4 batches of --batch_size "
                             f"{self.batch_size}, to time resumes near the start and near the end.")
        if any(w < 1 for w in self.workers) or max(self.workers) > self.num_shards:
            raise ValueError(f"--workers {self.workers} must be from 1 to --num_shards {self.num_shards}.")


def build_shards(args: DataBenchmarkArguments) -> Path:
    """The JPEG shards, written once (a folder that holds them is reused)."""
    folder = Path(args.shards_dir)
    if len(list(folder.glob("*.tar"))) != args.num_shards:
        shapes = make_shapes_dataset(args.num_images, image_size=args.source_size, seed=args.seed)
        write_shards(shapes, folder, num_shards=args.num_shards, image_format="jpg")
    return folder


def build_collator(args: DataBenchmarkArguments, captions: list[str]) -> HiveCaptionCollator:
    image_processor = SiglipImageProcessorPil(size={"height": args.image_size, "width": args.image_size})
    processor = HiveProcessor(image_processor, build_word_tokenizer(captions), max_length=args.max_caption_length)
    return HiveCaptionCollator(processor, max_length=args.max_caption_length)


def per_stage(folder: Path, collator: HiveCaptionCollator, batch_size: int) -> dict[str, float]:
    """Seconds per image of each step, in this process (one worker's work)."""
    started = time.perf_counter()
    rows = list(load_caption_dataset(str(folder), streaming=True))
    times = {"read (tar)": time.perf_counter() - started}
    started = time.perf_counter()
    images = [decode_image(row["image"]) for row in rows]
    times["JPEG decode"] = time.perf_counter() - started
    batches = [slice(i, i + batch_size) for i in range(0, len(rows), batch_size)]
    processor = collator.processor
    started = time.perf_counter()
    for part in batches:
        processor.image_processor(images[part], return_tensors="pt")
    times["resize + normalise to 384"] = time.perf_counter() - started
    started = time.perf_counter()
    for part in batches:
        processor(text=[row["caption"] for row in rows[part]], max_length=collator.max_length, add_eos=True,
                  return_labels=True)
    times["tokenise"] = time.perf_counter() - started
    started = time.perf_counter()
    for part in batches:
        collator(rows[part])
    times["read + collate (all of it)"] = times["read (tar)"] + time.perf_counter() - started
    return {name: seconds / len(rows) for name, seconds in times.items()}


def loader_args(workers: int, scratch: str) -> TrainingArguments:
    return TrainingArguments(output_dir=scratch, use_cpu=True, report_to="none", dataloader_num_workers=workers)


def loader_rate(folder: Path, collator: HiveCaptionCollator, batch_size: int, workers: int, scratch: str) -> float:
    """Images per second through a streamed DataLoader with `workers` workers, worker start-up included."""
    stream = load_caption_dataset(str(folder), streaming=True)
    started, images = time.perf_counter(), 0
    for batch in streamed_dataloader(stream, batch_size, collator, loader_args(workers, scratch)):
        images += len(batch["input_ids"])
    return images / (time.perf_counter() - started)


def resume_costs(folder: Path, collator: HiveCaptionCollator, batch_size: int, workers: int, batches: list[int],
                 scratch: str, repeats: int) -> dict[int, dict[str, float]]:
    """{k: median seconds to the first batch after batch k, restored from a saved position and replayed}, the
    positions taken in turn `repeats` times."""
    runs = [resume_cost(folder, collator, batch_size, workers, k, scratch) for _ in range(repeats) for k in batches]
    return {k: {way: statistics.median(run[way] for run in runs[i::len(batches)]) for way in ("restore", "replay")}
            for i, k in enumerate(batches)}


def resume_cost(folder: Path, collator: HiveCaptionCollator, batch_size: int, workers: int, k: int,
                scratch: str) -> dict[str, float]:
    """Seconds to the first batch after batch k: restored from the position saved there, and replayed. Each loader
    is shut down before the next is timed, so that no worker of another one runs meanwhile."""
    args = loader_args(workers, scratch)

    def loader():
        return streamed_dataloader(load_caption_dataset(str(folder), streaming=True), batch_size, collator, args)

    reading = loader()
    position = iter(reading)
    for _ in range(k):
        next(position)
    state = reading.state_dict()
    del position, reading  # its workers stop

    def restored():
        resumed = loader()
        resumed.load_state_dict(state)
        return resumed

    return {"restore": first_batch_seconds(restored), "replay": first_batch_seconds(lambda: skip_first_batches(
        loader(), k))}


def first_batch_seconds(make) -> float:
    """Seconds from building a loader (`make()`) to its first batch; the loader is then shut down."""
    started = time.perf_counter()
    loader = make()
    next(iter(loader))
    seconds = time.perf_counter() - started
    del loader
    gc.collect()
    return seconds


def report(results: dict[str, Any], args: DataBenchmarkArguments) -> str:
    stages = results["per_image_seconds"]
    lines = [f"One worker's steps, per image ({args.num_images} JPEGs of {args.source_size} px in {args.num_shards} "
             f"shards, SigLIP preprocessing to {args.image_size} px, captions to {args.max_caption_length} tokens):",
             "", markdown_table(["step", "ms per image", "images/s"],
                                [[name, f"{s * 1e3:.2f}", f"{1 / s:.0f}"] for name, s in stages.items()], "lrr")]
    lines += ["", "Streamed DataLoader (the training collator in worker processes, start-up included):", "",
              markdown_table(["workers", "images/s", "images/s per worker"],
                             [[str(w), f"{r:.0f}", f"{r / w:.0f}"] for w, r in results["loader"].items()], "rrr")]
    rate = results["worker_images_per_second"]
    rows = [[f"{t:g} s", f"{args.process_batch / t:.0f}", str(math.ceil(args.process_batch / t / rate))]
            for t in args.step_seconds]
    lines += ["", f"Workers per process that keep up with {args.process_batch} images per optimizer step, at "
                  f"{rate:.0f} images/s per worker (the collate row above; more cores than workers assumed):", "",
              markdown_table(["step time", "images/s needed", "workers"], rows, "rrr")]
    resume = results["resume_seconds"]
    rows = [[f"{k} of {results['batches']}", f"{c['restore']:.2f} s", f"{c['replay']:.2f} s"]
            for k, c in resume.items()]
    title = (f"First batch after resuming at batch k ({results['resume_workers']} workers, {args.batch_size} images "
             f"a batch; median of {args.repeats}): the saved position restored, against replaying the batches "
             "before it:")
    lines += ["", title, "", markdown_table(
        ["resumed after batch", "restored (load_state_dict)", "replayed (skip_first_batches)"], rows, "lrr")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HiveArgumentParser(DataBenchmarkArguments, description=__doc__.split("\n\n")[0])
    with user_errors(parser.prog, parser.flag_names()):
        (args,) = parser.parse(argv)
    torch.set_num_threads(args.threads)
    folder = build_shards(args)
    captions = [row["caption"] for row in load_caption_dataset(str(folder), streaming=True)]
    collator = build_collator(args, captions)
    results: dict[str, Any] = {"arguments": vars(args).copy()}
    results["per_image_seconds"] = per_stage(folder, collator, args.batch_size)
    results["worker_images_per_second"] = 1 / results["per_image_seconds"]["read + collate (all of it)"]
    with tempfile.TemporaryDirectory() as scratch:
        results["loader"] = {w: loader_rate(folder, collator, args.batch_size, w, scratch) for w in args.workers}
        batches = args.num_images // args.batch_size
        results["batches"], results["resume_workers"] = batches, max(args.workers)
        results["resume_seconds"] = resume_costs(folder, collator, args.batch_size, max(args.workers),
                                                 [1, batches // 2, batches - 1], scratch, args.repeats)
    table = report(results, args)
    print(table)
    path = write_results(args.output, table, results, seeds=[args.seed], threads=args.threads)
    print(f"\nresults written to {path} and {path.with_suffix('.json')}")
    return results


if __name__ == "__main__":
    main()
