"""Loss curves as PNGs (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path, title: str = "HIVE pre-training"):
    """Plot training loss against global step for each named `Trainer.state.log_history`; returns the path."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for name, history in histories.items():
        points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        if not points:
            continue
        steps, losses = zip(*points)
        ax.plot([offset + s for s in steps], losses, marker=".", label=name)
        offset += max(steps)
    ax.set_xlabel("optimizer step" + (" (stages run one after another)" if len(histories) > 1 else ""))
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(histories) > 1 and ax.get_legend_handles_labels()[0]:  # a legend needs a drawn curve
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
