"""Where a probe head reads its features: the frozen encoder run on every batch, or features computed once.

Feature caching (``feature_cache_dir``). With augmentation on, every epoch shows new random views, so the encoder has
to run on every batch. With ``augment=False`` each image always gives the same features; they are then computed
once per (encoder, split), saved to disk (``torch.save``, memory-mapped on load) and reused by every epoch, learning
rate, seed and later run. Caching therefore requires ``augment=False``: a finite set of pre-computed augmented views
would be a different (and weaker) regularizer than fresh views, yet still cost one encoder pass and one copy of the
features per view, so we do not pretend to offer it. This is the usual trade: the fast linear-probe protocol (as in
CLIP's logistic-regression probes) without augmentation, the paper's recipe with it. For ``attentive`` the cache
holds every token (``num_images x tokens x width`` floats; about 2.4 MB per image for SigLIP-L/16-384), so it is
meant for small datasets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import logging

from .data import _chunks, _ImageBatches, _keep, _ProbeSplits
from .encoders import _FrozenEncoder
from .settings import ProbeSettings

logger = logging.get_logger(__name__)


class _OnlineFeatures:
    """Runs the frozen encoder on every batch: required when each epoch sees new augmented views."""

    def __init__(self, encoder: _FrozenEncoder, images: _ImageBatches, skipped: set[int], num_workers: int):
        self.encoder, self.images, self.skipped, self.num_workers = encoder, images, skipped, num_workers

    def batches(self, row_batches: list[list[int]], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.images, batch_size=None, sampler=[(epoch, rows) for rows in row_batches],
            num_workers=self.num_workers, collate_fn=_keep,
        )
        for batch in loader:
            self.skipped.update(batch["skipped"])
            if batch["pixel_values"] is None:
                continue
            yield self.encoder(batch["pixel_values"]), batch["labels"].to(self.encoder.device)


class _CachedFeatures:
    """Features computed once (without augmentation), indexed by dataset row."""

    def __init__(self, cache: dict[str, Any], device: torch.device):
        self.features, self.labels, self.device = cache["features"], cache["labels"], device
        self.position = torch.full((cache["num_rows"],), -1, dtype=torch.long)  # row -> cache index, -1: skipped
        self.position[cache["rows"]] = torch.arange(len(cache["rows"]))
        self.skipped = set(cache["skipped"])

    def batches(self, row_batches: list[list[int]], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in row_batches:
            index = self.position[torch.tensor(rows, dtype=torch.long)]
            index = index[index >= 0]
            if len(index):
                yield self.features[index].to(self.device, torch.float32), self.labels[index].to(self.device)


def _compute_cache(
    encoder: _FrozenEncoder, images: _ImageBatches, batch_size: int, num_workers: int, desc: str
) -> dict[str, Any]:
    features, labels, rows, skipped = [], [], [], []
    loader = torch.utils.data.DataLoader(
        images, batch_size=None, sampler=[(0, chunk) for chunk in _chunks(range(len(images)), batch_size)],
        num_workers=num_workers, collate_fn=_keep,
    )
    for batch in tqdm(loader, desc=desc, leave=False):
        skipped += batch["skipped"]
        if batch["pixel_values"] is not None:
            features.append(encoder(batch["pixel_values"]).cpu())
            labels.append(batch["labels"])
            rows.append(batch["rows"])
    if not features:
        raise ValueError(f"{desc}: none of the {len(images)} images could be read.")
    return {
        "features": torch.cat(features), "labels": torch.cat(labels), "rows": torch.cat(rows),
        "num_rows": len(images), "skipped": skipped,
    }


def _cached_features(
    encoder: _FrozenEncoder,
    images: _ImageBatches,
    settings: ProbeSettings,
    key: dict[str, Any],
    desc: str,
) -> _CachedFeatures:
    """Features of every row, read from `feature_cache_dir` when an identical computation was saved there."""
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()
    path = Path(settings.feature_cache_dir) / f"{key['split']}-{key['feature']}-{digest}.pt"
    if path.exists():
        logger.info(f"{desc}: features read from {path}")
        cache = torch.load(path, mmap=True, weights_only=True)
    else:
        cache = _compute_cache(encoder, images, settings.batch_size, settings.num_workers, desc)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        torch.save(cache, partial)
        partial.replace(path)  # never leave a half-written cache behind
        (path.with_suffix(".json")).write_text(json.dumps(key, indent=2, sort_keys=True))
        logger.info(f"{desc}: features cached in {path}")
    return _CachedFeatures(cache, encoder.device)


def _fingerprint_model(model: PreTrainedModel) -> str:
    """A hash of the model's config and weights: the default identity of an encoder in the feature cache."""
    digest = hashlib.blake2b(model.config.to_json_string().encode(), digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_FeatureSource = _OnlineFeatures | _CachedFeatures


@dataclass
class _FeatureSources:
    """The feature sources of every split of one probe."""

    splits: dict[str, _FeatureSource]  # one fixed (un-augmented) view of each image, per split
    train: _FeatureSource  # what training reads: fresh augmented views when `settings.augment`, else `splits["train"]`
    skipped: dict[str, set[int]]  # unreadable rows per split, filled as the sources are read

    def skipped_counts(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self.skipped.items()}


def _feature_sources(
    encoder: _FrozenEncoder,
    splits: _ProbeSplits,
    settings: ProbeSettings,
    cache_key: dict[str, Any] | None,
    encoder_name: str,
) -> _FeatureSources:
    """Cached features when `settings.feature_cache_dir` is set (`cache_key` identifies the encoder, by default a
    hash of its config and weights), else the encoder run on every batch."""
    if settings.feature_cache_dir is not None:
        return _cached_sources(encoder, splits, settings, cache_key, encoder_name)
    skipped: dict[str, set[int]] = {split: set() for split in splits.rows}
    sources: dict[str, _FeatureSource] = {
        split: _OnlineFeatures(encoder, splits.images(split), skipped[split], settings.num_workers)
        for split in splits.rows
    }
    train = sources["train"]
    if settings.augment:
        augmented = splits.images("train", settings.augmentation(splits.input_size))
        train = _OnlineFeatures(encoder, augmented, skipped["train"], settings.num_workers)
    return _FeatureSources(sources, train, skipped)


def _cached_sources(
    encoder: _FrozenEncoder,
    splits: _ProbeSplits,
    settings: ProbeSettings,
    cache_key: dict[str, Any] | None,
    encoder_name: str,
) -> _FeatureSources:
    """Every split's features from `feature_cache_dir`, computed and saved first when no identical run saved them."""
    if cache_key is None:
        cache_key = {"encoder": _fingerprint_model(encoder.model)}
    sources: dict[str, _FeatureSource] = {}
    for split, rows in splits.rows.items():
        key = {
            **cache_key, "split": split, "dataset": rows._fingerprint, "num_rows": len(rows),
            "image_column": splits.image_column, "label_column": splits.label_column, "feature": settings.feature,
            "features": encoder.description,
            "image_size": settings.image_size, "image_processor": splits.image_processor.to_json_string(),
        }
        sources[split] = _cached_features(encoder, splits.images(split), settings, key, f"{encoder_name} {split}")
    return _FeatureSources(sources, sources["train"], {split: source.skipped for split, source in sources.items()})
