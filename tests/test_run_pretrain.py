"""examples/run_pretrain.py end to end: three stages, resume after a kill, bad flags (several processes:
test_distributed.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scripts import user_error

import hive_hf.cli.pretrain as pretrain_cli
from hive_hf.runs.layout import read_training_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_pretrain.py"
DEMO = ROOT / "examples" / "configs" / "demo.json"
FAST = ["--max_train_samples", "96", "--per_device_train_batch_size", "8", "--stage_batch_sizes", "8", "8", "8",
        "--tiny_text_pretrain_steps", "5", "--tiny_vision_pretrain_steps", "3", "--logging_steps", "1",
        "--disable_tqdm", "True"]

pytestmark = pytest.mark.slow


def run(args, timeout=300, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def test_the_same_command_seed_and_threads_give_identical_losses(tmp_path):
    """Determinism: the same command, seed and thread count (1 here) on one machine gives the same loss log, bit for
    bit, backbone pre-training included."""
    logs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = run([DEMO, "--output_dir", out, *FAST, "--stages", "1", "2", "--stage_max_steps", "3", "3", "3"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs.append([[entry["loss"] for entry in json.loads((out / f"stage{s}" / "hive_stage.json").read_text())
                      ["log_history"] if "loss" in entry] for s in (1, 2)])
    assert logs[0] == logs[1] and all(len(stage) == 3 for stage in logs[0])


def test_three_stages_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = run([DEMO, "--output_dir", out, *FAST, "--stage_max_steps", "4", "4", "4", "--save_steps", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HIVE pre-training finished" in proc.stdout
    assert "pre-training the tiny" not in proc.stderr, "--disable_tqdm hides the tiny backbones' bars too"
    assert (out / "loss_curves.png").stat().st_size > 1000
    for stage in (1, 2, 3):
        folder = out / f"stage{stage}"
        summary = json.loads((folder / "hive_stage.json").read_text())
        assert summary["stage"] == stage and summary["skipped_images"] == 0
        assert (folder / "loss_curve.png").exists() and (folder / "all_results.json").exists()
        assert json.loads((folder / "config.json").read_text())["training_stage"] == stage
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 4
        assert (folder / "processor_config.json").exists() and (folder / "processing_hive.py").exists()

    from transformers import AutoModel, AutoProcessor

    from hive_hf import HiveForConditionalGeneration, HiveVisionEncoderModel

    encoder = AutoModel.from_pretrained(out / "stage3")
    assert isinstance(encoder, HiveVisionEncoderModel)
    # each stage starts from the previous one: stage 2 keeps stage 1's encoder, stage 3 changes it
    s1, s2, s3 = (HiveForConditionalGeneration.from_pretrained(out / f"stage{s}") for s in (1, 2, 3))
    key = "vision_tower.encoder.layers.0.mlp.fc1.weight"
    v1, v2, v3 = (m.vision_model.state_dict()[key] for m in (s1, s2, s3))
    assert torch.equal(v1, v2) and not torch.equal(v2, v3)
    processor = AutoProcessor.from_pretrained(out / "stage3")
    assert processor.max_length == 77


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    # stage 2 is long enough that it cannot finish between the first checkpoint and the kill
    args = [DEMO, "--output_dir", out, *FAST, "--stage_max_steps", "3", "300", "3", "--save_steps", "2",
            "--logging_steps", "10"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "stage2" / "checkpoint-4"
    deadline = time.time() + 240
    while not (checkpoint / "trainer_state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # wherever it is, possibly in the middle of writing the next checkpoint
    proc.wait(timeout=30)
    assert (out / "stage1" / "hive_stage.json").exists() and not (out / "stage2" / "hive_stage.json").exists()
    stage1_mtime = (out / "stage1" / "model.safetensors").stat().st_mtime

    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage 1 already finished" in again.stderr
    assert "stage 2: resuming from" in again.stderr
    assert (out / "stage1" / "model.safetensors").stat().st_mtime == stage1_mtime  # stage 1 not redone
    state = json.loads((out / "stage2" / "trainer_state.json").read_text())
    assert state["global_step"] == 300
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert json.loads((out / "stage3" / "hive_stage.json").read_text())["stage"] == 3


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tiny_backbones", "True", "--vision_model_name_or_path", "x", "--text_model_name_or_path", "y"],
         ["exactly one model source", "--tiny_backbones"]),
        (["--vision_model_name_or_path", "x"], ["--text_model_name_or_path"]),
        (["--tiny_backbones", "True", "--fusion", "cross"], ["--fusion", "'cross'"]),
        (["--tiny_backbones", "True", "--stages", "2", "1"], ["--stages", "[2, 1]"]),
        (["--tiny_backbones", "True", "--stage_learning_rates", "1e-3", "1e-4"], ["--stage_learning_rates"]),
        (["--tiny_backbones", "True", "--streaming", "True"], ["--streaming", "--stage_max_steps"]),
        (["--tiny_backbones", "True", "--stages", "1", "3", "--lora_r", "8"], ["--lora_r", "stage 2"]),
    ],
)
def test_bad_flag_combinations_are_rejected_naming_the_flags(args, words, tmp_path, monkeypatch):
    script = pretrain_cli
    monkeypatch.setattr(sys, "argv", ["run_pretrain.py", "--output_dir", str(tmp_path / "run"), *args])
    with pytest.raises(ValueError) as err:
        script.check_combinations(*script.parse_args())
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_a_bad_combination_stops_the_script_before_any_work(tmp_path):
    proc = run(["--output_dir", tmp_path / "run", "--tiny_backbones", "True", "--streaming", "True"], timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("run_pretrain.py: error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("run_pretrain.py: error: --streaming has no length") and "--stage_max_steps" in errors[0]
    assert not (tmp_path / "run").exists()


def _captioned_folder(folder: Path, n: int = 4) -> Path:
    """An imagefolder of `n` synthetic pictures whose captions are in a column named `text`."""
    from hive_hf.data import make_shapes_dataset

    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i, row in enumerate(make_shapes_dataset(n, image_size=32)):
            row["image"].save(folder / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": row["caption"]}) + "\n")
    return folder


TINY = ["--tiny_backbones", "True", "--tiny_text_pretrain_steps", "1", "--tiny_vision_pretrain_steps", "1",
        "--stage_max_steps", "1", "1", "1", "--use_cpu", "True", "--report_to", "none"]


@pytest.mark.parametrize("mistake", ["stages", "missing_dataset", "caption_column", "tap_too_deep", "json"])
def test_user_errors_print_one_argparse_line_before_any_work(mistake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv, words = {
        "stages": ([*TINY, "--stages", "4"], ["--stages", "[4]"]),
        "missing_dataset": ([*TINY, "--dataset", tmp_path / "no" / "such"], ["does not exist", "no/such"]),
        "caption_column": ([*TINY, "--dataset", _captioned_folder(tmp_path / "pics"), "--streaming", "True",
                            "--caption_column", "caption_text"], ["--caption_column", "'caption_text'", "'text'"]),
        "tap_too_deep": ([*TINY, "--vision_feature_layers", "2", "9"], ["vision_feature_layers", "[0, 4]", "[9]"]),
        "json": ([tmp_path / "c.json"], ["c.json", "not valid JSON"]),
    }[mistake]
    (tmp_path / "c.json").write_text('{"tiny_backbones": true,}')
    message = user_error("run_pretrain", [*argv, "--output_dir", out], monkeypatch, capsys)
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()  # checked before any backbone was written or trained


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    script = pretrain_cli

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a user's mistake")

    monkeypatch.setattr(script, "load_caption_dataset", broken)
    monkeypatch.setattr(sys, "argv", ["run_pretrain.py", *TINY, "--output_dir", str(tmp_path / "run")])
    with pytest.raises(TypeError, match="a bug"):
        script.main()


def test_json_file_with_overriding_flags(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"tiny_backbones": True, "output_dir": str(tmp_path / "a"), "stages": [1],
                                  "stage_max_steps": [2, 2, 2], "max_train_samples": 32, "use_cpu": True,
                                  "report_to": "none", "per_device_train_batch_size": 8,
                                  "stage_batch_sizes": [8, 8, 8], "tiny_text_pretrain_steps": 2,
                                  "tiny_vision_pretrain_steps": 2}))
    proc = run([config, "--output_dir", tmp_path / "b", "--fusion", "gated"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "a").exists()
    assert json.loads((tmp_path / "b" / "stage1" / "config.json").read_text())["fusion"] == "gated"


def test_streaming_dataset(tmp_path):
    from hive_hf.data import make_shapes_dataset

    folder = tmp_path / "images"
    folder.mkdir()
    rows = make_shapes_dataset(24, image_size=32)
    with open(folder / "metadata.jsonl", "w") as f:
        for i, row in enumerate(rows):
            row["image"].save(folder / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": row["caption"]}) + "\n")
    (folder / "3.png").write_bytes(b"broken")  # counted and skipped, never fatal
    proc = run(["--tiny_backbones", "True", "--output_dir", tmp_path / "run", "--dataset", folder,
                "--caption_column", "text", "--streaming", "True", "--stages", "1", "--stage_max_steps", "3", "3", "3",
                "--per_device_train_batch_size", "8", "--stage_batch_sizes", "8", "8", "8", "--use_cpu", "True",
                "--report_to", "none", "--tiny_text_pretrain_steps", "2", "--tiny_vision_pretrain_steps", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "stage1" / "hive_stage.json").read_text())
    assert summary["skipped_images"] == 1


# -- the two recipe configs ---------------------------------------------------------------------------------------------
CONFIGS = ROOT / "examples" / "configs"


def parse(monkeypatch, *args):
    script = pretrain_cli
    monkeypatch.setattr(sys, "argv", ["run_pretrain.py", *map(str, args)])
    return script.parse_args()


def test_the_authors_config_holds_their_released_recipe(monkeypatch, tmp_path):
    """scripts/train/HIVE_florence.sh (eugenelet/HIVE @ a5160ce), stages 1-3, as `run_pretrain.py` reads the file."""
    model_args, data_args, args = parse(monkeypatch, CONFIGS / "authors_florence.json", "--output_dir", tmp_path)
    assert pretrain_cli.hive_config_kwargs(model_args) == {
        "fusion": "joint", "connection_density": 0.25, "vision_feature_layers": [2, 5, 8, 11, 14, 17, 20, 23],
        "cross_attention_layers": [4, 9, 14, 19, 24, 29, 34, 39], "projector_type": "ln_mlp", "qk_norm": True,
        "image_rope": "2d", "image_kv": ["shared", "separate", "separate"], "llm_train_scope": "fused_attention"}
    assert model_args.text_model_type == "llama" and data_args.max_caption_length == 2048
    script_flags = {  # stage: (global batch, epochs, lr, scheduler, min lr rate, clip, beta2, seed)
        1: (256, 0.2, 1e-3, "cosine_with_min_lr", 0.1, 1.0, 0.999, 40),
        2: (1024, 1, 1e-4, "cosine_with_min_lr", 0.1, 0.6, 0.95, 41),
        3: (1024, 1, 5e-6, "cosine", None, 0.8, 0.95, 42),
    }
    for stage, (batch, epochs, lr, schedule, min_lr, clip, beta2, seed) in script_flags.items():
        stage_args = args.for_stage(stage, tmp_path / f"stage{stage}")
        assert stage_args.per_device_train_batch_size * stage_args.gradient_accumulation_steps == batch
        assert (stage_args.num_train_epochs, stage_args.learning_rate, stage_args.max_grad_norm) == (epochs, lr, clip)
        assert stage_args.lr_scheduler_type.value == schedule
        assert (stage_args.lr_scheduler_kwargs or {}).get("min_lr_rate") == min_lr
        assert (stage_args.adam_beta2, stage_args.seed, stage_args.weight_decay) == (beta2, seed, 1e-5)
        assert stage_args.get_warmup_steps(1000) == 30  # warmup ratio 0.03
    # a flag after the file overrides the recipe
    _, _, args = parse(monkeypatch, CONFIGS / "authors_florence.json", "--output_dir", tmp_path,
                       "--stage_learning_rates", "1", "2", "3")
    assert args.for_stage(2, tmp_path).learning_rate == 2


def test_the_paper_config_holds_the_papers_table(monkeypatch, tmp_path):
    model_args, data_args, args = parse(monkeypatch, CONFIGS / "paper.json", "--output_dir", tmp_path)
    assert pretrain_cli.hive_config_kwargs(model_args)["projector_type"] == "mlp_residual" and data_args.max_caption_length == 77
    assert (model_args.qk_norm, model_args.image_rope, model_args.llm_train_scope) == (False, "none", "all")
    table = {1: (256, 1, 1e-3, 1.0, 70), 2: (256, 2, 1e-4, 10.0, 140), 3: (1024, 1, 5e-6, 10.0, 18)}
    for stage, (batch, epochs, lr, clip, warmup) in table.items():
        stage_args = args.for_stage(stage, tmp_path / f"stage{stage}")
        assert stage_args.per_device_train_batch_size * stage_args.gradient_accumulation_steps == batch
        assert (stage_args.num_train_epochs, stage_args.learning_rate, stage_args.max_grad_norm) == (epochs, lr, clip)
        assert stage_args.get_warmup_steps(1000) == warmup and stage_args.lr_scheduler_type.value == "cosine"
        assert (stage_args.weight_decay, stage_args.seed) == (args.weight_decay, args.seed)  # the run's own


def test_the_authors_config_runs_on_a_mobilellm_layout(tmp_path):
    """The file as given, with tiny backbones (the LM in MobileLLM's Hub layout) and tiny data swapped in."""
    from hive_hf.data import make_shapes_dataset
    from hive_hf.tiny_backbones import write_tiny_backbones

    vision, text = write_tiny_backbones(tmp_path / "backbones", make_shapes_dataset(32, image_size=32)["caption"])
    config_file = Path(text) / "config.json"
    config = json.loads(config_file.read_text())
    config.update(model_type="mobilellm", architectures=["MobileLLMForCausalLM"], share_embedding=True,
                  tie_word_embeddings=False, auto_map={"AutoModelForCausalLM": "modeling_mobilellm.MobileLLM"})
    config_file.write_text(json.dumps(config))
    out = tmp_path / "run"
    proc = run([CONFIGS / "authors_florence.json", "--vision_model_name_or_path", vision, "--text_model_name_or_path",
                text, "--vision_feature_layers", "1", "3", "--cross_attention_layers", "1", "3", "--output_dir", out,
                "--use_cpu", "True", "--max_train_samples", "32", "--per_device_train_batch_size",
                "4", "--stage_batch_sizes", "4", "4", "4", "--stage_max_steps", "2", "2", "2", "--disable_tqdm", "True"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = [json.loads((out / f"stage{s}" / "config.json").read_text()) for s in (1, 2, 3)]
    assert [c["training_stage"] for c in saved] == [1, 2, 3]
    assert saved[0]["image_kv"] == ["shared", "separate", "separate"] and saved[0]["text_config"]["model_type"] == "llama"
    assert saved[0]["image_position"] == 1  # after the tokenizer's BOS
    state = json.loads((out / "stage2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    args = read_training_args(out / "stage2")
    assert (args["seed"], args["adam_beta2"], args["max_grad_norm"]) == (41, 0.95, 0.6)
