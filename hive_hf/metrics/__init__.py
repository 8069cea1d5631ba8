"""Evaluation metrics for the HIVE benchmarks, packaged as local ``evaluate`` modules.

Each metric lives in ``hive_hf/metrics/<name>/<name>.py`` as an ``evaluate.Metric`` subclass and is loaded offline
with ``evaluate.load(metric_path(name))`` (or :func:`load_metric`):

=====================  =================================================================  ==========================
name                   definition                                                         result keys
=====================  =================================================================  ==========================
``accuracy``           classification accuracy (fraction, like ``evaluate``'s accuracy)   ``accuracy``
``vqa_accuracy``       VQAv2 / OK-VQA soft accuracy, lmms-eval's (or vqaEval's) answers   ``vqa_accuracy`` (%)
``gqa_accuracy``       exact match after lmms-eval's normalisation (case, punctuation)    ``gqa_accuracy`` (%)
``scienceqa_accuracy`` the option letter, parsed as lmms-eval does (or ``"lenient"``)      ``scienceqa_accuracy`` (%)
``mme_score``          MME acc + acc+ per subtask (official answer parsing), totals        subtasks, ``total`` ...
=====================  =================================================================  ==========================

Every metric raises a ``ValueError`` on an empty input list (an empty evaluation has no meaningful score).

Why the scripts share no code: ``evaluate.load(path)`` copies only the metric script (plus modules it imports with
a *relative* import from the same folder) into its dynamic-module cache and imports it from there. A shared helper
in ``hive_hf/metrics/`` is therefore not importable relatively, and an absolute ``from hive_hf... import`` would tie
every script to an installed ``hive_hf`` (importing torch and transformers through ``hive_hf/__init__.py`` on each
load), keep the helper out of the hash ``evaluate`` uses to version its cache, and stop the scripts from working
when copied or pushed to the Hub on their own. Each script therefore imports only the standard library,
``datasets`` and ``evaluate``; the little shared code (input-length check, GQA/ScienceQA text normalisation) is
duplicated and ``tests/test_metrics.py`` checks the copies stay identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["AVAILABLE_METRICS", "metric_path", "load_metric"]

_METRICS_DIR = Path(__file__).resolve().parent

AVAILABLE_METRICS: tuple[str, ...] = (
    "accuracy",
    "vqa_accuracy",
    "gqa_accuracy",
    "scienceqa_accuracy",
    "mme_score",
)


def metric_path(name: str) -> str:
    """Return the absolute path of the folder holding metric ``name``, ready for ``evaluate.load``.

    Args:
        name: one of :data:`AVAILABLE_METRICS` (hyphens are accepted for underscores, e.g. ``"vqa-accuracy"``).

    Raises:
        ValueError: if ``name`` is not a metric of this package.
    """
    key = name.strip().replace("-", "_")
    if key not in AVAILABLE_METRICS:
        raise ValueError(f"Unknown metric {name!r}; available metrics: {', '.join(AVAILABLE_METRICS)}.")
    script = _METRICS_DIR / key / f"{key}.py"
    if not script.is_file():  # pragma: no cover - only on a broken installation
        raise FileNotFoundError(f"Metric script {script} is missing; reinstall hive_hf (package data metrics/*/*.py).")
    return str(script.parent)


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load(metric_path(name), **kwargs)``: load one of this package's metrics offline.

    Keyword arguments (``experiment_id``, ``keep_in_memory``, ``num_process``, ``process_id`` ...) are forwarded to
    ``evaluate.load``.
    """
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
