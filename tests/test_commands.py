"""What every command does for a newcomer that the README's commands (tests/test_readme_commands.py) do not reach in
the default run: no prefix abbreviations, one-line errors, one seed read as no finding, quiet short runs."""

from __future__ import annotations

import warnings

import pytest
from scripts import BENCHMARKS, load_script, user_error

from hive_hf.runs.plots import plot_loss_curves

SCRIPTS = [("run_pretrain", None), ("run_probe", None), ("run_vlm_finetune", None), ("quickstart", None),
           ("reproduce_small", None), ("bench_efficiency", BENCHMARKS), ("probe_features", BENCHMARKS),
           ("vlm_demo", BENCHMARKS), ("stage1_options", BENCHMARKS)]


@pytest.mark.parametrize(("name", "folder"), SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_every_script_refuses_an_abbreviated_flag_in_one_line(name, folder, monkeypatch, capsys):
    # `--output_d` would be taken for `--output_dir` (or `--output`) with argparse's prefix matching
    kwargs = {"folder": folder} if folder else {}
    message = user_error(name, ["--output_d", "x"], monkeypatch, capsys, **kwargs)
    assert message.startswith("unrecognized arguments: --output_d"), message


@pytest.mark.parametrize("module", ["release", "gradient_flow", "attention_maps"])
def test_module_entry_points_report_mistakes_in_one_line(module, tmp_path, capsys):
    main = __import__(f"hive_hf.cli.{module}", fromlist=["main"]).main
    argv = {"release": [str(tmp_path), "me/x", "--dry-ru"],
            "gradient_flow": ["--hive", str(tmp_path / "none"), "--baseline", str(tmp_path / "none")],
            "attention_maps": [str(tmp_path / "none")]}[module]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and ": error: " in err, err


def test_one_pretraining_seed_calls_nothing_a_finding():
    compare = load_script("reproduce_small").compare
    one = compare("loss", [0.2], [0.4], higher_is_better=False, seeds=1)
    assert "no finding" in one and "±" not in one, one
    three = compare("loss", [0.20, 0.21, 0.19], [0.40, 0.41, 0.39], higher_is_better=False, seeds=3)
    assert "a finding at this scale" in three, three


def test_a_short_stage_logs_its_loss_more_than_once():
    from transformers import TrainingArguments

    from hive_hf.cli.pretrain import HivePretrainingArguments

    args = HivePretrainingArguments(output_dir="outputs/x", use_cpu=True, report_to="none")
    assert 0 < args.logging_steps < 1, "a fraction of each stage's steps, so a 63-step stage logs"
    plain = args.for_stage(1, "outputs/x/stage1")
    assert isinstance(plain, TrainingArguments) and plain.logging_steps == args.logging_steps


def test_loss_curves_without_a_logged_loss_draw_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_loss_curves({"stage 1": [{"train_loss": 1.0, "step": 3}], "stage 2": []}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").is_file()




@pytest.mark.parametrize("results_file", ["results.md", "results.json"])
def test_reproduce_small_refuses_a_results_file_that_is_its_own_report(results_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    message = user_error("reproduce_small", ["--output_dir", str(out), "--results_file", str(out / results_file)],
                         monkeypatch, capsys)
    assert message.startswith(f"--results_file {out / results_file}: the full report goes to"), message
    assert not out.exists(), "nothing written before the mistake is reported"
