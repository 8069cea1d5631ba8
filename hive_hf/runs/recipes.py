"""Every recipe table, by name: HIVE pre-training (`STAGE_RECIPES`), the LLaVA fine-tuning of an encoder
(`VLM_STAGE_DEFAULTS`) and the classification probe (`PROBE_RECIPES`). Each holds the paper's numbers and, where the
authors' released scripts (GitHub eugenelet/HIVE @ a5160ce) differ, theirs.

Pre-training. `paper`, the paper's appendix table (peak learning rates from the authors' scripts), is the default:

| | stage 1 | stage 2 | stage 3 |
|---|---|---|---|
| trains | connector | + LLM | + vision encoder |
| global batch | 256 | 256 | 1024 |
| epochs | 1 | 2 | 1 |
| grad clip | 1.0 | 10.0 | 10.0 |
| warmup steps | 70 | 140 | 18 |
| peak lr | 1e-3 | 1e-4 | 5e-6 |

`authors_florence`, the authors' released `scripts/train/HIVE_florence.sh`:

| | stage 1 | stage 2 | stage 3 |
|---|---|---|---|
| global batch | 256 | 1024 | 1024 |
| epochs | 0.2 | 1 | 1 |
| grad clip | 1.0 | 0.6 | 0.8 |
| warmup | 3% of the steps | 3% | 3% |
| peak lr | 1e-3 | 1e-4 | 5e-6 |
| schedule | cosine to 0.1 x peak | cosine to 0.1 x peak | cosine to 0 |
| weight decay | 1e-5 | 1e-5 | 1e-5 |
| Adam beta2 | 0.999 | 0.95 | 0.95 |
| seed | 40 | 41 | 42 |

All use decoupled AdamW with linear warmup. What each stage trains is the model's (`HiveConfig.llm_train_scope`,
`image_kv`); the authors' choices for those are in `examples/configs/authors_florence.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageHyperparameters:
    """One stage of a recipe. `warmup_steps` below 1 is a fraction of the stage's steps (transformers' convention).
    Fields left `None` take the run's own `TrainingArguments` value (`--max_grad_norm`, `--lr_scheduler_type`,
    `--weight_decay`, ...)."""

    batch_size: int
    epochs: float
    learning_rate: float
    max_grad_norm: float | None = None
    warmup_steps: float | None = None
    lr_scheduler_type: str | None = None
    min_lr_rate: float | None = None  # `cosine_with_min_lr`: the floor as a fraction of the peak
    weight_decay: float | None = None
    adam_beta2: float | None = None
    seed: int | None = None

    def training_arguments(self) -> dict[str, Any]:
        """The `TrainingArguments` fields this stage sets beyond batch, epochs, clip, warmup and peak lr."""
        out = {k: getattr(self, k) for k in ("lr_scheduler_type", "weight_decay", "adam_beta2", "seed")
               if getattr(self, k) is not None}
        if self.min_lr_rate is not None:
            out["lr_scheduler_kwargs"] = {"min_lr_rate": self.min_lr_rate}
        return out


# What the authors' pre-training scripts share across stages (HIVE_florence.sh).
_AUTHORS_PRETRAINING = dict(warmup_steps=0.03, weight_decay=1e-5)
STAGE_RECIPES: dict[str, dict[int, StageHyperparameters]] = {
    "paper": {
        1: StageHyperparameters(batch_size=256, epochs=1, max_grad_norm=1.0, warmup_steps=70, learning_rate=1e-3),
        2: StageHyperparameters(batch_size=256, epochs=2, max_grad_norm=10.0, warmup_steps=140, learning_rate=1e-4),
        3: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=10.0, warmup_steps=18, learning_rate=5e-6),
    },
    "authors_florence": {
        1: StageHyperparameters(batch_size=256, epochs=0.2, max_grad_norm=1.0, learning_rate=1e-3, adam_beta2=0.999,
                                lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.1, seed=40,
                                **_AUTHORS_PRETRAINING),
        2: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=0.6, learning_rate=1e-4, adam_beta2=0.95,
                                lr_scheduler_type="cosine_with_min_lr", min_lr_rate=0.1, seed=41,
                                **_AUTHORS_PRETRAINING),
        3: StageHyperparameters(batch_size=1024, epochs=1, max_grad_norm=0.8, learning_rate=5e-6, adam_beta2=0.95,
                                lr_scheduler_type="cosine", seed=42, **_AUTHORS_PRETRAINING),
    },
}

# The VLM fine-tuning: the paper's Table 5 (global batch 256 then 64, gradient clipping 1.0, warmup 66 / 347 of 2180 /
# 11540 steps, i.e. 3%, cosine) with the authors' learning rates, epochs and weight decay (HIVE_florence.sh stages 4-5:
# 1e-3 then 2e-5, one epoch each, no weight decay; the same batches). LLaVA-1.5 used 128 in stage 2; LoRA fine-tuning
# uses 2e-4 there.
VLM_STAGE_DEFAULTS: dict[int, StageHyperparameters] = {
    1: StageHyperparameters(batch_size=256, epochs=1, learning_rate=1e-3),
    2: StageHyperparameters(batch_size=64, epochs=1, learning_rate=2e-5),
}

# The classification probe: the paper's Table 4 (its blanks are our choices) and the authors' classification.sh.
@dataclass(frozen=True)
class ProbeRecipe:
    """The training schedule of a probe; warmup is given in epochs or as a fraction of all steps, not both."""

    learning_rates: tuple[float, ...]
    epochs: int
    weight_decay: float
    warmup_epochs: float | None = None
    warmup_ratio: float | None = None
    bf16: bool = False


_AUTHORS_PROBE = dict(weight_decay=0.01, warmup_ratio=0.03, bf16=True)
PROBE_RECIPES: dict[str, ProbeRecipe] = {
    # The paper's Table 4; its blanks (learning rates, weight decay, epochs) are our choices.
    "paper": ProbeRecipe(learning_rates=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), epochs=30, weight_decay=0.05,
                         warmup_epochs=1.5),
    # scripts/train/classification.sh: the seven smaller datasets, and ImageNet-1K.
    "authors": ProbeRecipe(learning_rates=(2e-4,), epochs=5, **_AUTHORS_PROBE),
    "authors_imagenet": ProbeRecipe(learning_rates=(1e-3,), epochs=1, **_AUTHORS_PROBE),
}
