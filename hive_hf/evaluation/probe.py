"""Classification probes of frozen vision encoders: Table 1 of the HIVE paper.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models" (arXiv 2604.00086), Sec. 4;
the authors' released probe is `llava_next/train/train_classification.py` with `scripts/train/classification.sh`
(GitHub eugenelet/HIVE @ a5160ce). The encoder stays frozen (eval mode, no gradient, weights never touched); only a
small head trains:

- ``attentive`` (the authors' default): LayerNorm, then one learned query attends over the tokens
  (``nn.MultiheadAttention`` with the tower's number of heads), then a linear classifier; initialised as the
  authors' ``ImageClassificationAttentiveProbe``.
- ``linear``: one ``nn.Linear`` on pooled tokens: their mean (the default) or, with ``pooling="pooler"``, the tower's
  ``pooler_output`` (SigLIP: the attention-pooling "MAP" head; CLIP: the normalised class token).

Which features (``feature_layer``). The authors delete the blocks after the one they probe and SigLIP's post-norm,
so the head reads a block's raw output: ``hidden_states[k]`` (0 = patch embeddings, ``k`` = output of block ``k``),
patch tokens only (a CLIP class token is dropped). By default ``k`` is the deepest layer HIVE tapped for a HIVE
checkpoint (the last layer pre-training shaped; the authors' SigLIP-L taps end at block 23 of 24) and
``hidden_states[-2]`` for a stock tower (what the authors' probe reads from any SigLIP-L: block 23 of 24).
``feature_layer="last_hidden_state"`` reads the tower's output instead (after the last block and, for SigLIP, its
post-LayerNorm; CLIP's class token kept), which HIVE never trains when its deepest tap is not the last block.
``pooling="pooler"`` reads SigLIP's pooling head, which HIVE never trains at all.

Recipes (``recipe``), by name (:data:`PROBE_RECIPES`). ``paper`` (the default) is the paper's Table 4: AdamW, batch
512, gradient clipping at 3.0, 1.5 epochs of linear warmup then cosine decay; the table leaves the learning rates,
weight decay and epochs blank, so we pick a learning rate from a grid on held-out data and train 30 epochs. The
authors' scripts give ``authors`` (5 epochs, lr 2e-4, weight decay 0.01, warmup 3% of the steps, bf16) for CIFAR,
Tiny-ImageNet, Caltech-256, Food-101, Cars and Pets, and ``authors_imagenet`` (1 epoch at lr 1e-3, the rest the same)
for ImageNet-1K, as in ``classification.sh`` (``HIVE_florence.sh`` has a disabled ImageNet block at lr 2e-4).
Both train with RandomResizedCrop(0.4-1.0, 3/4-4/3, bicubic) + horizontal flip + ColorJitter(0.2, 0.2, 0.2, 0)
(``augment.py``); test images get the encoder's own image processor and nothing else. A flag given explicitly
overrides its recipe value.

Protocol. With more than one learning rate, each is trained once (first seed) on the training split minus a held-out
``validation_fraction`` (or on all of it when a separate validation split is given) and scored on the held-out rows;
the best one is then trained on the full training split once per seed and scored on the test split. The result is
the mean and the sample standard deviation (n - 1) of the per-seed top-1 accuracies, in percent.

Feature caching (``feature_cache_dir``). With augmentation on, every epoch shows new random views, so the encoder has
to run on every batch. With ``augment=False`` each image always gives the same features; they are then computed
once per (encoder, split), saved to disk (``torch.save``, memory-mapped on load) and reused by every epoch, learning
rate, seed and later run. Caching therefore requires ``augment=False``: a finite set of pre-computed augmented views
would be a different (and weaker) regularizer than fresh views, yet still cost one encoder pass and one copy of the
features per view, so we do not pretend to offer it. This is the usual trade: the fast linear-probe protocol (as in
CLIP's logistic-regression probes) without augmentation, the paper's recipe with it. For ``attentive`` the cache
holds every token (``num_images x tokens x width`` floats; about 2.4 MB per image for SigLIP-L/16-384), so it is
meant for small datasets.

Unreadable images are skipped (``hive_hf.data.decode_image``) and counted per split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    PreTrainedModel,
    get_cosine_schedule_with_warmup,
)
from transformers.utils import logging

from ..compat import AutoImageProcessor
from ..configuration_hive import HiveConfig
from ..data import check_source_exists, decode_image, make_shapes_dataset
from ..metrics import load_metric
from ..modeling_hive import load_vision_tower
from .augment import ProbeAugmentation

logger = logging.get_logger(__name__)

__all__ = [
    "LAST_HIDDEN_STATE",
    "PROBES",
    "POOLINGS",
    "PROBE_RECIPES",
    "STOCK_FEATURE_LAYER",
    "ProbeRecipe",
    "SYNTHETIC_DATASET",
    "ProbeSettings",
    "LinearProbeHead",
    "AttentiveProbeHead",
    "load_encoder",
    "default_feature_layer",
    "encoder_image_size",
    "load_probe_datasets",
    "probe_encoder",
    "run_probe",
    "summarize_seeds",
    "format_table",
    "format_details",
]

PROBES: tuple[str, ...] = ("linear", "attentive")
POOLINGS: tuple[str, ...] = ("mean", "pooler")
# `feature_layer` of a stock tower (hidden_states[-2], the authors' choice) and the name of the tower's own output.
STOCK_FEATURE_LAYER = -2
LAST_HIDDEN_STATE = "last_hidden_state"
SYNTHETIC_DATASET = "synthetic"
# The embedded default: the synthetic shapes, probed on `label` (the shape class).
SYNTHETIC_TRAIN_SAMPLES, SYNTHETIC_TEST_SAMPLES = 2000, 500


@dataclass(frozen=True)
class ProbeRecipe:
    """The training schedule of a probe; warmup is given in epochs or as a fraction of all steps, not both."""

    learning_rates: tuple[float, ...]
    epochs: int
    weight_decay: float
    warmup_epochs: float | None = None
    warmup_ratio: float | None = None
    bf16: bool = False


_AUTHORS = dict(weight_decay=0.01, warmup_ratio=0.03, bf16=True)
PROBE_RECIPES: dict[str, ProbeRecipe] = {
    # The paper's Table 4; its blanks (learning rates, weight decay, epochs) are our choices.
    "paper": ProbeRecipe(learning_rates=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), epochs=30, weight_decay=0.05,
                         warmup_epochs=1.5),
    # scripts/train/classification.sh: the seven smaller datasets, and ImageNet-1K.
    "authors": ProbeRecipe(learning_rates=(2e-4,), epochs=5, **_AUTHORS),
    "authors_imagenet": ProbeRecipe(learning_rates=(1e-3,), epochs=1, **_AUTHORS),
}


@dataclass
class ProbeSettings:
    """How a probe trains and evaluates; the paper's recipe by default. Also the probe script's argument group."""

    probe: str = field(
        default="attentive",
        metadata={"help": f"Head on the frozen encoder: one of {PROBES} (attentive is the authors' default)."},
    )
    pooling: str | None = field(
        default=None,
        metadata={"help": f"--probe linear only: one of {POOLINGS} (default mean: the mean of the --feature_layer "
                          "tokens; pooler: the tower's pooler_output, which HIVE never trains)."},
    )
    feature_layer: str | None = field(
        default=None,
        metadata={"help": "The hidden_states index the head reads, raw (no post-norm), patch tokens only (negative "
                          "counts from the end), or last_hidden_state (the tower's output: post-normed for SigLIP, "
                          "CLIP's class token kept). Default: the deepest tapped layer of a HIVE checkpoint, "
                          f"{STOCK_FEATURE_LAYER} for a stock tower."},
    )
    recipe: str = field(
        default="paper",
        metadata={"help": f"Training schedule, one of {tuple(PROBE_RECIPES)}: the paper's Table 4, or the authors' "
                          "released one (authors_imagenet for ImageNet-1K); explicit flags override it."},
    )
    learning_rates: list[float] | None = field(
        default=None,
        metadata={"help": "Peak learning rates to try; with several, the best on a validation split is used "
                          "(default: the recipe's)."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Seeds of the final runs (head init, batch order, augmentation); mean and std reported."},
    )
    epochs: int | None = field(default=None, metadata={"help": "Training epochs of the head (default: the recipe's)."})
    batch_size: int = field(default=512, metadata={"help": "Batch size (the paper's 512)."})
    weight_decay: float | None = field(
        default=None, metadata={"help": "AdamW weight decay of the head's matrices (default: the recipe's)."}
    )
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping norm (the paper's 3.0)."})
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "Linear warmup, in epochs, before cosine decay (default: the recipe's)."}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "Linear warmup as a fraction of all steps, instead of --warmup_epochs (default: the "
                          "recipe's)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Run the encoder and the head under bfloat16 autocast where the device supports it (CUDA "
                          "with bf16); CPU runs stay float32 (default: the recipe's)."},
    )
    augment: bool = field(
        default=True,
        metadata={"help": "Random crop + flip + colour jitter on training images (the paper's recipe)."},
    )
    crop_scale: list[float] = field(
        default_factory=lambda: [0.4, 1.0], metadata={"help": "RandomResizedCrop area range (min max)."}
    )
    crop_ratio: list[float] = field(
        default_factory=lambda: [3 / 4, 4 / 3], metadata={"help": "RandomResizedCrop aspect-ratio range (min max)."}
    )
    color_jitter: list[float] = field(
        default_factory=lambda: [0.2, 0.2, 0.2, 0.0],
        metadata={"help": "ColorJitter brightness, contrast, saturation, hue."},
    )
    flip_probability: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of the training split held out to pick the learning rate (when there is no "
                          "validation split and several --learning_rates)."},
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the validation hold-out."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input resolution (default: the encoder's); other sizes interpolate position embeddings."},
    )
    attentive_num_heads: int | None = field(
        default=None, metadata={"help": "--probe attentive: attention heads (default: the tower's, as the authors)."}
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Compute features once per encoder and split and keep them here (needs --augment False)."},
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes decoding images."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ValueError(f"--probe must be one of {PROBES}, got {self.probe!r}.")
        if self.pooling is not None and self.probe != "linear":
            raise ValueError(f"--pooling applies to --probe linear; --probe {self.probe} pools with its own query.")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        if self.layer is not None and self.feature == "pooler":  # `layer` also validates --feature_layer
            raise ValueError(f"--pooling pooler reads the tower's pooler_output (computed from its last block); drop "
                             f"--feature_layer {self.feature_layer} or use --pooling mean.")
        if self.recipe not in PROBE_RECIPES:
            raise ValueError(f"--recipe must be one of {tuple(PROBE_RECIPES)}, got {self.recipe!r}.")
        if self.warmup_epochs is not None and self.warmup_ratio is not None:
            raise ValueError(f"Give the warmup once: --warmup_epochs {self.warmup_epochs} or --warmup_ratio "
                             f"{self.warmup_ratio}, not both.")
        recipe = PROBE_RECIPES[self.recipe]
        if self.warmup_epochs is None and self.warmup_ratio is None:
            self.warmup_epochs, self.warmup_ratio = recipe.warmup_epochs, recipe.warmup_ratio
        for name in ("learning_rates", "epochs", "weight_decay", "bf16"):
            if getattr(self, name) is None:
                value = getattr(recipe, name)
                setattr(self, name, list(value) if isinstance(value, tuple) else value)
        if self.attentive_num_heads is not None and (self.probe != "attentive" or self.attentive_num_heads < 1):
            raise ValueError(
                f"--attentive_num_heads takes a positive number with --probe attentive; got "
                f"{self.attentive_num_heads} with --probe {self.probe}."
            )
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"--learning_rates takes one or more positive values, got {self.learning_rates}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds takes distinct non-negative integers, got {self.seeds}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"--epochs and --batch_size must be positive, got {self.epochs} and {self.batch_size}.")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"--warmup_epochs must lie in [0, --epochs), got {self.warmup_epochs} with --epochs {self.epochs}: "
                "warmup would leave no cosine decay."
            )
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must lie in [0, 1), got {self.warmup_ratio}.")
        if self.max_grad_norm <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"--max_grad_norm must be positive and --weight_decay non-negative, got {self.max_grad_norm} and "
                f"{self.weight_decay}."
            )
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must lie in (0, 1), got {self.validation_fraction}.")
        if self.feature_cache_dir is not None and self.augment:
            raise ValueError(
                "--feature_cache_dir stores one fixed view of each image, but --augment draws a new random view "
                "every epoch; pass --augment False to cache features (see hive_hf.evaluation.probe)."
            )
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image_size must be a positive number of pixels, got {self.image_size}.")
        if self.num_workers < 0:
            raise ValueError(f"--num_workers must be >= 0, got {self.num_workers}.")
        if len(self.crop_scale) != 2 or len(self.crop_ratio) != 2:
            raise ValueError(
                f"--crop_scale and --crop_ratio take two values (min max), got {self.crop_scale} and "
                f"{self.crop_ratio}."
            )
        self.augmentation(16)  # validates --crop_scale, --crop_ratio, --color_jitter, --flip_probability

    @property
    def feature(self) -> str:
        """What the head consumes: `tokens` (attentive), `mean` or `pooler` (linear)."""
        return "tokens" if self.probe == "attentive" else (self.pooling or "mean")

    @property
    def layer(self) -> int | str | None:
        """`--feature_layer` as a `hidden_states` index, `LAST_HIDDEN_STATE`, or None (each encoder's default)."""
        if self.feature_layer is None or str(self.feature_layer) == LAST_HIDDEN_STATE:
            return self.feature_layer
        try:
            return int(self.feature_layer)
        except ValueError:
            raise ValueError(f"--feature_layer takes a hidden_states index (e.g. -2 or 23) or {LAST_HIDDEN_STATE!r}, "
                             f"got {self.feature_layer!r}.") from None

    def warmup_steps(self, steps_per_epoch: int) -> int:
        total = self.epochs * steps_per_epoch
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * total)
        return round(self.warmup_epochs * steps_per_epoch)

    def augmentation(self, size: int) -> ProbeAugmentation:
        try:
            return ProbeAugmentation(
                size=size, crop_scale=tuple(self.crop_scale), crop_ratio=tuple(self.crop_ratio),
                flip_probability=self.flip_probability, color_jitter=tuple(self.color_jitter),
            )
        except ValueError as error:  # name the flags, not the dataclass fields
            flags = "--crop_scale, --crop_ratio, --flip_probability, --color_jitter"
            raise ValueError(f"Bad augmentation flags ({flags}): {error}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------------
def _vision_config(config: Any) -> Any:
    # HIVE checkpoints keep the tower's config under `vision_config`, and so do two-tower SigLIP / CLIP checkpoints.
    return getattr(config, "vision_config", config)


def encoder_image_size(name_or_path: str, **kwargs: Any) -> int:
    """The input resolution an encoder checkpoint (HIVE, two-tower or vision-only) was built for."""
    return int(_vision_config(AutoConfig.from_pretrained(name_or_path, **kwargs)).image_size)


def default_feature_layer(name_or_path: str, **kwargs: Any) -> int:
    """The `hidden_states` index a probe reads by default: the deepest layer a HIVE checkpoint (full or encoder-only)
    tapped in pre-training, else `STOCK_FEATURE_LAYER` (-2, the authors' choice for a stock tower)."""
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if config.model_type == HiveConfig.model_type:  # by type: with remote code the class is the checkpoint's copy
        return max(config.vision_feature_layers)
    return STOCK_FEATURE_LAYER


def load_encoder(
    name_or_path: str,
    image_processor_name_or_path: str | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Load an encoder for probing as a stock transformers vision model and its image processor.

    Accepts a full HIVE checkpoint (`HiveForConditionalGeneration`, its processor in `processor_config.json`), an
    encoder-only HIVE release (`HiveVisionEncoderModel`), a two-tower SigLIP / CLIP checkpoint or a vision-only one;
    a local folder or a Hub id. HIVE encoders come back through `to_base_model()` (e.g. a `SiglipVisionModel`), so
    every encoder is probed through the same stock forward.

    Args:
        name_or_path: the checkpoint.
        image_processor_name_or_path: where to read the image processor instead (default: `name_or_path`).
        dtype: the model's dtype (default: as saved); features are cast to float32 for the head.
        kwargs: Hub options forwarded to every `from_pretrained` (`revision`, `trust_remote_code`, `token`, ...).

    Returns:
        `(vision_model, image_processor)`, the model in eval mode with `requires_grad=False` everywhere.
    """
    model = load_vision_tower(name_or_path, **kwargs, **({"dtype": dtype} if dtype is not None else {}))
    # AutoImageProcessor reads `preprocessor_config.json` and also the image processor inside a full checkpoint's
    # `processor_config.json` (HiveProcessor, SiglipProcessor, ...), without loading a tokenizer; an encoder-only HIVE
    # release carries just the image processor, where AutoProcessor would look for the HiveProcessor's tokenizer.
    image_processor = AutoImageProcessor.from_pretrained(image_processor_name_or_path or name_or_path, **kwargs)
    model.eval().requires_grad_(False)
    return model, image_processor


def _bf16_autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when asked and the device runs it natively (CUDA with bf16); otherwise float32."""
    enabled = bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _hidden_state_index(layer: int, num_layers: int) -> int:
    """`layer` (negative counts from the end, as in `hidden_states`) as an index in [0, num_layers]."""
    index = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= index <= num_layers:
        raise ValueError(
            f"--feature_layer {layer} is not a hidden_states index of a {num_layers}-block tower: use "
            f"{-num_layers - 1}..{num_layers} (0 = patch embeddings, i = output of block i)."
        )
    return index


class _FrozenEncoder:
    """The frozen tower's forward, returning the features a head consumes (`tokens`, `mean` or `pooler`).

    `layer` is a `hidden_states` index or `LAST_HIDDEN_STATE`. A block's output is read with a hook, raw (no
    post-norm) and without the class token of towers that have one, so no other hidden state is kept in memory.
    """

    def __init__(self, model: PreTrainedModel, feature: str, layer: int | str, image_size: int, device: torch.device,
                 bf16: bool = False):
        self.model = model.to(device).eval().requires_grad_(False)
        self.feature = feature
        self.num_layers = model.config.num_hidden_layers
        self.layer = layer if layer == LAST_HIDDEN_STATE else _hidden_state_index(int(layer), self.num_layers)
        self.device = device
        self.bf16 = bf16
        # Other resolutions than the tower's own need its position embeddings interpolated.
        self.interpolate = image_size != model.config.image_size

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def description(self) -> str:
        """The features in words, for the results."""
        if self.feature == "pooler":
            return "pooler_output"
        return self.layer if self.layer == LAST_HIDDEN_STATE else f"hidden_states[{self.layer}]"

    def _block_output(self, pixel_values: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """`hidden_states[self.layer]`, the input of block `layer + 1` (or the last block's output), from a hook."""
        blocks = getattr(getattr(self.model, "encoder", None), "layers", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) != self.num_layers:  # not the usual layout
            out = self.model(pixel_values=pixel_values, output_hidden_states=True, **extra)
            return out.hidden_states[self.layer]
        captured = []

        def block_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])

        def block_output(module: nn.Module, args: tuple, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        if self.layer < self.num_layers:
            handle = blocks[self.layer].register_forward_pre_hook(block_input, with_kwargs=True)
        else:
            handle = blocks[-1].register_forward_hook(block_output)
        try:
            self.model(pixel_values=pixel_values, **extra)
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
        pixel_values = pixel_values.to(self.device, self.model.dtype)
        with _bf16_autocast(self.device, self.bf16):
            if self.feature == "pooler":
                features = getattr(self.model(pixel_values=pixel_values, **extra), "pooler_output", None)  # (B, D)
                if features is None:
                    raise ValueError(
                        f"{type(self.model).__name__} returns no pooler_output (e.g. SigLIP with vision_use_head="
                        "False); use --pooling mean or --probe attentive."
                    )
                return features.float()
            if self.layer == LAST_HIDDEN_STATE:
                tokens = self.model(pixel_values=pixel_values, **extra).last_hidden_state  # (B, N, D)
            else:
                tokens = self._drop_class_token(self._block_output(pixel_values, extra), pixel_values)
        return (tokens if self.feature == "tokens" else tokens.mean(dim=1)).float()  # (B, N, D) or (B, D)

    def _drop_class_token(self, tokens: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch tokens only: a tower that adds one token (CLIP's class token, first) loses it."""
        patch = self.model.config.patch_size
        extra = tokens.shape[1] - (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        if extra not in (0, 1):
            raise ValueError(f"{type(self.model).__name__} outputs {extra} tokens besides its patches; the probe "
                             "knows towers with none (SigLIP) or one class token (CLIP).")
        return tokens[:, extra:]


def _fingerprint_model(model: PreTrainedModel) -> str:
    digest = hashlib.blake2b(model.config.to_json_string().encode(), digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------
def load_probe_datasets(
    dataset: str = SYNTHETIC_DATASET,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    validation_split: str | None = None,
    dataset_config_name: str | None = None,
    test_fraction: float | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """The splits of an image-classification dataset for :func:`run_probe`.

    Args:
        dataset: `"synthetic"` (the embedded shapes: 2000 train / 500 test rows drawn at `image_size`, `label` is the
            shape, one of `hive_hf.data.SHAPES`), a local folder of class subfolders (read as an `imagefolder`;
            `train/` and `test/` subfolders give the splits), or any `datasets.load_dataset` name (e.g. `"cifar10"`
            with `image_column="img"`).
        validation_split: a split to choose the learning rate on (default: none; the probe holds out part of train).
        test_fraction: carve the test split out of `train_split` (seeded by `seed`) when the dataset has none.
        max_train_samples / max_test_samples: keep a seeded random subset of this many rows (imagefolders are
            sorted by class, so a prefix would miss classes); for `"synthetic"`, the number of rows drawn.
        load_kwargs: forwarded to `datasets.load_dataset`.

    Returns:
        A `DatasetDict` with `"train"`, `"test"` and, when asked, `"validation"`.
    """
    if dataset == SYNTHETIC_DATASET:
        if validation_split is not None or test_fraction is not None:
            raise ValueError("The synthetic dataset has fixed train and test splits; drop --validation_split and "
                             "--test_fraction.")
        return datasets.DatasetDict(
            train=make_shapes_dataset(max_train_samples or SYNTHETIC_TRAIN_SAMPLES, image_size, seed, "train"),
            test=make_shapes_dataset(max_test_samples or SYNTHETIC_TEST_SAMPLES, image_size, seed, "test"),
        )
    # A local folder of images is read as an `imagefolder` (labels from the class subfolder names) by datasets.
    check_source_exists(dataset)
    splits = datasets.load_dataset(dataset, dataset_config_name, **load_kwargs)
    for flag, split in (("--train_split", train_split), ("--validation_split", validation_split)):
        if split is not None and split not in splits:
            raise ValueError(f"{flag} {split!r} is not in {dataset!r}; it has splits {list(splits)}.")
    train = splits[train_split]
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"--test_fraction must lie in (0, 1), got {test_fraction}.")
        carved = train.train_test_split(test_size=test_fraction, seed=seed)
        train, test = carved["train"], carved["test"]
    elif test_split in splits:
        test = splits[test_split]
    else:
        raise ValueError(
            f"--test_split {test_split!r} is not in {dataset!r} (splits: {list(splits)}); name another split or "
            "carve one from the training split with --test_fraction."
        )
    result = datasets.DatasetDict(
        train=_subset(train, max_train_samples, seed), test=_subset(test, max_test_samples, seed)
    )
    if validation_split is not None:
        result["validation"] = splits[validation_split]
    for split, rows in result.items():
        missing = [c for c in (image_column, label_column) if c not in rows.column_names]
        if missing:
            raise ValueError(
                f"The {split} split of {dataset!r} has no column {missing}; its columns are {rows.column_names} "
                "(set --image_column / --label_column)."
            )
    return result


def _subset(rows: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    if max_samples is None or max_samples >= len(rows):
        return rows
    return rows.shuffle(seed=seed).select(range(max_samples))


def _encode_labels(
    train: datasets.Dataset, test: datasets.Dataset, others: list[datasets.Dataset], label_column: str
) -> tuple[datasets.Dataset, datasets.Dataset, list[datasets.Dataset], list[str]]:
    """Make `label_column` a ClassLabel shared by every split; returns the splits and the class names."""
    feature = train.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        if feature.dtype == "string":  # e.g. the synthetic set's `color`: names sorted, shared by all splits
            train = train.class_encode_column(label_column)
        else:
            values = sorted({int(v) for split in (train, test, *others) for v in split[label_column]})
            if values and values[0] < 0:
                raise ValueError(f"Column {label_column!r} holds negative labels ({values[0]}): unlabeled rows?")
            names = [str(i) for i in range(values[-1] + 1)] if values else []
            train = train.cast_column(label_column, datasets.ClassLabel(names=names))
        feature = train.features[label_column]
    cast = [
        split.cast_column(label_column, feature) if split.features[label_column] != feature else split
        for split in (test, *others)
    ]
    for split in (train, *cast):
        labels = split[label_column]
        if labels and min(labels) < 0:
            raise ValueError(
                f"Column {label_column!r} holds label -1 in a {split.split or 'given'} split: its rows are unlabeled "
                "(some datasets hide test labels); use another --test_split or --test_fraction."
            )
    return train, cast[0], cast[1:], list(feature.names)


def _readable(rows: datasets.Dataset, image_column: str) -> datasets.Dataset:
    # Decoding happens in `decode_image`, so that a bad file is skipped and counted rather than raising in datasets.
    if isinstance(rows.features[image_column], datasets.Image) and rows.features[image_column].decode:
        rows = rows.cast_column(image_column, datasets.Image(decode=False))
    return rows


def _processor_size(image_processor: Any) -> int | None:
    """The side of the square the image processor outputs by default, if it says (crop size first)."""
    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if size is None or (attr == "crop_size" and not getattr(image_processor, "do_center_crop", False)):
            continue
        get = size.get if isinstance(size, dict) else lambda k, s=size: getattr(s, k, None)
        side = get("height") or get("shortest_edge")
        if side:
            return int(side)
    return None


class _ImageBatches(torch.utils.data.Dataset):
    """One batch of rows per item, keyed by `(epoch, rows)`: decode, optionally augment, run the image processor.

    Each augmented image draws from its own generator seeded by `(seed, epoch, row)`, so views do not depend on
    batch order or DataLoader workers.
    """

    def __init__(
        self,
        rows: datasets.Dataset,
        image_column: str,
        label_column: str,
        image_processor: Any,
        augmentation: ProbeAugmentation | None,
        resize_to: int | None,
        seed: int = 0,
    ):
        self.rows = _readable(rows.select_columns([image_column, label_column]), image_column)
        self.image_column, self.label_column = image_column, label_column
        self.image_processor = image_processor
        self.augmentation = augmentation
        self.resize_to = resize_to
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, list[int]]) -> dict[str, Any]:
        epoch, rows = key
        batch = self.rows[rows]
        images, labels, kept, skipped = [], [], [], []
        for row, value, label in zip(rows, batch[self.image_column], batch[self.label_column]):
            image = decode_image(value)
            if image is None:
                skipped.append(row)
                continue
            if self.augmentation is not None:
                image = self.augmentation(image, np.random.default_rng([self.seed, epoch, row]))
            elif self.resize_to is not None:
                image = image.resize((self.resize_to, self.resize_to), Image.Resampling.BICUBIC)
            images.append(image)
            labels.append(label)
            kept.append(row)
        pixel_values = None
        if images:
            # Images we already brought to the input size only need the processor's rescale and normalisation.
            own_size = self.augmentation is not None or self.resize_to is not None
            kwargs = {"do_resize": False, "do_center_crop": False} if own_size else {}
            pixel_values = self.image_processor(images=images, return_tensors="pt", **kwargs)["pixel_values"]
        return {
            "pixel_values": pixel_values,  # (B, 3, H, W)
            "labels": torch.tensor(labels, dtype=torch.long),
            "rows": torch.tensor(kept, dtype=torch.long),
            "skipped": skipped,
        }


def _keep(batch: Any) -> Any:  # module level, so DataLoader workers can pickle it
    return batch


def _chunks(rows: Sequence[int], size: int) -> list[list[int]]:
    rows = list(rows)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# ---------------------------------------------------------------------------------------------------------------------
# Feature sources: the encoder run on every batch, or features computed once
# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------------------
class LinearProbeHead(nn.Module):
    """A linear classifier on pooled features `(B, D)`."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)  # (B, C)


def _lecun_normal_(weight: torch.Tensor) -> None:
    """timm's `lecun_normal_` (the authors' init of the attention's output projection): a normal truncated at two
    standard deviations, scaled so that its variance is 1 / fan_in."""
    std = math.sqrt(1.0 / weight.shape[1]) / 0.87962566103423978  # the std of a unit normal truncated at +-2
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class AttentiveProbeHead(nn.Module):
    """The authors' attentive probe (`ImageClassificationAttentiveProbe`): LayerNorm over the encoder's tokens
    `(B, N, D)`, one learned query attending over them (`nn.MultiheadAttention`), a linear classifier on the result.

    The LayerNorm is new and trainable: the probed features are a block's raw output, whose scale the query should not
    have to learn. Initialisation as the authors': query and packed q/k/v weights xavier-uniform, their biases zero,
    output projection lecun-normal, classifier normal with std `D ** -0.5` (transformers' SigLIP classifier init).
    """

    def __init__(self, hidden_size: int, num_classes: int, num_heads: int | None = None):
        super().__init__()
        num_heads = num_heads or max(1, hidden_size // 64)
        if hidden_size % num_heads:
            raise ValueError(f"The attentive probe's {num_heads} heads must divide the encoder width {hidden_size}.")
        self.norm = nn.LayerNorm(hidden_size)
        self.query = nn.Parameter(torch.empty(1, 1, hidden_size))
        nn.init.xavier_uniform_(self.query)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)  # xavier q/k/v, zero biases
        _lecun_normal_(self.attention.out_proj.weight)
        self.classifier = nn.Linear(hidden_size, num_classes)
        nn.init.normal_(self.classifier.weight, std=hidden_size**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)  # (B, N, D)
        query = self.query.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        pooled, _ = self.attention(query, tokens, tokens, need_weights=False)  # (B, 1, D)
        return self.classifier(pooled[:, 0])  # (B, C)


def _parameter_groups(head: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Biases, norms and the query token take no weight decay (timm's `no_weight_decay`, nanoGPT).
    decay = [p for n, p in head.named_parameters() if p.ndim == 2 and n != "query"]
    rest = [p for n, p in head.named_parameters() if not (p.ndim == 2 and n != "query")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _train_head(
    make_head: Callable[[], nn.Module],
    source: _OnlineFeatures | _CachedFeatures,
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
    head: nn.Module, source: _OnlineFeatures | _CachedFeatures, rows: list[int], settings: ProbeSettings, metric: Any
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


# ---------------------------------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------------------------------
def _validation_rows(num_rows: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(num_rows)
    held_out = max(1, round(fraction * num_rows))
    if held_out >= num_rows:
        raise ValueError(f"--validation_fraction {fraction} of {num_rows} training rows leaves nothing to train on.")
    return sorted(order[held_out:].tolist()), sorted(order[:held_out].tolist())


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
    if settings is not None and kwargs:
        raise ValueError(f"Pass either `settings` or its fields as keyword arguments, not both: {sorted(kwargs)}.")
    settings = settings or ProbeSettings(**kwargs)
    start = time.perf_counter()
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    others = [validation] if validation is not None else []
    train, test, others, class_names = _encode_labels(train, test, others, label_column)
    validation = others[0] if others else None

    input_size = settings.image_size or _processor_size(image_processor) or model.config.image_size
    for layer in (feature_layer, settings.layer, STOCK_FEATURE_LAYER):
        if layer is not None:
            break
    encoder = _FrozenEncoder(model, settings.feature, layer, input_size, device, settings.bf16)
    resize_to = settings.image_size  # None: the processor resizes test images its own way
    split_data = {"train": train, "test": test} | ({"validation": validation} if validation is not None else {})

    def images(split: str, augment: bool) -> _ImageBatches:
        augmentation = settings.augmentation(input_size) if augment else None
        return _ImageBatches(split_data[split], image_column, label_column, image_processor, augmentation, resize_to)

    sources: dict[str, _OnlineFeatures | _CachedFeatures] = {}
    train_source: _OnlineFeatures | _CachedFeatures
    skipped: dict[str, set[int]] = {split: set() for split in split_data}
    if settings.feature_cache_dir is not None:
        if cache_key is None:
            cache_key = {"encoder": _fingerprint_model(model)}
        for split, rows in split_data.items():
            key = {
                **cache_key, "split": split, "dataset": rows._fingerprint, "num_rows": len(rows),
                "image_column": image_column, "label_column": label_column, "feature": settings.feature,
                "features": encoder.description,
                "image_size": settings.image_size, "image_processor": image_processor.to_json_string(),
            }
            sources[split] = _cached_features(encoder, images(split, False), settings, key, f"{encoder_name} {split}")
            skipped[split] = sources[split].skipped
        train_source = sources["train"]
    else:
        for split in split_data:
            sources[split] = _OnlineFeatures(encoder, images(split, False), skipped[split], settings.num_workers)
        train_source = (
            _OnlineFeatures(encoder, images("train", True), skipped["train"], settings.num_workers)
            if settings.augment else sources["train"]
        )

    num_classes = len(class_names)
    hidden_size = encoder.width
    if settings.probe == "attentive":
        num_heads = settings.attentive_num_heads or model.config.num_attention_heads
        make_head = partial(AttentiveProbeHead, hidden_size, num_classes, num_heads)
    else:
        make_head = partial(LinearProbeHead, hidden_size, num_classes)

    metric = load_metric("accuracy")
    all_rows = list(range(len(train)))
    validation_accuracy: dict[float, float] = {}
    learning_rate = settings.learning_rates[0]
    if len(settings.learning_rates) > 1:
        if validation is not None:
            fit_rows, held_rows, held_source = all_rows, list(range(len(validation))), sources["validation"]
        else:
            fit_rows, held_rows = _validation_rows(len(train), settings.validation_fraction, settings.split_seed)
            held_source = sources["train"]  # un-augmented views of the held-out training rows
        for lr in settings.learning_rates:
            desc = f"{encoder_name}: lr {lr:g} (selection)"
            head = _train_head(make_head, train_source, fit_rows, settings, lr, settings.seeds[0], device, desc)
            validation_accuracy[lr] = _accuracy(head, held_source, held_rows, settings, metric)
            logger.info(f"{desc}: validation accuracy {validation_accuracy[lr]:.2f}%")
        learning_rate = max(validation_accuracy, key=validation_accuracy.get)  # ties: the first listed

    per_seed: dict[int, float] = {}
    for seed in settings.seeds:
        desc = f"{encoder_name}: lr {learning_rate:g} seed {seed}"
        head = _train_head(make_head, train_source, all_rows, settings, learning_rate, seed, device, desc)
        per_seed[seed] = _accuracy(head, sources["test"], list(range(len(test))), settings, metric)
        logger.info(f"{desc}: test accuracy {per_seed[seed]:.2f}%")
    mean, std = summarize_seeds(list(per_seed.values()))

    counts = {split: len(rows) for split, rows in skipped.items()}
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
        "num_classes": num_classes,
        "class_names": class_names,
        "num_train": len(train),
        "num_test": len(test),
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
    if settings is not None and kwargs:
        raise ValueError(f"Pass either `settings` or its fields as keyword arguments, not both: {sorted(kwargs)}.")
    settings = settings or ProbeSettings(**kwargs)
    names = list(encoder_names) if encoder_names is not None else _default_names(encoders)
    if len(names) != len(encoders) or len(set(names)) != len(names):
        raise ValueError(
            f"--encoder_names must give one distinct name per encoder: {len(encoders)} encoders, names {names}."
        )
    results: dict[str, Any] = {"dataset": dataset_name, "settings": asdict(settings), "encoders": {}}
    for name, name_or_path in zip(names, encoders):
        model, image_processor = load_encoder(name_or_path, **(load_kwargs or {}))
        layer = settings.layer if settings.layer is not None else default_feature_layer(name_or_path,
                                                                                        **(load_kwargs or {}))
        logger.info(f"probing {name} ({name_or_path}, {type(model).__name__}) on {dataset_name}")
        outcome = probe_encoder(
            model, image_processor, train, test, settings, validation=validation, image_column=image_column,
            label_column=label_column, encoder_name=name, feature_layer=layer,
        )
        for key in ("num_classes", "class_names", "num_train", "num_test"):
            results[key] = outcome.pop(key)
        results["encoders"][name] = {"name_or_path": name_or_path, **outcome}
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------------
def format_table(results: dict[str, Any] | Sequence[dict[str, Any]], precision: int = 2) -> str:
    """A markdown table like the paper's Table 1: one row per encoder, one column per dataset, `mean ± std` top-1
    accuracy in %, the best mean of each column in bold. Takes one :func:`run_probe` result or a list of them."""
    runs = [results] if isinstance(results, dict) else list(results)
    if not runs:
        raise ValueError("format_table needs at least one run_probe result.")
    encoders = list(dict.fromkeys(name for run in runs for name in run["encoders"]))
    lines = ["| Encoder | " + " | ".join(run["dataset"] for run in runs) + " |"]
    lines.append("|---|" + "---:|" * len(runs))
    best = [max(entry["mean"] for entry in run["encoders"].values()) for run in runs]
    for name in encoders:
        cells = []
        for run, top in zip(runs, best):
            entry = run["encoders"].get(name)
            if entry is None:
                cells.append("-")
                continue
            cell = f"{entry['mean']:.{precision}f} ± {entry['std']:.{precision}f}"
            cells.append(f"**{cell}**" if entry["mean"] == top else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
