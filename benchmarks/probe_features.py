#!/usr/bin/env python
"""The README's probe table: the features the classification probe reads by default and those it read before, on the
demo's base and HIVE encoders (README, "Classification probe").

Four `examples/run_probe.py` runs on the two encoders of the demo pre-training (`<demo_dir>/backbones/vision`, the
stock tower it started from, and `<demo_dir>/stage3`), each on the same synthetic shapes splits, probe seeds and
`--recipe paper`, with the features computed once per encoder and setting (`--augment False --feature_cache_dir`):

- attentive probe on a block's output: the default (a HIVE checkpoint's deepest tap, -2 for a stock tower),
- attentive probe on `last_hidden_state`: what it read before (the last block and SigLIP's post-LayerNorm),
- linear probe on the mean of the block output: the default,
- linear probe on `pooler_output`: what it read before (SigLIP's attention-pooling head).

    python examples/run_pretrain.py examples/configs/demo.json    # outputs/demo, once (under a minute)
    python benchmarks/probe_features.py --threads 1

Each run writes `<output_dir>/<setting>/probe_results.{json,md}` (per-seed accuracies, chosen learning rates); the
table goes to --results_file with its provenance line (and the numbers to a .json beside it), which the README quotes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hive_hf.cli.measure import DemoMeasurementArguments, run_step
from hive_hf.cli.parsing import HiveArgumentParser, user_errors
from hive_hf.runs.records import command_line, demo_encoders, write_results
from hive_hf.runs.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]

# {output subfolder: (column title, the run_probe.py flags that make the setting)}
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "attentive": ("attentive: block output (default)", []),
    "attentive_last_hidden_state": ("attentive: `last_hidden_state` (before)",
                                    ["--feature_layer", "last_hidden_state"]),
    "linear": ("linear: mean of the block output (default)", ["--probe", "linear"]),
    "linear_pooler": ("linear: `pooler_output` (before)", ["--probe", "linear", "--pooling", "pooler"]),
}


def probe_command(encoders: dict[str, Path], flags: list[str], output_dir: Path, cache_dir: Path,
                  threads: int) -> list[str]:
    """The `examples/run_probe.py` arguments of one setting: the README's flags, then the setting's."""
    return [str(ROOT / "examples" / "run_probe.py"), "--encoders", *map(str, encoders.values()),
            "--encoder_names", *encoders, "--augment", "False", "--feature_cache_dir", str(cache_dir),
            "--torch_num_threads", str(threads), "--output_dir", str(output_dir), *flags]


def probe_table(runs: dict[str, dict[str, Any]], precision: int = 2) -> str:
    """A caption and a markdown table from `{setting: its probe_results.json}` (every key of `SETTINGS`): one row per
    encoder, named with the features its default reads, one column per setting, `mean ± std` top-1 accuracy (%)."""
    first = runs[next(iter(SETTINGS))]
    for key in SETTINGS:
        if runs[key]["settings"]["seeds"] != first["settings"]["seeds"] or runs[key]["num_test"] != first["num_test"]:
            raise ValueError(f"The probe runs must share seeds and test split: {key} differs from {next(iter(SETTINGS))}.")
    settings = first["settings"]
    caption = (f"Top-1 accuracy (%, mean ± std over probe seeds {' '.join(map(str, settings['seeds']))}) on the "
               f"{first['dataset']} ({first['num_classes']} classes, {first['num_train']} train / {first['num_test']} "
               f"test images), `--recipe {settings['recipe']}`, `--augment {settings['augment']}`:")
    rows = [[f"{name} (`{entry['features']}`)",
             *(f"{c['mean']:.{precision}f} ± {c['std']:.{precision}f}"
               for c in (runs[key]["encoders"][name] for key in SETTINGS))]
            for name, entry in first["encoders"].items()]
    header = ["encoder (default features)", *(title for title, _ in SETTINGS.values())]
    return caption + "\n\n" + markdown_table(header, rows, align="l" + "r" * len(SETTINGS))


@dataclass
class ProbeFeaturesArguments(DemoMeasurementArguments):
    output_dir: str = field(default="outputs/probe_features",
                            metadata={"help": "One folder per setting (probe_results.json/.md) and the feature cache."})
    results_file: str = field(default="outputs/probe_features/results.md", metadata={
        "help": "The table (and a .json beside it); results/probe_features.md is the file the README quotes."})


def main() -> None:
    parser = HiveArgumentParser(ProbeFeaturesArguments, description=__doc__.split("\n\n")[0])
    with user_errors(parser.prog, parser.flag_names()):
        (args,) = parser.parse()
        encoders = demo_encoders(args.demo_dir)
    out = Path(args.output_dir)
    runs, commands, seconds = {}, {}, {}
    for key, (_, flags) in SETTINGS.items():
        command = probe_command(encoders, flags, out / key, out / "cache", args.threads)
        commands[key] = command_line(command)
        seconds[key] = run_step(command, args.threads)
        runs[key] = json.loads((out / key / "probe_results.json").read_text())

    table = probe_table(runs)
    data = {"columns": {key: title for key, (title, _) in SETTINGS.items()}, "commands": commands, "runs": runs,
            "wall_seconds": seconds}
    path = write_results(args.results_file, table, data, seeds=runs[next(iter(SETTINGS))]["settings"]["seeds"],
                         threads=args.threads)
    print(f"\n{table}\n\nwritten to {path} ({sum(seconds.values()) / 60:.1f} min)")


if __name__ == "__main__":
    main()
