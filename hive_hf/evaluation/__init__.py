"""Downstream evaluation of pre-trained vision encoders (HIVE paper, Sec. 4).

- :mod:`.probe`: classification probes of a frozen encoder (linear or attentive head), the paper's Table 1.
"""

from .augment import ProbeAugmentation
from .probe import (
    POOLINGS,
    PROBES,
    SYNTHETIC_DATASET,
    AttentiveProbeHead,
    LinearProbeHead,
    ProbeSettings,
    encoder_image_size,
    format_details,
    format_table,
    load_encoder,
    load_probe_datasets,
    probe_encoder,
    run_probe,
    summarize_seeds,
)

# The VLM evaluation exports (hive_hf.evaluation.vlm, Table 2) get added here by its author.

__all__ = [
    "POOLINGS",
    "PROBES",
    "SYNTHETIC_DATASET",
    "AttentiveProbeHead",
    "LinearProbeHead",
    "ProbeAugmentation",
    "ProbeSettings",
    "encoder_image_size",
    "format_details",
    "format_table",
    "load_encoder",
    "load_probe_datasets",
    "probe_encoder",
    "run_probe",
    "summarize_seeds",
]
