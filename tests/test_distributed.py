"""One recipe on 1 or 2 processes (CPU, gloo): DDP, FSDP and DeepSpeed ZeRO-2 keep every stage's global batch, its
optimizer steps, its losses and its frozen/trained weights; a run that cannot keep them stops with a named error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts import user_error
from transformers import TrainingArguments

from hive_hf import HiveForConditionalGeneration
from hive_hf.training import arguments
from hive_hf.training.arguments import split_global_batch, stage_training_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_pretrain.py"
DEMO = ROOT / "examples" / "configs" / "demo.json"
CONFIGS = ROOT / "examples" / "configs"

# 96 captions, one epoch per stage, global batches 16, 8, 16: 6, 12 and 6 optimizer steps. With at most 8 per device,
# one process accumulates 2 x 8 in stages 1 and 3; two processes take 8 each, and shrink to 4 each in stage 2.
RECIPE = ["--max_train_samples", "96", "--per_device_train_batch_size", "8", "--stage_batch_sizes", "16", "8", "16",
          "--stage_epochs", "1", "1", "1", "--logging_steps", "1", "--tiny_text_pretrain_steps", "5",
          "--tiny_vision_pretrain_steps", "3", "--disable_tqdm", "True", "--use_cpu", "True"]
GLOBAL_BATCH = {1: 16, 2: 8, 3: 16}
STEPS = {1: 6, 2: 12, 3: 6}
# Two processes see the same samples in each step; only the order of float32 sums differs (all-reduce vs one batch).
# Measured on this recipe (transformers 5.24, torch 2.13, 1 thread): stage-1 losses and weights bit-identical, later
# stages at most 5e-7 apart in loss and 2e-7 in any weight.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5


def pretrain(out: Path, *flags, processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """`examples/run_pretrain.py` on the demo config with `RECIPE`; several processes through `torchrun --standalone`
    (a free port, so that concurrent test runs do not collide)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run([*launch, str(SCRIPT), str(DEMO), "--output_dir", str(out), *RECIPE, *map(str, flags)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def weights(run: Path, folder: str) -> dict[str, torch.Tensor]:
    model = HiveForConditionalGeneration.from_pretrained(run / folder)
    return {name: param.detach() for name, param in model.named_parameters()}


def trained_in(run: Path) -> dict[int, set[str]]:
    """What each stage trains, by the stage logic on one process."""
    model = HiveForConditionalGeneration.from_pretrained(run / "init")
    trained = {}
    for stage in (1, 2, 3):
        model.set_training_stage(stage)
        trained[stage] = {name for name, param in model.named_parameters() if param.requires_grad}
    return trained


def losses(run: Path, stage: int) -> list[float]:
    state = json.loads((run / f"stage{stage}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def check_stage_switches(run: Path) -> None:
    """At every stage switch the weights a stage freezes are bit for bit those the previous stage left, and every
    weight it trains moved."""
    trained = trained_in(run)
    before = weights(run, "init")
    for stage in (1, 2, 3):
        after = weights(run, f"stage{stage}")
        moved = {name for name in after if not torch.equal(before[name], after[name])}
        assert moved == trained[stage], (stage, sorted(moved ^ trained[stage])[:5])
        before = after


def check_same_training(run: Path, reference: Path, processes: int) -> None:
    """Per stage: the same global batch and optimizer steps as `reference`, losses within `LOSS_TOLERANCE`, frozen
    weights bit-identical and trained ones within `WEIGHT_TOLERANCE`."""
    trained = trained_in(reference)
    for stage in (1, 2, 3):
        stage_args = torch.load(run / f"stage{stage}" / "training_args.bin", weights_only=False)
        assert stage_args.world_size == processes
        assert stage_args.per_device_train_batch_size * stage_args.gradient_accumulation_steps * processes \
            == GLOBAL_BATCH[stage]
        state = json.loads((run / f"stage{stage}" / "trainer_state.json").read_text())
        assert state["global_step"] == STEPS[stage]
        ours, theirs = losses(run, stage), losses(reference, stage)
        assert len(ours) == len(theirs) == STEPS[stage]
        gap = max(abs(a - b) for a, b in zip(ours, theirs))
        assert gap <= LOSS_TOLERANCE, (stage, ours, theirs)
        mine, ref = weights(run, f"stage{stage}"), weights(reference, f"stage{stage}")
        for name, value in mine.items():
            if name in trained[stage]:
                torch.testing.assert_close(value, ref[name], atol=WEIGHT_TOLERANCE, rtol=0, msg=f"stage {stage} {name}")
            else:
                assert torch.equal(value, ref[name]), (stage, name)


# -- the global batch ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "global_batch, max_per_device, processes, expected",
    [
        (256, 64, 1, (64, 4)),  # the authors' stage 1 on 1 GPU: 64 x 4 / 1
        (256, 64, 2, (64, 2)),  # ... on 2 GPUs: 64 x 4 / 2
        (1024, 32, 2, (32, 16)),  # their stage 3: 32 x 32 / 2
        (256, 64, 8, (32, 1)),  # 8 GPUs: the per-device batch shrinks instead of the global batch growing
        (32, 32, 2, (16, 1)),  # the demo on 2 processes
        (48, 32, 1, (24, 2)),  # the largest per-device batch that divides the share
        (254, 32, 2, (1, 127)),  # 127 is prime: exact, if slow
    ],
)
def test_the_global_batch_is_split_exactly(global_batch, max_per_device, processes, expected):
    per_device, accumulation = split_global_batch(global_batch, max_per_device, processes)
    assert (per_device, accumulation) == expected
    assert per_device * accumulation * processes == global_batch and per_device <= max_per_device


def test_a_global_batch_the_processes_cannot_share_is_an_error():
    with pytest.raises(ValueError) as err:
        split_global_batch(30, 8, 4, stage=2)
    for words in ("stage 2", "global batch 30", "4 processes", "28 or 32"):
        assert words in str(err.value), str(err.value)


def test_stage_arguments_keep_the_global_batch_and_skip_the_unused_parameter_search(tmp_path, caplog):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32, use_cpu=True, report_to="none")
    stage_args = stage_training_args(args, 1, tmp_path / "stage1", 254)
    assert (stage_args.per_device_train_batch_size, stage_args.gradient_accumulation_steps) == (2, 127)
    assert "no per-device batch from 3 to 32 divides 254" in caplog.text
    assert stage_args.ddp_find_unused_parameters is False  # every stage freezes what its forward does not reach
    args.ddp_find_unused_parameters = True
    assert stage_training_args(args, 1, tmp_path / "stage1", 64).ddp_find_unused_parameters is True


@pytest.mark.parametrize(
    "script, argv, words",
    [
        ("run_pretrain", ["--tiny_backbones", "True", "--stage_batch_sizes", "32", "30", "32"],
         ["stage 2", "global batch 30", "4 processes", "28 or 32"]),
        ("run_vlm_finetune", ["--vision_model_name_or_path", "x", "--tiny_text_backbone", "True", "--do_train", "True",
                              "--stage_batch_sizes", "256", "126"],
         ["stage 2", "global batch 126", "4 processes", "124 or 128"]),
    ],
)
def test_both_scripts_refuse_a_global_batch_the_processes_cannot_share(script, argv, words, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(arguments, "data_parallel_replicas", lambda args: 4)  # as on 4 processes
    out = tmp_path / "run"
    message = user_error(script, [*argv, "--output_dir", out, "--use_cpu", "True", "--report_to", "none"],
                         monkeypatch, capsys)
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()


# -- the same recipe on 1 and 2 processes -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    proc = pretrain(out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_one_process_freezes_and_trains_what_each_stage_says(one_process):
    check_stage_switches(one_process)


@pytest.mark.slow
def test_two_ddp_processes_train_as_one(one_process, tmp_path):
    out = tmp_path / "ddp"
    proc = pretrain(out, processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_same_training(out, one_process, processes=2)
    check_stage_switches(out)
    assert proc.stdout.count("HIVE pre-training finished") == 1  # one summary, from rank 0
    # DDP ran without searching for unused parameters: with the search on and nothing to find, it warns every stage
    assert "find_unused_parameters=True was specified" not in proc.stderr
    assert torch.load(out / "stage1" / "training_args.bin", weights_only=False).ddp_find_unused_parameters is False


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_keeps_the_frozen_trained_split_of_one_process(version, one_process, tmp_path):
    """The shipped FSDP config, wrapped layers mixing frozen and trainable weights, under FSDP1 (`use_orig_params`) and
    FSDP2 (per-parameter sharding). The config leaves the version to transformers: FSDP1 on 5.6, FSDP2 on 5.23 and
    newer."""
    config = {**json.loads((CONFIGS / "fsdp_config.json").read_text()), "version": version}
    (tmp_path / "fsdp.json").write_text(json.dumps(config))
    out = tmp_path / "fsdp"
    proc = pretrain(out, "--fsdp", "full_shard auto_wrap", "--fsdp_config", tmp_path / "fsdp.json", processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_stage_switches(out)
    check_same_training(out, one_process, processes=2)


@pytest.mark.slow
def test_deepspeed_zero2_trains_as_one_process(one_process, tmp_path):
    """The shipped ZeRO-2 config on CPU (DeepSpeed's CPU accelerator over gloo). DeepSpeed is an optional extra, not a
    test dependency: this runs where it is installed, and CI (`HIVE_REQUIRE_DEEPSPEED=1`) installs it."""
    if os.environ.get("HIVE_REQUIRE_DEEPSPEED") == "1":
        import deepspeed  # noqa: F401  (CI: a missing DeepSpeed is a failure, not a skip)
    else:
        pytest.importorskip("deepspeed")
    out = tmp_path / "zero2"
    proc = pretrain(out, "--deepspeed", CONFIGS / "zero2.json", processes=2, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_stage_switches(out)
    check_same_training(out, one_process, processes=2)


# -- failing clearly --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_with_a_global_batch_the_processes_cannot_share_stops_before_any_work(tmp_path):
    out = tmp_path / "run"
    proc = pretrain(out, "--stage_batch_sizes", "15", "8", "16", processes=2, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "run_pretrain.py: error: " in line]
    # each process reports in one line; torchrun then prints its own traceback of the failed workers
    assert proc.returncode != 0 and errors and "ValueError" not in proc.stderr, proc.stderr[-3000:]
    assert all("stage 1: the global batch 15 (--stage_batch_sizes) cannot be split evenly over 2 processes" in e
               for e in errors), errors
    assert not out.exists()


@pytest.mark.slow
def test_a_trainable_parameter_without_gradient_stops_ddp_naming_it(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    worker = ROOT / "tests" / "torchrun_unused_parameter.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # a hang would end here, not in an error
    assert proc.returncode != 0 and "trained 3 steps" not in proc.stdout
    for rank in (0, 1):
        assert (f"Stage 3, step 1: 13 trainable parameters received no gradient on process {rank}: "
                "vision_model.vision_tower.post_layernorm.weight") in proc.stderr, proc.stderr[-3000:]
    assert "--ddp_find_unused_parameters True" in proc.stderr
    assert "Expected to have finished reduction" not in proc.stderr  # DDP's own, nameless, one step later
