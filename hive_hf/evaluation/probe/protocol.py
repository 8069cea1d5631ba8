"""The probe protocol: train heads on a frozen encoder's features, pick the learning rate, score the seeds.

With more than one learning rate, each is trained once (first seed) on the training split minus a held-out
``validation_fraction`` (or on all of it when a separate validation split is given) and scored on the held-out rows;
the best one is then trained on the full training split once per seed and scored on the test split. The result is
the mean and the sample standard deviation (n - 1) of the per-seed top-1 accuracies, in percent.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup
from transformers.utils import logging

from ...metrics import load_metric
from .data import _chunks, _probe_splits, _ProbeSplits
from .encoders import _bf16_autocast, _FrozenEncoder, default_feature_layer, load_encoder
from .features import _feature_sources, _FeatureSource, _FeatureSources
from .heads import _head_factory, _parameter_groups
from .settings import STOCK_FEATURE_LAYER, ProbeSettings, _settings_from

logger = logging.get_logger(__name__)

__all__ = ["probe_encoder", "run_probe", "summarize_seeds"]


def _train_head(
    make_head: Callable[[], nn.Module],
    source: _FeatureSource,
    rows: list[int],
    settings: ProbeSettings,
    learning_rate: float,
    seed: int,
    device: torch.device,
    desc: str,
) -> nn.Module:
    """AdamW, linear warmup then cosine decay per step, gradient clipping; the seed fixes init and batch order."""
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(seed)
        head = make_head().to(device)
    optimizer = torch.optim.AdamW(_parameter_groups(head, settings.weight_decay), lr=learning_rate)
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps(steps_per_epoch), total)
    order = torch.Generator().manual_seed(seed)
    rows_tensor = torch.tensor(rows, dtype=torch.long)
    head.train()
    for epoch in tqdm(range(settings.epochs), desc=desc, leave=False):
        shuffled = rows_tensor[torch.randperm(len(rows), generator=order)].tolist()
        for features, labels in source.batches(_chunks(shuffled, settings.batch_size), epoch):
            with _bf16_autocast(device, settings.bf16):
                loss = nn.functional.cross_entropy(head(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
    return head.eval()


@torch.no_grad()
def _accuracy(
    head: nn.Module, source: _FeatureSource, rows: list[int], settings: ProbeSettings, metric: Any
) -> float:
    """Top-1 accuracy in percent over the readable rows among `rows`."""
    predictions, references = [], []
    device = next(head.parameters()).device
    for features, labels in source.batches(_chunks(rows, settings.batch_size), epoch=0):
        with _bf16_autocast(device, settings.bf16):
            predictions += head(features).argmax(dim=-1).tolist()
        references += labels.tolist()
    if not references:
        raise ValueError("No readable image to evaluate on.")
    return 100.0 * metric.compute(predictions=predictions, references=references)["accuracy"]


def summarize_seeds(accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of per-seed accuracies; the deviation of one seed is 0."""
    if not accuracies:
        raise ValueError("summarize_seeds needs at least one accuracy.")
    values = [float(a) for a in accuracies]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _validation_rows(num_rows: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(rows to fit, held-out rows): a seeded `fraction` of the training rows held out, at least one."""
    order = np.random.default_rng(seed).permutation(num_rows)
    held_out = max(1, round(fraction * num_rows))
    if held_out >= num_rows:
        raise ValueError(f"--validation_fraction {fraction} of {num_rows} training rows leaves nothing to train on.")
    return sorted(order[held_out:].tolist()), sorted(order[:held_out].tolist())


def _select_learning_rate(
    make_head: Callable[[], nn.Module],
    sources: _FeatureSources,
    splits: _ProbeSplits,
    settings: ProbeSettings,
    device: torch.device,
    metric: Any,
    encoder_name: str,
) -> tuple[float, dict[float, float]]:
    """The only learning rate given, or the one scoring best on held-out rows (first seed; ties: the first listed);
    also every candidate's validation accuracy in %."""
    if len(settings.learning_rates) == 1:
        return settings.learning_rates[0], {}
    num_train = len(splits.rows["train"])
    if "validation" in splits.rows:
        fit_rows, held_rows = list(range(num_train)), list(range(len(splits.rows["validation"])))
        held_source = sources.splits["validation"]
    else:
        fit_rows, held_rows = _validation_rows(num_train, settings.validation_fraction, settings.split_seed)
        held_source = sources.splits["train"]  # un-augmented views of the held-out training rows
    validation_accuracy: dict[float, float] = {}
    for lr in settings.learning_rates:
        desc = f"{encoder_name}: lr {lr:g} (selection)"
        head = _train_head(make_head, sources.train, fit_rows, settings, lr, settings.seeds[0], device, desc)
        validation_accuracy[lr] = _accuracy(head, held_source, held_rows, settings, metric)
        logger.info(f"{desc}: validation accuracy {validation_accuracy[lr]:.2f}%")
    return max(validation_accuracy, key=validation_accuracy.get), validation_accuracy


def _test_seeds(
    make_head: Callable[[], nn.Module],
    sources: _FeatureSources,
    splits: _ProbeSplits,
    settings: ProbeSettings,
    learning_rate: float,
    device: torch.device,
    metric: Any,
    encoder_name: str,
) -> dict[int, float]:
    """Test accuracy in % per seed of a head trained on the whole training split at `learning_rate`."""
    all_rows, test_rows = list(range(len(splits.rows["train"]))), list(range(len(splits.rows["test"])))
    per_seed: dict[int, float] = {}
    for seed in settings.seeds:
        desc = f"{encoder_name}: lr {learning_rate:g} seed {seed}"
        head = _train_head(make_head, sources.train, all_rows, settings, learning_rate, seed, device, desc)
        per_seed[seed] = _accuracy(head, sources.splits["test"], test_rows, settings, metric)
        logger.info(f"{desc}: test accuracy {per_seed[seed]:.2f}%")
    return per_seed


def probe_encoder(
    model: PreTrainedModel,
    image_processor: Any,
    train: datasets.Dataset,
    test: datasets.Dataset,
    settings: ProbeSettings | None = None,
    *,
    validation: datasets.Dataset | None = None,
    image_column: str = "image",
    label_column: str = "label",
    encoder_name: str = "encoder",
    cache_key: dict[str, Any] | None = None,
    feature_layer: int | str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Probe one loaded vision model (e.g. from :func:`load_encoder`); its weights are never changed.

    The model is put in eval mode with `requires_grad=False` and moved to `settings.device`; only the head trains.

    Args:
        model: a stock vision model whose forward returns `last_hidden_state` (and `pooler_output`).
        image_processor: its image processor (rescale, normalise and, on test images, resize).
        train / test: datasets with `image_column` (PIL, bytes, `{"bytes", "path"}` or paths) and `label_column`
            (`ClassLabel`, integers or strings).
        settings: a :class:`ProbeSettings`; or pass its fields as keyword arguments.
        validation: a split to choose the learning rate on (default: hold out `settings.validation_fraction` of
            train).
        cache_key: what identifies this encoder in the feature cache (default: a hash of its config and weights).
        feature_layer: the `hidden_states` index (or `LAST_HIDDEN_STATE`) the head reads, overriding
            `settings.feature_layer`; default `STOCK_FEATURE_LAYER` (`run_probe` passes a HIVE checkpoint's deepest
            tap, see :func:`default_feature_layer`).

    Returns:
        `{"mean", "std", "per_seed": {seed: accuracy %}, "learning_rate", "validation_accuracy": {lr: %},
        "features": e.g. "hidden_states[23]", "skipped_images": {split: count}, "num_classes", "class_names",
        "seconds"}`.
    """
    settings = _settings_from(settings, kwargs)
    start = time.perf_counter()
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = _probe_splits(train, test, validation, image_column, label_column, image_processor, settings.image_size,
                           model.config.image_size)
    layer = next(layer for layer in (feature_layer, settings.layer, STOCK_FEATURE_LAYER) if layer is not None)
    encoder = _FrozenEncoder(model, settings.feature, layer, splits.input_size, device, settings.bf16)
    sources = _feature_sources(encoder, splits, settings, cache_key, encoder_name)
    make_head = _head_factory(settings, encoder.width, len(splits.class_names), model.config.num_attention_heads)
    metric = load_metric("accuracy")
    learning_rate, validation_accuracy = _select_learning_rate(
        make_head, sources, splits, settings, device, metric, encoder_name
    )
    per_seed = _test_seeds(make_head, sources, splits, settings, learning_rate, device, metric, encoder_name)
    mean, std = summarize_seeds(list(per_seed.values()))

    counts = sources.skipped_counts()
    if any(counts.values()):
        logger.warning(f"{encoder_name}: skipped unreadable images per split: {counts}")
    return {
        "mean": mean,
        "std": std,
        "per_seed": per_seed,
        "learning_rate": learning_rate,
        "validation_accuracy": validation_accuracy,
        "features": encoder.description,
        "skipped_images": counts,
        "num_classes": len(splits.class_names),
        "class_names": splits.class_names,
        "num_train": len(splits.rows["train"]),
        "num_test": len(splits.rows["test"]),
        "seconds": time.perf_counter() - start,
    }


def _default_names(encoders: Sequence[str]) -> list[str]:
    short = [Path(e.rstrip("/")).name or e for e in encoders]
    return short if len(set(short)) == len(short) else list(encoders)


def run_probe(
    encoders: Sequence[str],
    train: datasets.Dataset,
    test: datasets.Dataset,
    settings: ProbeSettings | None = None,
    *,
    encoder_names: Sequence[str] | None = None,
    dataset_name: str = "dataset",
    validation: datasets.Dataset | None = None,
    image_column: str = "image",
    label_column: str = "label",
    load_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Probe each encoder on one dataset with identical settings (the rows of the paper's Table 1).

    Args:
        encoders: checkpoints (folders or Hub ids) accepted by :func:`load_encoder`.
        train / test / validation / image_column / label_column: see :func:`probe_encoder`.
        settings: a :class:`ProbeSettings`; or pass its fields as keyword arguments
            (`probe="linear", seeds=(0, 1, 2), learning_rates=(1e-3,), epochs=10, batch_size=512, image_size=None,
            augment=False, feature_cache_dir=..., ...`).
        encoder_names: display names (default: the last path component of each encoder).
        dataset_name: the table column of this dataset.
        load_kwargs: forwarded to :func:`load_encoder` (`trust_remote_code`, `revision`, ...).

    Each encoder is read at `settings.feature_layer`, or by default at :func:`default_feature_layer` (a HIVE
    checkpoint's deepest tap, -2 for a stock tower).

    Returns:
        `{"dataset", "settings", "num_classes", "num_train", "num_test", "encoders": {name: {"name_or_path", "mean",
        "std", "per_seed", "learning_rate", "validation_accuracy", "features", "skipped_images", "seconds"}}}`;
        accuracies in %.
    """
    settings = _settings_from(settings, kwargs)
    names = list(encoder_names) if encoder_names is not None else _default_names(encoders)
    if len(names) != len(encoders) or len(set(names)) != len(names):
        raise ValueError(
            f"--encoder_names must give one distinct name per encoder: {len(encoders)} encoders, names {names}."
        )
    results: dict[str, Any] = {"dataset": dataset_name, "settings": asdict(settings), "encoders": {}}
    for name, name_or_path in zip(names, encoders):
        model, image_processor = load_encoder(name_or_path, **(load_kwargs or {}))
        layer = settings.layer
        if layer is None:
            layer = default_feature_layer(name_or_path, **(load_kwargs or {}))
        logger.info(f"probing {name} ({name_or_path}, {type(model).__name__}) on {dataset_name}")
        outcome = probe_encoder(
            model, image_processor, train, test, settings, validation=validation, image_column=image_column,
            label_column=label_column, encoder_name=name, feature_layer=layer,
        )
        for key in ("num_classes", "class_names", "num_train", "num_test"):
            results[key] = outcome.pop(key)
        results["encoders"][name] = {"name_or_path": name_or_path, **outcome}
    return results
