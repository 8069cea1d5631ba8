"""Measurements and pictures of what HIVE does: FLOP accounting, step time and memory, gradient flow into the
encoder (paper Fig. 2) and text-to-image attention maps (paper Fig. 3).

`python -m hive_hf.cli.gradient_flow` and `python -m hive_hf.cli.attention_maps` are the commands;
`benchmarks/bench_efficiency.py` puts the FLOP, time and memory helpers together.
"""

from .attention_maps import (
    AttentionMaps,
    attention_map_grid,
    attention_summary,
    find_token_positions,
    plot_attention_maps,
    text_to_image_attention,
)
from .flops import (
    PRESETS,
    EfficiencyShapes,
    StepFlops,
    analytic_forward_flops,
    build_model,
    count_floor_step,
    count_training_step,
    flop_counter,
    make_batch,
)
from .gradient_flow import (
    GradientFlow,
    GradientFlowSummary,
    encoder_gradient_flow,
    gradient_flow_over_batches,
    gradient_flow_table,
    plot_gradient_maps,
    summarize_flows,
    summary_table,
)
from .profiling import TensorMemoryTracker, generation_ms_per_token, interleaved_step_times, peak_memory_bytes

__all__ = [
    "PRESETS",
    "AttentionMaps",
    "EfficiencyShapes",
    "GradientFlow",
    "GradientFlowSummary",
    "StepFlops",
    "TensorMemoryTracker",
    "analytic_forward_flops",
    "attention_map_grid",
    "attention_summary",
    "build_model",
    "count_floor_step",
    "count_training_step",
    "encoder_gradient_flow",
    "find_token_positions",
    "flop_counter",
    "generation_ms_per_token",
    "gradient_flow_over_batches",
    "gradient_flow_table",
    "interleaved_step_times",
    "make_batch",
    "peak_memory_bytes",
    "plot_attention_maps",
    "plot_gradient_maps",
    "summarize_flows",
    "summary_table",
    "text_to_image_attention",
]
