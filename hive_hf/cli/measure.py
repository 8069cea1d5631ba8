"""What the measurement scripts on the demo's encoders share (`benchmarks/probe_features.py`,
`benchmarks/vlm_demo.py`): their common flags and how each step runs, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ..runs.records import DEMO_COMMAND, DEMO_DIR, command_line


def run_step(args: list[str], threads: int) -> float:
    """Run one step of a measurement, a Python script and its arguments (`args`), in its own process with `threads`
    CPU threads (`OMP_NUM_THREADS`), echoing it as `command_line` writes it; a failed step raises. Returns its
    wall-clock seconds."""
    print("+", command_line(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - started


@dataclass
class DemoMeasurementArguments:
    """The flags of a measurement on the demo pre-training's encoders; each script gives its own `output_dir` and
    `results_file` defaults."""

    demo_dir: str = field(default=str(DEMO_DIR), metadata={"help": f"The demo pre-training ({DEMO_COMMAND})."})
    output_dir: str = field(default="outputs/measurement", metadata={"help": "Where the runs go."})
    results_file: str = field(
        default="outputs/measurement/results.md",
        metadata={"help": "The table with its provenance (and a .json beside it); results/<name>.md regenerates the "
                          "file the README quotes."},
    )
    threads: int = field(default=1, metadata={"help": "CPU threads of every run (OMP_NUM_THREADS)."})

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"--threads must be positive, got {self.threads}.")
