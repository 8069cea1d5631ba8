"""Measurements and pictures of what HIVE does: loss curves (more to come: gradient flow, attention maps)."""

from .plots import plot_loss_curves

__all__ = ["plot_loss_curves"]
