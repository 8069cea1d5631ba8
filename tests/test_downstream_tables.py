"""The commands behind the README's downstream tables (`benchmarks/probe_features.py`, `benchmarks/vlm_demo.py`): their
tables built from hand-made run results, their reading of a run folder, and the demo they need."""

import json

import pytest
from scripts import BENCHMARKS, load_script, user_error

import hive_hf.cli.vlm_finetune as vlm_cli
from hive_hf.runs.layout import HIVE_STAGE_MARKER
from hive_hf.runs.records import DEMO_COMMAND, demo_encoders


def probe_run(accuracies: dict[str, tuple[float, float]], features: str, seeds=(0, 1, 2)) -> dict:
    """A `probe_results.json` as run_probe writes it, with only the fields the table reads."""
    return {"dataset": "synthetic shapes", "num_classes": 5, "num_train": 2000, "num_test": 500,
            "settings": {"seeds": list(seeds), "recipe": "paper", "augment": False},
            "encoders": {name: {"mean": mean, "std": std, "features": features} for name, (mean, std) in
                         accuracies.items()}}


def test_probe_table_puts_each_setting_in_its_column_and_names_the_default_features():
    probe = load_script("probe_features", BENCHMARKS)
    keys = list(probe.SETTINGS)
    runs = {key: probe_run({"base": (80 + i, 0.1 * i), "HIVE": (90 + i, 0.5)}, f"feature {i}")
            for i, key in enumerate(keys)}
    caption, table = probe.probe_table(runs).split("\n\n")
    assert "probe seeds 0 1 2" in caption and "5 classes, 2000 train / 500 test images" in caption
    assert "`--recipe paper`, `--augment False`" in caption
    header, rule, base, hive = table.splitlines()
    assert header == "| encoder (default features) | " + " | ".join(t for t, _ in probe.SETTINGS.values()) + " |"
    assert rule == "|---|---:|---:|---:|---:|"
    # rows named by the features of the first (default) setting; cells in SETTINGS' order
    assert base == "| base (`feature 0`) | 80.00 ± 0.00 | 81.00 ± 0.10 | 82.00 ± 0.20 | 83.00 ± 0.30 |"
    assert hive == "| HIVE (`feature 0`) | 90.00 ± 0.50 | 91.00 ± 0.50 | 92.00 ± 0.50 | 93.00 ± 0.50 |"


def test_probe_table_refuses_runs_on_other_seeds():
    probe = load_script("probe_features", BENCHMARKS)
    runs = {key: probe_run({"base": (80, 1)}, "f") for key in probe.SETTINGS}
    runs[list(probe.SETTINGS)[2]] = probe_run({"base": (80, 1)}, "f", seeds=(0, 1))
    with pytest.raises(ValueError, match="share seeds"):
        probe.probe_table(runs)


def test_probe_commands_are_the_readme_flags_then_the_setting():
    probe = load_script("probe_features", BENCHMARKS)
    encoders = {"base": "d/backbones/vision", "HIVE": "d/stage3"}
    command = probe.probe_command(encoders, ["--probe", "linear"], "out/linear", "out/cache", 1)
    assert command[0].endswith("examples/run_probe.py")
    assert command[1:] == ["--encoders", "d/backbones/vision", "d/stage3", "--encoder_names", "base", "HIVE",
                           "--augment", "False", "--feature_cache_dir", "out/cache", "--torch_num_threads", "1",
                           "--output_dir", "out/linear", "--probe", "linear"]


def test_vlm_table_rows_losses_training_time_and_tasks_in_the_papers_order():
    vlm = load_script("vlm_demo", BENCHMARKS)
    stages = {1: {"first_loss": 3.6994, "last_loss": 2.4881, "train_runtime": 60.0},
              2: {"first_loss": 1.2354, "last_loss": 0.2409, "train_runtime": 330.0}}
    rows = {"HIVE encoder": {"stages": stages, "scores": {"scienceqa": 34.0, "gqa": 69.5, "mme": 273.0}},
            "blind question prior": {"scores": {"gqa": 15.0, "mme": 337.0, "scienceqa": 34.5}}}
    header, rule, hive, blind = vlm.vlm_table(rows).splitlines()
    assert header == "| | stage 1 loss | stage 2 loss | training (min) | MME | GQA | ScienceQA |"  # no OK-VQA: absent
    assert rule == "|---|---|---|---:|---:|---:|---:|"
    assert hive == "| HIVE encoder | 3.699 -> 2.488 | 1.235 -> 0.241 | 6.5 | 273.00 | 69.50 | 34.00 |"
    assert blind == "| blind question prior | | | | 337.00 | 15.00 | 34.50 |"
    rows["HIVE encoder"]["scores"].pop("gqa")
    assert vlm.vlm_table(rows).splitlines()[2].endswith("| 273.00 | - | 34.00 |")


def test_vlm_run_is_read_from_its_markers_and_eval_results(tmp_path):
    vlm = load_script("vlm_demo", BENCHMARKS)
    flatten = vlm_cli._flatten  # how the fine-tuning script writes eval_results.json
    for stage in (1, 2):
        (tmp_path / f"stage{stage}").mkdir()
        marker = {"first_loss": stage, "last_loss": stage / 2, "train_runtime": 10.0 * stage, "log_history": [{}]}
        (tmp_path / f"stage{stage}" / "vlm_stage.json").write_text(json.dumps(marker))
    scores = {"mme": {"score": 300.0, "num_questions": 400, "perception": 200.0},
              "vqa": {"score": 90.0, "num_questions": 200}}
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_samples": 600, **flatten(scores)}))
    run = vlm.read_run(tmp_path)
    assert run["scores"] == {"mme": 300.0, "vqa": 90.0} and run["num_questions"] == 600
    assert run["stages"][2] == {"first_loss": 2, "last_loss": 1.0, "train_runtime": 20.0}  # without the history


def test_vlm_commands_differ_only_in_encoder_folder_and_name():
    vlm = load_script("vlm_demo", BENCHMARKS)
    hive = vlm.finetune_command("d/stage3", vlm.Path("data"), vlm.Path("out/hive"), "HIVE encoder")
    base = vlm.finetune_command("d/backbones/vision", vlm.Path("data"), vlm.Path("out/base"), "base encoder")
    assert [a for a, b in zip(hive, base) if a != b] == ["d/stage3", "out/hive", "HIVE encoder"]
    assert hive[-len(vlm.FINETUNE_FLAGS):] == vlm.FINETUNE_FLAGS and "--train_questions_file" in hive


@pytest.mark.parametrize("script", ["probe_features", "vlm_demo"])
def test_without_the_demo_the_scripts_name_the_command_that_makes_it(script, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "demo"
    message = user_error(script, ["--demo_dir", missing, "--output_dir", tmp_path / "out"], monkeypatch, capsys,
                         folder=BENCHMARKS)
    assert message.endswith(f"make it first with: {DEMO_COMMAND} --output_dir {missing}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["probe_features", "vlm_demo"])
def test_threads_must_be_positive(script, monkeypatch, capsys):
    assert user_error(script, ["--threads", "0"], monkeypatch, capsys, folder=BENCHMARKS) == (
        "--threads must be positive, got 0.")


def test_demo_encoders_need_a_finished_last_stage(tmp_path):
    (tmp_path / "backbones" / "vision").mkdir(parents=True)
    (tmp_path / "backbones" / "vision" / "config.json").write_text("{}")
    (tmp_path / "stage3").mkdir()
    (tmp_path / "stage3" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no finished demo"):  # stage 3 has no marker: it did not finish
        demo_encoders(tmp_path)
    (tmp_path / "stage3" / HIVE_STAGE_MARKER).write_text("{}")
    assert demo_encoders(tmp_path) == {"base": tmp_path / "backbones" / "vision", "HIVE": tmp_path / "stage3"}
