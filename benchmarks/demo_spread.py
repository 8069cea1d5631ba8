#!/usr/bin/env python
"""The demo's stage losses across CPU capabilities and seeds: how far the README's first table can move on another
machine or with another seed.

    python benchmarks/demo_spread.py                  # seeds 0 1 2 x this CPU's kernels and torch's scalar ones
    python benchmarks/demo_spread.py --results_file results/demo_spread.md    # the file the README quotes

Each run is the README's main job, `examples/run_pretrain.py examples/configs/demo.json --seed <s>` (backbones
written and pre-trained by the run itself), on one thread, with `ATEN_CPU_CAPABILITY` set to each of
`--capabilities` (`native` leaves it unset: the vector kernels torch picks for this CPU; `default` is torch's scalar
kernels, what a CPU without AVX2 runs; `avx2` and `avx512` where the CPU has them). Torch picks its kernels by CPU,
so last-bit rounding differs between machines; a recipe is robust when those differences do not move its losses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from hive_hf.cli.parsing import CommandParser
from hive_hf.runs.records import write_results
from hive_hf.runs.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
NATIVE = "native"
KEYS = ("first_loss", "last_loss")


def run_demo(run_dir: Path, seed: int, capability: str) -> dict[str, dict[str, float]]:
    """One demo run; its stages' first and last logged losses, by stage."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability != NATIVE:
        env["ATEN_CPU_CAPABILITY"] = capability
    cmd = [sys.executable, str(ROOT / "examples" / "run_pretrain.py"), str(ROOT / "examples" / "configs" / "demo.json"),
           "--seed", str(seed), "--output_dir", str(run_dir),
           "--results_file", str(run_dir / "results.md"), "--disable_tqdm", "True"]
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
    print(f"+ ATEN_CPU_CAPABILITY={capability} " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    stages = json.loads((run_dir / "results.json").read_text())["results"]["stages"]
    return {stage: {k: record[k] for k in KEYS} for stage, record in stages.items()}


def spreads(runs: dict[str, dict[int, dict[str, dict[str, float]]]]) -> dict[str, float]:
    """The largest difference of any stage's first or last loss: between capabilities at the same seed, and between
    seeds under the same capability."""
    caps = list(runs)
    seeds = list(runs[caps[0]])
    stages = list(runs[caps[0]][seeds[0]])

    def values(cap: str, seed: int) -> list[float]:
        return [runs[cap][seed][stage][k] for stage in stages for k in KEYS]

    across_caps = max((abs(a - b) for seed in seeds for cap in caps[1:]
                       for a, b in zip(values(caps[0], seed), values(cap, seed))), default=0.0)
    across_seeds = 0.0
    for cap in caps:
        columns = list(zip(*(values(cap, seed) for seed in seeds)))
        across_seeds = max(across_seeds, *(max(c) - min(c) for c in columns))
    return {"capabilities": across_caps, "seeds": across_seeds}


def table(runs: dict[str, dict[int, dict[str, dict[str, float]]]], native: str) -> str:
    stages = list(next(iter(next(iter(runs.values())).values())))
    rows = []
    for cap, by_seed in runs.items():
        label = f"{native} (native)" if cap == NATIVE else cap
        for seed, losses in by_seed.items():
            rows.append([label, str(seed), *(f"{losses[s]['first_loss']:.3f} -> {losses[s]['last_loss']:.3f}"
                                            for s in stages)])
    text = markdown_table(["CPU kernels", "seed", *(f"stage {s}" for s in stages)], rows)
    spread = spreads(runs)
    if len(runs) > 1:
        text += (f"\n\nLargest difference of a stage's first or last loss between CPU kernels at the same seed: "
                 f"{spread['capabilities']:.3f}.")
    if len(next(iter(runs.values()))) > 1:
        text += (f"\nLargest difference between seeds under the same kernels (max - min): "
                 f"{spread['seeds']:.3f}.")
    return text


def main() -> None:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--capabilities", nargs="+", default=[NATIVE, "default"],
                        help="`ATEN_CPU_CAPABILITY` values to run under; `native` leaves it unset.")
    parser.add_argument("--output_dir", default="outputs/demo_spread")
    parser.add_argument("--results_file", default="outputs/demo_spread/results.md",
                        help="The table (and a .json beside it); results/demo_spread.md is the file the README "
                             "quotes.")
    args = parser.parse_args()
    known = {NATIVE, "default", "avx2", "avx512", "avx512_vnni", "zvector", "vsx", "sve256"}
    for cap in args.capabilities:
        if cap not in known:
            parser.error(f"argument --capabilities: unknown capability {cap!r}; choose from {sorted(known)}")

    native = torch.backends.cpu.get_cpu_capability()
    runs: dict[str, dict[int, Any]] = {}
    for cap in args.capabilities:
        runs[cap] = {seed: run_demo(Path(args.output_dir) / f"{cap}-seed{seed}", seed, cap) for seed in args.seeds}
    text = table(runs, native)
    write_results(args.results_file, text, {"native_capability": native, "runs": runs, "spread": spreads(runs)},
                  seeds=args.seeds, threads=1)
    print("\n" + text)


if __name__ == "__main__":
    main()
