"""Results files: every table the README shows is written by a command into `results/<name>.md` (the table and a
line saying how it was made) and `results/<name>.json` (the numbers and the environment it ran in: versions of every
installed package, CPU model and torch's CPU capability, threads), and copied into the README verbatim between
`<!-- results: results/<name>.md -->` and `<!-- /results -->` (a test keeps the two equal).

    python -m hive_hf.cli.results fill README.md    # copy every quoted results file into its README block
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from .. import __version__
from .layout import RunLayout
from .stages import HIVE_STAGES

DEMO_DIR = Path("outputs/demo")
DEMO_COMMAND = "python examples/run_pretrain.py examples/configs/demo.json"


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux, else what `platform` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def installed_packages() -> list[str]:
    """Every installed distribution as `name==version`, sorted: the environment a number was made in."""
    return sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                   if d.metadata["Name"]}, key=str.lower)


def environment(threads: int | None = None) -> dict[str, Any]:
    """What a number depends on besides the code: versions (of every installed package too), thread count, the CPU
    and the vector kernels torch picked for it (`torch.backends.cpu.get_cpu_capability()`, which
    `ATEN_CPU_CAPABILITY` can lower), date."""
    packages = installed_packages()
    return {
        "hive_hf": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "packages_sha256": hashlib.sha256("\n".join(packages).encode()).hexdigest()[:16],
        "packages": packages,
    }


def provenance_line(command: str, env: dict[str, Any], seeds: list[int] | None = None) -> str:
    """One line under each table: the command, versions, seeds, threads and CPU it was made with."""
    seed_text = f"seeds {' '.join(map(str, seeds))}, " if seeds else ""
    cpu = f", {env['cpu']} ({env['cpu_capability']})" if env.get("cpu") else ""
    return (f"_`{command}`: {seed_text}{env['threads']} thread(s), transformers {env['transformers']}, "
            f"torch {env['torch']}{cpu}, {env['date']}._")


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


def demo_encoders(demo_dir: str | Path = DEMO_DIR) -> dict[str, Path]:
    """The two encoders of a finished demo pre-training that the README's downstream tables compare: `{"base": the
    stock tower it started from, "HIVE": its last stage}`. Raises `FileNotFoundError` with the command that makes the
    demo when `demo_dir` holds none."""
    layout = RunLayout(demo_dir)
    encoders = {"base": layout.vision_backbone, "HIVE": layout.stage_dir(HIVE_STAGES.last)}
    if not (layout.finished(HIVE_STAGES.last) and (encoders["base"] / "config.json").is_file()):
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


def compare_stage_losses(run: dict[str, Any], committed: dict[str, Any]) -> tuple[list[str], float]:
    """Each stage's first and last logged loss of a pre-training results file (`run`) against another (`committed`):
    one line per stage, and the largest absolute difference."""
    lines, worst = [], 0.0
    for stage, theirs in committed["results"]["stages"].items():
        ours = run["results"]["stages"][stage]
        diffs = [abs(ours[k] - theirs[k]) for k in ("first_loss", "last_loss")]
        worst = max(worst, *diffs)
        lines.append(f"stage {stage}: {ours['first_loss']:.3f} -> {ours['last_loss']:.3f} (committed "
                     f"{theirs['first_loss']:.3f} -> {theirs['last_loss']:.3f}; differences "
                     f"{diffs[0]:.4f}, {diffs[1]:.4f})")
    return lines, worst


# Keys whose numbers measure the machine, not the result: left out when two results files are compared.
TIMING_WORDS = ("time", "runtime", "second", "minute", "per_second", "wall", "flos")


def numeric_leaves(data: Any, path: str = "") -> dict[str, float]:
    """Every number in a results JSON's `results`, by its path (`stages.1.last_loss`), timings left out."""
    if isinstance(data, bool) or data is None:
        return {}
    if isinstance(data, (int, float)):
        return {path: float(data)}
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    leaves: dict[str, float] = {}
    for key, value in items:
        if isinstance(key, str) and any(word in key.lower() for word in TIMING_WORDS):
            continue
        leaves.update(numeric_leaves(value, f"{path}.{key}" if path else str(key)))
    return leaves


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float, float]]:
    """The numbers two results files of the same command share, `(path, a, b)`, largest absolute difference first:
    how far a result moves with the CPU's kernels, the seed or the release it ran under."""
    ours, theirs = numeric_leaves(a["results"]), numeric_leaves(b["results"])
    common = [(path, ours[path], theirs[path]) for path in ours if path in theirs]
    return sorted(common, key=lambda row: -abs(row[1] - row[2]))
