#!/usr/bin/env python
"""Stage 1 of the demo under four image key/value settings, side by side: the loss per caption token at a few steps.

    python benchmarks/stage1_options.py            # 4 settings x 3 seeds, 200 stage-1 steps; outputs/stage1_options/
    python benchmarks/stage1_options.py --results_file results/stage1_options.md    # the file the README quotes

Each run is `examples/run_pretrain.py examples/configs/demo.json --stages 1 --stage_max_steps 200 200 200` plus the
setting's flags, from the same backbones, data and seed, on one thread; the whole comparison is repeated for each
of `--seeds` (the backbones too), and each cell is the mean ± std over seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from hive_hf.cli.parsing import CommandParser
from hive_hf.runs.layout import RunLayout
from hive_hf.runs.records import write_results
from hive_hf.runs.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "shared frozen k/v, `mlp_residual` (today's defaults)": ["--image_kv", "shared"],
    "shared frozen k/v + `qk_norm` + `ln_mlp` (the authors' options)":
        ["--image_kv", "shared", "--qk_norm", "True", "--projector_type", "ln_mlp"],
    "the same + `image_rope: \"2d\"`":
        ["--image_kv", "shared", "--qk_norm", "True", "--projector_type", "ln_mlp", "--image_rope", "2d"],
    "separate k/v (the demo)": [],
}


def loss_at(log_history: list[dict], steps: list[int]) -> list[float | None]:
    """The logged training loss at each of `steps` (None where nothing was logged)."""
    by_step = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
    return [by_step.get(step) for step in steps]


def table(curves: dict[str, dict[int, list[float | None]]], steps: list[int]) -> str:
    """One row per setting, one column per step: mean ± std over seeds (the value itself for one seed)."""
    def cell(values: list[float | None]) -> str:
        if any(v is None for v in values):
            return "-"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    rows = [[name, *(cell([by_seed[seed][i] for seed in by_seed]) for i in range(len(steps)))]
            for name, by_seed in curves.items()]
    return markdown_table(["stage 1", *(f"step {s}" for s in steps)], rows, "l" + "r" * len(steps))


def main() -> None:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/stage1_options")
    parser.add_argument("--results_file", default="outputs/stage1_options/results.md",
                        help="The table (and a .json beside it); results/stage1_options.md is the file the README "
                             "quotes.")
    parser.add_argument("--steps", type=int, default=200, help="Stage-1 steps per run.")
    parser.add_argument("--report_steps", type=int, nargs="+", default=[10, 50, 100, 150, 200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if max(args.report_steps) > args.steps:
        parser.error(f"--report_steps go up to {max(args.report_steps)}, beyond --steps {args.steps}")

    out = Path(args.output_dir)
    curves: dict[str, dict[int, list[float | None]]] = {name: {} for name in SETTINGS}
    for seed in args.seeds:
        backbones = None
        for i, (name, flags) in enumerate(SETTINGS.items()):
            run_dir = out / f"seed{seed}" / f"setting{i}"
            # the first run of a seed writes the tiny backbones; the others start from the same ones
            source = (["--tiny_backbones", "True"] if backbones is None else
                      ["--tiny_backbones", "False", "--vision_model_name_or_path", str(backbones / "vision"),
                       "--text_model_name_or_path", str(backbones / "text")])
            cmd = [sys.executable, str(ROOT / "examples" / "run_pretrain.py"),
                   str(ROOT / "examples" / "configs" / "demo.json"), "--stages", "1",
                   "--stage_max_steps", *[str(args.steps)] * 3, "--logging_steps", "10", "--seed", str(seed),
                   "--output_dir", str(run_dir), "--disable_tqdm", "True", *source, *flags]
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh measurement, not a resumed run
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            backbones = backbones or run_dir / "backbones"
            curves[name][seed] = loss_at(RunLayout(run_dir).read_marker(1)["log_history"], args.report_steps)
    text = table(curves, args.report_steps)
    write_results(args.results_file, text, {"curves": curves, "steps": args.report_steps}, seeds=args.seeds, threads=1)
    (out / "curves.json").write_text(json.dumps(curves, indent=2))
    print("\n" + text)


if __name__ == "__main__":
    main()
