#!/usr/bin/env python
"""A small-scale reproduction of the paper's comparison, on CPU: HIVE (joint) vs the SA baseline (concat) vs base,
repeated over several pre-training seeds so that a difference can be told from the spread.

One command:
  1. writes one pair of tiny pretrained backbones (a SigLIP tower and a Llama, as in the demo),
  2. for every seed in --pretrain_seeds, pre-trains that same pair through all three stages twice, with
     `--fusion joint` and `--fusion concat` (same seed, steps, data, hyperparameters; `examples/run_pretrain.py`
     with `examples/configs/demo.json`),
  3. probes every pre-trained encoder and the untouched base encoder on the synthetic shapes classification (same
     splits, same probe seeds, the same encoder layer for all: the HIVE run's deepest tapped layer),
  4. measures the gradient reaching each encoder layer at the start of stage 3 (HIVE vs SA) over several batches of
     held-out images, for every seed, and draws HIVE's cross-attention maps (first seed),
  5. writes `results.md` / `results.json` and the figures into --output_dir, and the summary table with its
     provenance to --results_file (by default `<output_dir>/summary.md`).

    python examples/reproduce_small.py --output_dir outputs/reproduce_small
    python examples/reproduce_small.py --results_file results/reproduce_small.md    # the file the README quotes

Every number is `mean ± std` over pre-training seeds (for `base`, over probe seeds); a HIVE-vs-SA difference is
called a finding only where it exceeds the sum of the two spreads, so with one pre-training seed, which has no
spread, nothing is. The tiny scale is far from the paper's (a 64-wide,
4-layer encoder and LLM, 32-px synthetic images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hive_hf.cli.parsing import CommandParser

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], threads: int) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def pretrain(run_dir: Path, fusion: str, backbones: Path, seed: int, threads: int, extra: list[str]) -> Path:
    _run([sys.executable, str(ROOT / "examples" / "run_pretrain.py"), str(ROOT / "examples" / "configs" / "demo.json"),
          "--tiny_backbones", "False", "--vision_model_name_or_path", str(backbones / "vision"),
          "--text_model_name_or_path", str(backbones / "text"), "--fusion", fusion, "--output_dir", str(run_dir),
          "--seed", str(seed), "--disable_tqdm", "True", *extra], threads)
    return run_dir


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation; one value has no spread (None)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(values: list[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def compare(name: str, hive: list[float], sa: list[float], higher_is_better: bool, digits: int = 3,
            seeds: int = 2) -> str:
    """One sentence: the HIVE-vs-SA difference of `name`, and whether it exceeds the two runs' spreads. With fewer
    than 2 pre-training `seeds` there is no spread over seeds to tell a difference from, so nothing is a finding."""
    (mh, sh), (ms, ss) = mean_std(hive), mean_std(sa)
    better = "HIVE" if (mh > ms) == higher_is_better else "SA"
    if seeds < 2 or sh is None or ss is None:
        verdict = "cannot be told from the run-to-run spread with one pre-training seed (no finding)"
    elif abs(mh - ms) > sh + ss:
        verdict = "exceeds the spread (a finding at this scale)"
    else:
        verdict = "is within the spread (no finding)"
    return (f"- {name}: HIVE {cell(hive, digits)} vs SA {cell(sa, digits)}; "
            f"{better} is ahead by {abs(mh - ms):.{digits}f}, which {verdict}.")


def main() -> None:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/reproduce_small")
    parser.add_argument("--results_file", default=None,
                        help="The summary table with its provenance (and a .json beside it); default: "
                             "<output_dir>/summary.md. results/reproduce_small.md regenerates the file the README "
                             "quotes.")
    parser.add_argument("--pretrain_seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="One full HIVE and SA pre-training per seed; 2 or more give a spread to judge "
                             "differences by.")
    parser.add_argument("--probe_seeds", type=int, nargs="+", default=[0, 1, 2], help="Probe seeds per encoder.")
    parser.add_argument("--backbone_seed", type=int, default=0, help="Seed of the tiny backbones both runs share.")
    parser.add_argument("--probe_epochs", type=int, default=30)
    parser.add_argument("--flow_batches", type=int, default=4, help="Held-out batches per gradient measurement.")
    parser.add_argument("--flow_batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of every step (results are identical run to run at a fixed count).")
    parser.add_argument("--pretrain_args", nargs=argparse.REMAINDER, default=[],
                        help="Extra run_pretrain.py flags for every run (e.g. --stage_max_steps 20 20 20); last.")
    args = parser.parse_args()
    out = Path(args.output_dir)
    results_file = args.results_file or str(out / "summary.md")
    if Path(results_file).with_suffix(".md").resolve() == (out / "results.md").resolve():
        parser.error(f"--results_file {results_file}: the full report goes to {out / 'results.md'} (and .json); "
                     "give another path, e.g. the default <output_dir>/summary.md")
    out.mkdir(parents=True, exist_ok=True)
    if len(args.pretrain_seeds) < 2:
        print(f"One pre-training seed ({args.pretrain_seeds[0]}): the differences have no spread to be judged by, "
              "so none is called a finding; give 2 or more --pretrain_seeds for that.", flush=True)

    import torch

    from hive_hf.analysis import gradient_flow_over_batches, summarize_flows, summary_table
    from hive_hf.analysis._common import load_checkpoint
    from hive_hf.data import make_shapes_dataset
    from hive_hf.evaluation import load_probe_datasets, run_probe
    from hive_hf.runs.layout import RunLayout
    from hive_hf.runs.plots import plot_loss_curves
    from hive_hf.runs.records import write_results
    from hive_hf.tiny_backbones import write_tiny_backbones

    torch.set_num_threads(args.threads)
    started = time.time()
    # 1. one pair of pretrained backbones for every run, as run_pretrain's --tiny_backbones would write them
    backbones = out / "backbones"
    if not (backbones / "text" / "config.json").exists():
        data = make_shapes_dataset(2000, image_size=32, seed=args.backbone_seed)
        write_tiny_backbones(backbones, data["caption"], images=data["image"], seed=args.backbone_seed,
                             text_pretrain_steps=300, vision_pretrain_steps=300)

    # 2. the same pre-training, HIVE and SA, once per seed
    fusions = {"joint": "HIVE (joint)", "concat": "SA (concat)"}
    runs = {(fusion, seed): pretrain(out / f"seed{seed}" / fusion, fusion, backbones, seed, args.threads,
                                     args.pretrain_args)
            for seed in args.pretrain_seeds for fusion in fusions}
    markers = {key: {s: RunLayout(run).read_marker(s) for s in (1, 2, 3)} for key, run in runs.items()}
    for (fusion, seed), per_stage in markers.items():
        plot_loss_curves({f"stage {s}": per_stage[s]["log_history"] for s in (1, 2, 3)},
                         out / f"seed{seed}" / f"loss_curves_{fusion}.png", title=f"pre-training ({fusion}, seed {seed})")

    # 3. probes: every encoder on the same splits and seeds, at the same layer (HIVE's deepest tap)
    hive_config = json.loads((runs[("joint", args.pretrain_seeds[0])] / "stage3" / "config.json").read_text())
    feature_layer = max(hive_config["vision_feature_layers"])
    splits = load_probe_datasets("synthetic", image_size=32, seed=args.backbone_seed)
    encoders = {"base": str(backbones / "vision")}
    encoders.update({f"{fusions[f]} seed {s}": str(runs[(f, s)] / "stage3") for (f, s) in runs})
    probe_kinds = {
        "attentive probe": dict(probe="attentive", learning_rates=[3e-3, 1e-2, 3e-2]),
        "linear probe (mean pooling)": dict(probe="linear", pooling="mean", learning_rates=[1e-2, 3e-2, 1e-1]),
    }
    probes = {
        label: run_probe(list(encoders.values()), splits["train"], splits["test"], encoder_names=list(encoders),
                         dataset_name=label, seeds=args.probe_seeds, epochs=args.probe_epochs, augment=False,
                         feature_layer=feature_layer, feature_cache_dir=str(out / "probe_cache"), **settings)
        for label, settings in probe_kinds.items()
    }

    # 4. gradient flow at the start of stage 3 (after stage 2), over held-out batches, every seed
    flow_data = make_shapes_dataset(args.flow_batches * args.flow_batch_size, 32, seed=args.backbone_seed,
                                    split="gradient_flow")
    flows = {fusion: [] for fusion in fusions}
    for (fusion, _seed), run in runs.items():
        model, processor = load_checkpoint(run / "stage2")
        flows[fusion] += gradient_flow_over_batches(model, processor, flow_data["image"], flow_data["caption"],
                                                    args.flow_batch_size)
    summaries = {fusions[f]: summarize_flows(v) for f, v in flows.items()}
    first_seed = args.pretrain_seeds[0]
    _run([sys.executable, "-m", "hive_hf.cli.attention_maps", str(runs[("joint", first_seed)] / "stage3"),
          "--output", str(out / "attention_maps.png"), "--json", str(out / "attention_maps.json")], args.threads)

    # 5. the report
    def probe_values(label: str, kind: str) -> list[float]:
        entries = probes[label]["encoders"]
        if kind == "base":
            return [float(a) for a in entries["base"]["per_seed"].values()]
        return [entries[f"{kind} seed {s}"]["mean"] for s in args.pretrain_seeds]

    kinds = ["base", *fusions.values()]
    lines = [f"| Encoder | {' | '.join(probes)} |", "|---|" + "---:|" * len(probes)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(cell(probe_values(label, kind)) for label in probes) + " |")
    probe_table = "\n".join(lines)

    def losses(fusion: str, stage: int, key: str) -> list[float]:
        return [markers[(fusion, s)][stage][key] for s in args.pretrain_seeds]

    lines = ["| pre-training loss (first -> last logged) | stage 1 | stage 2 | stage 3 |", "|---|---|---|---|"]
    for fusion, name in fusions.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{cell(losses(fusion, s, 'first_loss'), 3)} -> {cell(losses(fusion, s, 'last_loss'), 3)}"
            for s in (1, 2, 3)) + " |")
    loss_table = "\n".join(lines)

    hive, sa = summaries[fusions["joint"]], summaries[fusions["concat"]]
    layer_1 = {f: [fl.hidden_grad_norms[0] for fl in v] for f, v in flows.items()}
    layer_1_rel = {f: [fl.relative(fl.hidden_grad_norms)[0] for fl in v] for f, v in flows.items()}
    seeds = len(args.pretrain_seeds)
    findings = [
        compare(f"{label}, accuracy (%)", probe_values(label, fusions["joint"]), probe_values(label, fusions["concat"]),
                higher_is_better=True, digits=2, seeds=seeds)
        for label in probes
    ] + [
        compare("final stage-3 loss", losses("joint", 3, "last_loss"), losses("concat", 3, "last_loss"),
                higher_is_better=False, seeds=seeds),
        compare("gradient norm at encoder layer 1 (absolute)", layer_1["joint"], layer_1["concat"],
                higher_is_better=True, digits=4, seeds=seeds),
        compare("gradient at layer 1 relative to the deepest tap", layer_1_rel["joint"], layer_1_rel["concat"],
                higher_is_better=True, digits=2, seeds=seeds),
        compare("gradient's spread over the patches at layer 1 (normalised entropy, lower = more localized)",
                [fl.patch_entropy()[0] for fl in flows["joint"]], [fl.patch_entropy()[0] for fl in flows["concat"]],
                higher_is_better=False, digits=3, seeds=seeds),
    ]
    seeds_text = " ".join(map(str, args.pretrain_seeds))
    table = "\n".join([
        f"Probe accuracy (%, synthetic shapes, 5 classes; HIVE/SA: mean ± std over pre-training seeds {seeds_text}, "
        f"each the mean of probe seeds {' '.join(map(str, args.probe_seeds))}; base: over probe seeds; features of "
        f"encoder layer {feature_layer} for every encoder):", "", probe_table, "",
        "Pre-training loss per caption token (mean ± std over pre-training seeds):", "", loss_table, "",
        f"Gradient reaching each encoder layer's output at the start of stage 3 (mean ± std over "
        f"{hive.num_batches} measurements: {len(args.pretrain_seeds)} seeds x {args.flow_batches} held-out batches "
        f"of {args.flow_batch_size}; relative: to the deepest tapped layer of the same batch; * = tapped):", "",
        summary_table({"HIVE": hive, "SA": sa}), "", "Differences:", "", *findings,
    ])
    wall = time.time() - started
    data = {
        "probes": probes,
        "pretraining": {f"{f} seed {s}": {st: {k: v for k, v in m.items() if k != "log_history"}
                                          for st, m in per_stage.items()} for (f, s), per_stage in markers.items()},
        "gradient_flow": {name: vars(s) for name, s in summaries.items()},
        "findings": findings,
        "wall_seconds": wall,
    }
    write_results(results_file, table, data, seeds=args.pretrain_seeds, threads=args.threads)
    (out / "results.md").write_text(f"# Small-scale reproduction\n\n{table}\n\nWall time: {wall / 60:.1f} min.\n")
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str))
    print("\n" + table)
    print(f"\nwall time {wall / 60:.1f} min; written to {out} and {results_file}")


if __name__ == "__main__":
    main()
