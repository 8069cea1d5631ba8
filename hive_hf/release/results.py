"""Evaluation results of a run folder, as the Markdown a model card shows."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..runs.tables import results_table
from .errors import ReleaseError

RESULT_FILES = ("results.json", "probe_results.json", "eval_results.json")


def find_results(run_dir: str | os.PathLike, extra_files: Sequence[str | os.PathLike] = ()) -> list[tuple[str, str]]:
    """`(file name, Markdown)` for the evaluation results in a run folder (`results.json`, `probe_results.json`,
    `eval_results.json`) and for `extra_files`; see `results_markdown`."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in RESULT_FILES if (run_dir / name).is_file()]
    files += [Path(f) for f in extra_files if Path(f).resolve() not in {p.resolve() for p in files}]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ReleaseError(f"--results: no such file: {', '.join(missing)}.")
    return [(path.name, results_markdown(path)) for path in files]


def results_markdown(path: str | os.PathLike) -> str:
    """The Markdown a model card shows for a results JSON: the `.md` report written next to it, if any (headings
    moved under the card's Evaluation section), else `results_table` of the JSON."""
    path = Path(path)
    report = path.with_suffix(".md")
    if report.is_file():
        return re.sub(r"^(#+) ", r"##\1 ", report.read_text().strip(), flags=re.M)  # "# T" -> "### T"
    try:
        return results_table(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ReleaseError(f"{path} is not valid JSON: {err}") from err
