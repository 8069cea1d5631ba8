#!/usr/bin/env python
"""A small-scale reproduction of the paper's comparison, on CPU: HIVE (joint) vs the SA baseline (concat) vs base.

One command:
  1. writes one pair of tiny pretrained backbones (a SigLIP tower and a Llama, as in the demo),
  2. pre-trains that same pair through all three stages twice, with `--fusion joint` and `--fusion concat`
     (same seeds, steps, data, hyperparameters; `examples/run_pretrain.py` with `examples/configs/demo.json`),
  3. probes the two pre-trained encoders and the untouched base encoder on the synthetic shapes classification
     (same splits and seeds; an attentive and a linear probe),
  4. measures gradient flow into the encoder (HIVE vs concat at the start of stage 3) and draws HIVE's
     cross-attention maps,
  5. writes `results.md` / `results.json` and the figures into `--output_dir`.

    python examples/reproduce_small.py --output_dir outputs/reproduce_small

Whatever comes out is reported as it is; the tiny scale is far from the paper's (a 64-wide, 4-layer encoder and
LLM, 32-px synthetic images).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from transformers.utils import logging

ROOT = Path(__file__).resolve().parents[1]
logger = logging.get_logger("hive_hf.reproduce_small")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def pretrain(out: Path, fusion: str, backbones: Path, extra: list[str]) -> Path:
    run_dir = out / fusion
    _run([sys.executable, str(ROOT / "examples" / "run_pretrain.py"), str(ROOT / "examples" / "configs" / "demo.json"),
          "--tiny_backbones", "False", "--vision_model_name_or_path", str(backbones / "vision"),
          "--text_model_name_or_path", str(backbones / "text"), "--fusion", fusion, "--output_dir", str(run_dir),
          "--disable_tqdm", "True", *extra])
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/reproduce_small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Probe seeds.")
    parser.add_argument("--seed", type=int, default=0, help="Backbone and pre-training seed.")
    parser.add_argument("--probe_epochs", type=int, default=30)
    parser.add_argument("--pretrain_args", nargs=argparse.REMAINDER, default=[],
                        help="Extra run_pretrain.py flags for both runs (e.g. --stage_max_steps 20 20 20); last.")
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from hive_hf.data import make_shapes_dataset
    from hive_hf.evaluation import format_table, load_probe_datasets, run_probe
    from hive_hf.tiny_backbones import write_tiny_backbones
    from hive_hf.training.staged_run import RunLayout

    torch.set_num_threads(max(1, torch.get_num_threads()))
    # 1. one pair of pretrained backbones for both runs, as run_pretrain's --tiny_backbones would write them
    backbones = out / "backbones"
    if not (backbones / "text" / "config.json").exists():
        data = make_shapes_dataset(2000, image_size=32, seed=args.seed)
        write_tiny_backbones(backbones, data["caption"], images=data["image"], seed=args.seed,
                             text_pretrain_steps=300, vision_pretrain_steps=300)

    # 2. the same pre-training twice
    runs, timings = {}, {}
    for fusion in ("joint", "concat"):
        start = time.time()
        runs[fusion] = pretrain(out, fusion, backbones, ["--seed", str(args.seed), *args.pretrain_args])
        timings[fusion] = time.time() - start
    stages = {
        fusion: {s: RunLayout(run).read_marker(s) for s in (1, 2, 3)}
        for fusion, run in runs.items()
    }

    # 3. probes on the same splits and seeds
    splits = load_probe_datasets("synthetic", image_size=32, seed=args.seed)
    train, test = splits["train"], splits["test"]
    encoders = [str(backbones / "vision"), str(runs["concat"] / "stage3"), str(runs["joint"] / "stage3")]
    names = ["base", "SA (concat)", "HIVE (joint)"]
    probes = {}
    for label, settings in {
        "attentive probe": dict(probe="attentive", learning_rates=[3e-3, 1e-2, 3e-2]),
        "linear probe (mean pooling)": dict(probe="linear", pooling="mean", learning_rates=[1e-2, 3e-2, 1e-1]),
    }.items():
        probes[label] = run_probe(
            encoders, train, test, encoder_names=names, dataset_name=label, seeds=args.seeds,
            epochs=args.probe_epochs, augment=False, feature_cache_dir=str(out / "probe_cache"), **settings,
        )

    # 4. gradient flow (at the start of stage 3: both runs after stage 2) and HIVE's attention maps
    _run([sys.executable, "-m", "hive_hf.analysis.gradient_flow", "--hive", str(runs["joint"] / "stage2"),
          "--baseline", str(runs["concat"] / "stage2"), "--output", str(out / "gradient_flow.png"),
          "--json", str(out / "gradient_flow.json")])
    _run([sys.executable, "-m", "hive_hf.analysis.attention_maps", str(runs["joint"] / "stage3"),
          "--output", str(out / "attention_maps.png"), "--json", str(out / "attention_maps.json")])
    flow = json.loads((out / "gradient_flow.json").read_text())
    from hive_hf.analysis import plot_loss_curves

    for fusion, per_stage in stages.items():
        plot_loss_curves({f"stage {s}": per_stage[s]["log_history"] for s in (1, 2, 3)},
                         out / f"loss_curves_{fusion}.png", title=f"pre-training ({fusion})")

    # 5. the report
    lines = ["# Small-scale reproduction", "", "## Probe accuracy (synthetic shapes, 5 classes; mean ± std over seeds "
             f"{args.seeds})", "", format_table(list(probes.values())), "", "## Pre-training",
             "", "| run | stage | loss first -> last | train time (s) |", "|---|---|---|---|"]
    for fusion, per_stage in stages.items():
        for s in (1, 2, 3):
            m = per_stage[s]
            lines.append(f"| {fusion} | {s} | {m['first_loss']:.3f} -> {m['last_loss']:.3f} | "
                         f"{m['train_runtime']:.1f} |")
    lines += ["", "## Gradient flow into the encoder (one batch, start of stage 3)", "",
              _flow_table(flow), "", "Figures: `loss_curves_joint.png`, `loss_curves_concat.png`, "
              "`gradient_flow.png`, `attention_maps.png`."]
    report = "\n".join(lines) + "\n"
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(
        {"probes": probes, "pretraining": {f: {s: {k: v for k, v in m.items() if k != "log_history"}
                                               for s, m in st.items()} for f, st in stages.items()},
         "pretraining_wall_seconds": timings, "gradient_flow": flow}, indent=2, default=str))
    print("\n" + report)
    print(f"written to {out}")


def _flow_table(flow: dict) -> str:
    """Per encoder layer: the gradient norm reaching its output for each model, and the same relative to the
    model's deepest tapped layer (the loss scale cancels; the paper's claim is about how much reaches early
    layers)."""
    models = list(flow)
    header = [f"{m}: d loss / d h" for m in models] + [f"{m}: relative to deepest tap" for m in models]
    rows = ["| layer | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    absolute = [flow[m]["hidden_grad_norms"] for m in models]
    relative = []
    for m, values in zip(models, absolute):
        ref = values[max(flow[m]["tapped_layers"]) - 1]
        relative.append([v / ref if ref else float("nan") for v in values])
    for i, cells in enumerate(zip(*absolute, *relative)):
        rows.append(f"| {i + 1} | " + " | ".join(f"{v:.3g}" for v in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
