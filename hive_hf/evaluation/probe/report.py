"""The probe's results as markdown: the paper's Table 1 (:func:`format_table`) and per-run details."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...runs.tables import markdown_table

__all__ = ["format_details", "format_table"]


def format_table(results: dict[str, Any] | Sequence[dict[str, Any]], precision: int = 2) -> str:
    """A markdown table like the paper's Table 1: one row per encoder, one column per dataset, `mean ± std` top-1
    accuracy in %, the best mean of each column in bold. Takes one :func:`run_probe` result or a list of them."""
    runs = [results] if isinstance(results, dict) else list(results)
    if not runs:
        raise ValueError("format_table needs at least one run_probe result.")
    encoders = list(dict.fromkeys(name for run in runs for name in run["encoders"]))
    best = [max(entry["mean"] for entry in run["encoders"].values()) for run in runs]
    rows = []
    for name in encoders:
        cells = [name]
        for run, top in zip(runs, best):
            entry = run["encoders"].get(name)
            if entry is None:
                cells.append("-")
                continue
            cell = f"{entry['mean']:.{precision}f} ± {entry['std']:.{precision}f}"
            cells.append(f"**{cell}**" if entry["mean"] == top else cell)
        rows.append(cells)
    return markdown_table(["Encoder", *(run["dataset"] for run in runs)], rows, "l" + "r" * len(runs))


def format_details(results: dict[str, Any] | Sequence[dict[str, Any]], precision: int = 2) -> str:
    """Markdown lines per dataset and encoder: per-seed accuracies, chosen learning rate, skipped images, time."""
    runs = [results] if isinstance(results, dict) else list(results)
    lines = []
    for run in runs:
        settings = run["settings"]
        lines.append(
            f"**{run['dataset']}** ({run['num_train']} train / {run['num_test']} test images, {run['num_classes']} "
            f"classes; probe {settings['probe']}"
            + (f", pooling {settings['pooling'] or 'mean'}" if settings["probe"] == "linear" else "")
            + f", recipe {settings['recipe']}, {settings['epochs']} epochs, augment {settings['augment']})"
        )
        lines.append("")
        for name, entry in run["encoders"].items():
            seeds = ", ".join(f"seed {s}: {a:.{precision}f}" for s, a in entry["per_seed"].items())
            selection = ", ".join(
                f"{float(lr):g}: {a:.{precision}f}" for lr, a in entry["validation_accuracy"].items()
            )
            lines.append(
                f"- {name} (`{entry['name_or_path']}`, {entry['features']}): {seeds}; lr {entry['learning_rate']:g}"
                + (f" (validation {selection})" if selection else "")
                + "; skipped images: " + ", ".join(f"{k} {n}" for k, n in entry["skipped_images"].items())
                + f"; {entry['seconds']:.0f} s"
            )
        lines.append("")
    return "\n".join(lines)
