"""Streamed training from WebDataset shards: shards written from a caption dataset, each reader its own shards, an
exact resume that reads nothing again, and a resume that does not report the tied lm_head as missing."""

import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from torchrun_streaming import stream_trainer
from transformers import TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from hive_hf.data import load_caption_dataset, make_shapes_dataset
from hive_hf.data.shards import split_stream, write_shards
from hive_hf.training.streaming import data_state_path, streamed_dataloader

ROWS, SHARDS, BATCH = 64, 4, 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(ROWS, image_size=16, seed=0)


@pytest.fixture(scope="module")
def shards(shapes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(shapes, folder, num_shards=SHARDS)
    return folder


# -- the shard writer -------------------------------------------------------------------------------------------------
def test_write_shards_holds_every_row_in_webdataset_layout(shapes, tmp_path):
    shapes = shapes.cast_column("image", shapes.features["image"].__class__(decode=False))
    written = write_shards(shapes, tmp_path, samples_per_shard=24)
    assert [p.name for p in written.paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert written.rows == [24, 24, 16] and written.skipped == 0
    with tarfile.open(written.paths[0]) as tar:
        assert tar.getnames()[:4] == ["000000000.jpg", "000000000.txt", "000000001.jpg", "000000001.txt"]
    stream = load_caption_dataset(str(tmp_path), streaming=True)
    rows = list(stream)
    assert [r["caption"] for r in rows] == list(shapes["caption"])
    assert [r["__key__"] for r in rows[:2]] == ["000000000", "000000001"]


def test_write_shards_spreads_rows_shuffles_and_skips_bad_images(shapes, tmp_path):
    rows = [{"image": {"bytes": b"broken", "path": None}, "caption": "a bad one"}] + [
        {"image": row["image"], "caption": row["caption"]} for row in shapes.select(range(9))]
    import datasets

    data = datasets.Dataset.from_list(rows[:1]).cast_column("image", datasets.Image(decode=False))
    data = datasets.concatenate_datasets([data, shapes.select(range(9)).cast_column(
        "image", datasets.Image(decode=False)).select_columns(["image", "caption"])])
    written = write_shards(data, tmp_path / "png", num_shards=4, image_format="png", shuffle_seed=3)
    assert written.skipped == 1 and sum(written.rows) == 9 and len(written.paths) == 4
    with tarfile.open(written.paths[0]) as tar:
        assert tar.getnames()[0].endswith(".png")
    captions = [r["caption"] for r in load_caption_dataset(str(tmp_path / "png"), streaming=True)]
    assert sorted(captions) == sorted(shapes.select(range(9))["caption"]) and captions != shapes["caption"][:9]
    for bad, words in [(dict(), "exactly one"), (dict(num_shards=99), "more than"),
                       (dict(num_shards=2, image_format="gif"), "image_format")]:
        with pytest.raises(ValueError, match=words):
            write_shards(data, tmp_path / "x", **bad)


# -- each reader its own shards -----------------------------------------------------------------------------------------
def keys(dataset):
    return [int(r["__key__"]) for r in dataset]


def test_each_process_reads_only_its_own_shards(shards):
    stream = load_caption_dataset(str(shards), streaming=True)
    parts = [keys(split_stream(stream, rank, 2, num_workers=1)) for rank in (0, 1)]
    per_shard = ROWS // SHARDS
    assert parts[0] == list(range(0, per_shard)) + list(range(2 * per_shard, 3 * per_shard))  # shards 0 and 2
    assert parts[1] == list(range(per_shard, 2 * per_shard)) + list(range(3 * per_shard, 4 * per_shard))
    with pytest.raises(ValueError, match=r"4 shard\(s\) for 2 process\(es\) x 3 DataLoader worker\(s\) = 6 readers"):
        split_stream(stream, 0, 2, num_workers=3)
    with pytest.raises(ValueError, match="cannot be split evenly over 3 processes"):
        split_stream(stream, 0, 3, num_workers=1)


def streamed_keys(shards, out, processes, workers, global_batch=8):
    """{step: sorted keys of its global batch} of a 4-step streamed stage on `processes` x `workers` readers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                                 if processes > 1 else [])
    proc = subprocess.run([*launch, str(ROOT / "tests" / "torchrun_streaming.py"), str(shards), str(out),
                           str(workers), str(global_batch)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"keys-rank{rank}.json").read_text()) for rank in range(processes)]
    return {step: sorted(k for rank in ranks for k in rank[step]) for step in ranks[0]}, ranks


@pytest.mark.slow
def test_one_and_two_processes_train_on_the_same_global_batches(shards, tmp_path):
    """2 processes x 1 worker read what 1 process x 2 workers reads, each process its own two shards: the same
    global batch at every step (as map-style data give)."""
    one, _ = streamed_keys(shards, tmp_path / "one", processes=1, workers=2)
    two, ranks = streamed_keys(shards, tmp_path / "two", processes=2, workers=1)
    assert one == two and sorted(one) == ["1", "2", "3", "4"] and all(len(keys) == 8 for keys in one.values())
    per_shard = ROWS // SHARDS
    for rank, steps in enumerate(ranks):  # process r reads shards r and r + 2 only
        assert {k // per_shard for keys in steps.values() for k in keys} <= {rank, rank + 2}


# -- exact resume -------------------------------------------------------------------------------------------------------
class StopAt(TrainerCallback):
    """Stops training after step `step` has been saved: a kill right after that checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_a_resumed_stream_trains_on_exactly_the_samples_of_an_uninterrupted_run(shards, shapes, tmp_path, caplog):
    whole = stream_trainer(shards, shapes["caption"], tmp_path / "whole")
    whole.train()
    killed = stream_trainer(shards, shapes["caption"], tmp_path / "killed", callbacks=[StopAt(6)])
    killed.train()
    assert killed.state.global_step == 6 and whole.seen[:6] == killed.seen
    state = json.loads(data_state_path(tmp_path / "killed" / "checkpoint-6", 0).read_text())
    assert state["batches"] == 6 and set(state["loader"]["_snapshot"]["_worker_snapshots"]) == {"worker_0", "worker_1"}

    resumed = stream_trainer(shards, shapes["caption"], tmp_path / "killed")
    with caplog.at_level(logging.WARNING):
        hf_logging.enable_propagation()
        resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-6"))
    # the samples, in order, of steps 7-10 of the uninterrupted run; nothing trained before is collated again
    assert resumed.seen == whole.seen[6:]
    assert len({k for batch in whole.seen for k in batch}) == 10 * BATCH  # 40 distinct samples: no repeat
    after = {step: loss for step, loss in losses(resumed).items() if step > 6}  # the log holds steps 1-6 too
    assert sorted(after) == [7, 8, 9, 10] and all(after[s] == losses(whole)[s] for s in after), (after, losses(whole))
    # the tied lm_head is not saved (it is the embedding): a correct resume does not call it missing ...
    assert not [r for r in caplog.records if "missing keys" in r.getMessage()]
    assert resumed.model.language_model.lm_head.weight is resumed.model.language_model.get_input_embeddings().weight

    # ... while a weight really missing from a checkpoint still is
    checkpoint = tmp_path / "killed" / "checkpoint-9"
    weights = load_file(checkpoint / "model.safetensors")
    dropped = next(name for name in weights if name.startswith("projectors."))
    save_file({k: v for k, v in weights.items() if k != dropped}, checkpoint / "model.safetensors",
              metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        stream_trainer(shards, shapes["caption"], tmp_path / "killed").train(resume_from_checkpoint=str(checkpoint))
    missing = [r.getMessage() for r in caplog.records if "missing keys" in r.getMessage()]
    assert missing and all(dropped in message for message in missing)


def test_resume_collates_one_batch_wherever_the_stream_stopped(shards, shapes):
    """O(1) resume: restoring a position near the end of the stream collates exactly one batch to give the next
    one, as near the start does (a replay would collate every batch before it)."""
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none", dataloader_num_workers=0)
    collated = []

    def collate(rows):
        collated.append(len(rows))
        return [int(r["__key__"]) for r in rows]

    stream = load_caption_dataset(str(shards), streaming=True)
    for stop in (1, ROWS // BATCH - 1):
        loader = streamed_dataloader(stream, BATCH, collate, args)
        batches = iter(loader)
        expected = [next(batches) for _ in range(stop + 1)][-1]
        first = streamed_dataloader(stream, BATCH, collate, args)
        first_iter = iter(first)
        for _ in range(stop):
            next(first_iter)
        loader = streamed_dataloader(stream, BATCH, collate, args)
        loader.load_state_dict(first.state_dict())
        collated.clear()
        assert next(iter(loader)) == expected and collated == [BATCH]


# -- the shard writer's command -------------------------------------------------------------------------------------
def test_write_shards_command_makes_shards_of_the_synthetic_set(tmp_path, capsys):
    from hive_hf.cli import write_shards as command

    assert command.main(["synthetic", str(tmp_path / "s"), "--max_samples", "10", "--num_shards", "2",
                         "--image_size", "16"]) == 0
    assert "10 rows in 2 shards" in capsys.readouterr().out
    assert len(list(load_caption_dataset(str(tmp_path / "s"), streaming=True))) == 10


@pytest.mark.parametrize("argv, words", [
    (["synthetic", "out"], "one of the arguments --samples_per_shard --num_shards is required"),
    (["synthetic", "out", "--num_shards", "0"], "--num_shards must be positive, got 0"),
    (["synthetic", "out", "--num_shards", "5", "--max_samples", "3"], "--num_shards 5 is more than"),
    (["./no/such/folder", "out", "--num_shards", "2"], "does not exist"),
])
def test_write_shards_command_reports_mistakes_in_one_line(argv, words, tmp_path, monkeypatch, capsys):
    from hive_hf.cli import write_shards as command

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        command.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{command.PROG}: error: ")]
    assert stop.value.code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
