"""Classification probes of frozen vision encoders: Table 1 of the HIVE paper.

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models" (arXiv 2604.00086), Sec. 4;
the authors' released probe is `llava_next/train/train_classification.py` with `scripts/train/classification.sh`
(GitHub eugenelet/HIVE @ a5160ce). The encoder stays frozen (eval mode, no gradient, weights never touched); only a
small head trains. One module per job, each importing only the ones listed before it:

- :mod:`.augment`: the training-image augmentation (RandomResizedCrop, flip, ColorJitter) in PIL and numpy.
- :mod:`.settings`: :class:`ProbeSettings` (head, features, schedule; also the probe script's flags) and the named
  recipes :data:`PROBE_RECIPES` (the paper's Table 4, the authors' scripts).
- :mod:`.encoders`: :func:`load_encoder` (any HIVE, two-tower or vision-only checkpoint as a stock vision model) and
  which features a head reads (by default a HIVE checkpoint's deepest tap, ``hidden_states[-2]`` of a stock tower).
- :mod:`.data`: :func:`load_probe_datasets`, one class mapping for every split, batches of processed images;
  unreadable images are skipped and counted.
- :mod:`.features`: the encoder run on every batch (fresh augmented views) or features cached once on disk
  (``feature_cache_dir``, which needs ``augment=False``).
- :mod:`.heads`: the ``attentive`` head (the authors' default) and the ``linear`` one.
- :mod:`.protocol`: the learning rate chosen on held-out data, then one run per seed scored on the test split
  (:func:`probe_encoder`, :func:`run_probe`); mean and sample standard deviation in %.
- :mod:`.report`: the results as markdown (:func:`format_table`, :func:`format_details`).
"""

from .augment import ProbeAugmentation
from .data import SYNTHETIC_DATASET, load_probe_datasets
from .encoders import default_feature_layer, encoder_image_size, load_encoder
from .heads import AttentiveProbeHead, LinearProbeHead
from .protocol import probe_encoder, run_probe, summarize_seeds
from .report import format_details, format_table
from .settings import (
    LAST_HIDDEN_STATE,
    POOLINGS,
    PROBE_RECIPES,
    PROBES,
    STOCK_FEATURE_LAYER,
    ProbeRecipe,
    ProbeSettings,
)

__all__ = [
    "LAST_HIDDEN_STATE",
    "PROBES",
    "POOLINGS",
    "PROBE_RECIPES",
    "STOCK_FEATURE_LAYER",
    "ProbeRecipe",
    "SYNTHETIC_DATASET",
    "ProbeAugmentation",
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
