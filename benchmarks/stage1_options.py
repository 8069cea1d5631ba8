#!/usr/bin/env python
"""Stage 1 of the demo under four image key/value settings, side by side: the loss per caption token at a few steps.

    python benchmarks/stage1_options.py            # 4 runs of 200 stage-1 steps; writes outputs/stage1_options/
    python benchmarks/stage1_options.py --results_file results/stage1_options.md    # the file the README quotes

Each run is `examples/run_pretrain.py examples/configs/demo.json --stages 1 --stage_max_steps 200 200 200` plus the
setting's flags, from the same backbones, data and seed, on one thread.
"""

from __future__ import annotations

import json
import os
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


def table(curves: dict[str, list[float | None]], steps: list[int]) -> str:
    rows = [[name, *("-" if v is None else f"{v:.3f}" for v in losses)] for name, losses in curves.items()]
    return markdown_table(["stage 1", *(f"step {s}" for s in steps)], rows)


def main() -> None:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/stage1_options")
    parser.add_argument("--results_file", default="outputs/stage1_options/results.md",
                        help="The table (and a .json beside it); results/stage1_options.md is the file the README "
                             "quotes.")
    parser.add_argument("--steps", type=int, default=200, help="Stage-1 steps per run.")
    parser.add_argument("--report_steps", type=int, nargs="+", default=[10, 50, 100, 150, 200])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if max(args.report_steps) > args.steps:
        parser.error(f"--report_steps go up to {max(args.report_steps)}, beyond --steps {args.steps}")

    out = Path(args.output_dir)
    backbones = out / "backbones"
    curves = {}
    for i, (name, flags) in enumerate(SETTINGS.items()):
        run_dir = out / f"setting{i}"
        # the first run writes the tiny backbones; the others start from the same ones
        source = (["--tiny_backbones", "True"] if i == 0 else
                  ["--tiny_backbones", "False", "--vision_model_name_or_path", str(backbones / "vision"),
                   "--text_model_name_or_path", str(backbones / "text")])
        cmd = [sys.executable, str(ROOT / "examples" / "run_pretrain.py"), str(ROOT / "examples" / "configs" / "demo.json"),
               "--stages", "1", "--stage_max_steps", *[str(args.steps)] * 3, "--logging_steps", "10",
               "--seed", str(args.seed), "--output_dir", str(run_dir), "--disable_tqdm", "True", *source, *flags]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if i == 0:
            backbones = run_dir / "backbones"
        curves[name] = loss_at(RunLayout(run_dir).read_marker(1)["log_history"], args.report_steps)
    text = table(curves, args.report_steps)
    write_results(args.results_file, text, {"curves": curves, "steps": args.report_steps}, seeds=[args.seed], threads=1)
    (out / "curves.json").write_text(json.dumps(curves, indent=2))
    print("\n" + text)


if __name__ == "__main__":
    main()
