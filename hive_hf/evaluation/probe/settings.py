"""What a probe trains and how: the head choice, the features it reads, the schedule (:class:`ProbeSettings`).

Recipes (``recipe``), by name (:data:`PROBE_RECIPES`). ``paper`` (the default) is the paper's Table 4: AdamW, batch
512, gradient clipping at 3.0, 1.5 epochs of linear warmup then cosine decay; the table leaves the learning rates,
weight decay and epochs blank, so we pick a learning rate from a grid on held-out data and train 30 epochs. The
authors' scripts give ``authors`` (5 epochs, lr 2e-4, weight decay 0.01, warmup 3% of the steps, bf16) for CIFAR,
Tiny-ImageNet, Caltech-256, Food-101, Cars and Pets, and ``authors_imagenet`` (1 epoch at lr 1e-3, the rest the same)
for ImageNet-1K, as in ``classification.sh`` (``HIVE_florence.sh`` has a disabled ImageNet block at lr 2e-4).
Both train with RandomResizedCrop(0.4-1.0, 3/4-4/3, bicubic) + horizontal flip + ColorJitter(0.2, 0.2, 0.2, 0)
(:mod:`.augment`); test images get the encoder's own image processor and nothing else. A flag given explicitly
overrides its recipe value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...runs.recipes import PROBE_RECIPES, ProbeRecipe
from .augment import ProbeAugmentation

__all__ = [
    "LAST_HIDDEN_STATE",
    "POOLINGS",
    "PROBES",
    "PROBE_RECIPES",
    "STOCK_FEATURE_LAYER",
    "ProbeRecipe",
    "ProbeSettings",
]

PROBES: tuple[str, ...] = ("linear", "attentive")
POOLINGS: tuple[str, ...] = ("mean", "pooler")
# `feature_layer` of a stock tower (hidden_states[-2], the authors' choice) and the name of the tower's own output.
STOCK_FEATURE_LAYER = -2
LAST_HIDDEN_STATE = "last_hidden_state"




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
        self._check_head()
        self._apply_recipe()
        self._check_schedule()
        self._check_data()

    def _check_head(self) -> None:
        """--probe, --pooling and --feature_layer name a head and features that exist and fit together."""
        if self.probe not in PROBES:
            raise ValueError(f"--probe must be one of {PROBES}, got {self.probe!r}.")
        if self.pooling is not None and self.probe != "linear":
            raise ValueError(f"--pooling applies to --probe linear; --probe {self.probe} pools with its own query.")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        if self.layer is not None and self.feature == "pooler":  # `layer` also validates --feature_layer
            raise ValueError(f"--pooling pooler reads the tower's pooler_output (computed from its last block); drop "
                             f"--feature_layer {self.feature_layer} or use --pooling mean.")

    def _apply_recipe(self) -> None:
        """Fill every schedule value not given explicitly from the named recipe."""
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

    def _check_schedule(self) -> None:
        """The head's size and training schedule: positive, distinct, in range."""
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

    def _check_data(self) -> None:
        """The held-out fraction, the feature cache, the input size, the loader and the augmentation."""
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
        """Linear-warmup steps: `warmup_ratio` of all steps, or `warmup_epochs` epochs' worth."""
        total = self.epochs * steps_per_epoch
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * total)
        return round(self.warmup_epochs * steps_per_epoch)

    def augmentation(self, size: int) -> ProbeAugmentation:
        """The training-image augmentation these settings describe, producing `size` x `size` images."""
        try:
            return ProbeAugmentation(
                size=size, crop_scale=tuple(self.crop_scale), crop_ratio=tuple(self.crop_ratio),
                flip_probability=self.flip_probability, color_jitter=tuple(self.color_jitter),
            )
        except ValueError as error:  # name the flags, not the dataclass fields
            flags = "--crop_scale, --crop_ratio, --flip_probability, --color_jitter"
            raise ValueError(f"Bad augmentation flags ({flags}): {error}") from None


def _settings_from(settings: ProbeSettings | None, fields: dict[str, Any]) -> ProbeSettings:
    """`settings`, or a :class:`ProbeSettings` built from its `fields` given as keyword arguments; not both."""
    if settings is not None and fields:
        raise ValueError(f"Pass either `settings` or its fields as keyword arguments, not both: {sorted(fields)}.")
    return settings or ProbeSettings(**fields)
