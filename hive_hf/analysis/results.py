"""Results files: every table the README shows is written by a command into `results/<name>.md` (the table and a
line saying how it was made) and `results/<name>.json` (the numbers and the environment), and copied into the README
verbatim between `<!-- results: results/<name>.md -->` and `<!-- /results -->` (a test keeps the two equal).

    python -m hive_hf.analysis.results README.md    # copy every quoted results file into its README block
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

DEMO_DIR = Path("outputs/demo")
DEMO_COMMAND = "python examples/run_pretrain.py examples/configs/demo.json"


def environment(threads: int | None = None) -> dict[str, Any]:
    """What a number depends on besides the code: library versions, thread count, CPU, date."""
    from .. import __version__

    return {
        "hive_hf": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }


def provenance_line(command: str, env: dict[str, Any], seeds: list[int] | None = None) -> str:
    """One line under each table: the command, versions, seeds and threads it was made with."""
    seed_text = f"seeds {' '.join(map(str, seeds))}, " if seeds else ""
    return (f"_`{command}`: {seed_text}{env['threads']} thread(s), transformers {env['transformers']}, "
            f"torch {env['torch']}, {env['date']}._")


def redact_tokens(args: list[str]) -> list[str]:
    """`args` with the value of every token flag (`--hub_token X`, `--token=X`, ...) replaced by `<redacted>`: a
    recorded command is written to disk and may be pushed."""
    out, hide_next = [], False
    for arg in args:
        flag, has_value, _ = arg.partition("=")
        if hide_next:
            out.append("<redacted>")
            hide_next = False
        elif flag.startswith("-") and "token" in flag.lower():
            out.append(f"{flag}=<redacted>" if has_value else arg)
            hide_next = not has_value
        else:
            out.append(arg)
    return out


def command_line(args: list[str] | None = None) -> str:
    """A Python command as a user would type it (script path relative to the working folder, token values
    redacted): `args` (a script and its arguments), by default this process's."""
    args = redact_tokens(list(sys.argv if args is None else args))
    try:
        args[0] = str(Path(args[0]).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    return "python " + shlex.join(args)


def write_results(path: str | Path, table: str, data: dict[str, Any], *, command: str | None = None,
                  seeds: list[int] | None = None, threads: int | None = None) -> Path:
    """Write `<path>.md` (the table, then its provenance line) and `<path>.json` (`data` + the environment)."""
    path = Path(path).with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    env = environment(threads)
    command = command or command_line()
    markdown = table.rstrip() + "\n\n" + provenance_line(command, env, seeds) + "\n"
    path.with_suffix(".md").write_text(markdown)
    path.with_suffix(".json").write_text(json.dumps(
        {"command": command, "seeds": seeds, "environment": env, "results": data}, indent=2, default=str) + "\n")
    return path.with_suffix(".md")


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
    """The flags of a measurement on the demo pre-training's encoders (`benchmarks/probe_features.py`,
    `benchmarks/vlm_demo.py`); each script gives its own `output_dir` and `results_file` defaults."""

    demo_dir: str = field(default=str(DEMO_DIR), metadata={"help": f"The demo pre-training ({DEMO_COMMAND})."})
    output_dir: str = field(default="outputs/measurement", metadata={"help": "Where the runs go."})
    results_file: str = field(
        default="results/measurement.md",
        metadata={"help": "The table with its provenance (and a .json beside it); the README quotes it."},
    )
    threads: int = field(default=1, metadata={"help": "CPU threads of every run (OMP_NUM_THREADS)."})

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"--threads must be positive, got {self.threads}.")


def demo_encoders(demo_dir: str | Path = DEMO_DIR) -> dict[str, Path]:
    """The two encoders of a finished demo pre-training that the README's downstream tables compare: `{"base": the
    stock tower it started from, "HIVE": its last stage}`. Raises `FileNotFoundError` with the command that makes the
    demo when `demo_dir` holds none."""
    from ..training.staged_run import RunLayout
    from ..training.stages import HIVE_STAGES  # the training package imports analysis; import at call time

    layout = RunLayout(demo_dir)
    encoders = {"base": layout.backbones_dir / "vision", "HIVE": layout.stage_dir(HIVE_STAGES.stages[-1])}
    if not (layout.finished(HIVE_STAGES.stages[-1]) and (encoders["base"] / "config.json").is_file()):
        command = DEMO_COMMAND + ("" if Path(demo_dir) == DEMO_DIR else f" --output_dir {demo_dir}")
        raise FileNotFoundError(f"{demo_dir} holds no finished demo pre-training (its backbones/vision and "
                                f"{encoders['HIVE'].name}); make it first with: {command}")
    return encoders


def readme_blocks(readme: str) -> dict[str, str]:
    """`{results file: the README's copy of it}` for every results block of a README's text."""
    opening, closing = "<!-- results: ", "<!-- /results -->"
    blocks: dict[str, list[str]] = {}
    current = None
    for line in readme.splitlines():
        stripped = line.strip()
        if stripped.startswith(opening) and stripped.endswith("-->"):
            current = stripped[len(opening):-len("-->")].strip()
            blocks[current] = []
        elif stripped == closing:
            current = None
        elif current is not None:
            blocks[current].append(line)
    return {path: "\n".join(lines).strip() + "\n" for path, lines in blocks.items()}


def fill_readme(readme: str, root: str | Path = ".") -> str:
    """`readme` with every results block replaced by the current content of the file it quotes (paths from `root`)."""
    opening, closing = "<!-- results: ", "<!-- /results -->"
    out, skipping = [], False
    for line in readme.splitlines():
        stripped = line.strip()
        if stripped.startswith(opening) and stripped.endswith("-->"):
            path = stripped[len(opening):-len("-->")].strip()
            out += [line, *(Path(root) / path).read_text().strip().splitlines()]
            skipping = True
        elif stripped == closing:
            out.append(line)
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Copy every results file a README quotes into its block.")
    parser.add_argument("readme", nargs="?", default="README.md")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    path.write_text(fill_readme(path.read_text(), root=path.parent))
    print(f"{path}: {len(readme_blocks(path.read_text()))} results blocks filled")


if __name__ == "__main__":
    main()
