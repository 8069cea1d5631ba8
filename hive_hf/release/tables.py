"""Evaluation results as Markdown tables for the model cards."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ReleaseError

RESULT_FILES = ("results.json", "probe_results.json", "eval_results.json")
_PROVENANCE_KEYS = ("arguments", "args", "argv")  # in results files: how the evaluation ran, with local paths


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


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".")
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = "–" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _is_rows(data: Any) -> bool:
    return bool(data) and (isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())
                           or isinstance(data, list) and all(isinstance(v, dict) for v in data))


def _table(data: Any) -> str:
    if isinstance(data, dict) and _is_rows(data):
        columns = list(dict.fromkeys(k for row in data.values() for k in row))
        header, rows = ["", *columns], [[name, *(row.get(c) for c in columns)] for name, row in data.items()]
    elif _is_rows(data):
        columns = list(dict.fromkeys(k for row in data for k in row))
        header, rows = columns, [[row.get(c) for c in columns] for row in data]
    elif isinstance(data, dict):
        header, rows = ["metric", "value"], [[k, v] for k, v in data.items()]
    else:
        header, rows = ["value"], [[data]]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(data: Any) -> str:
    """Markdown for whatever table a results JSON holds: `{metric: value}`, `{row: {column: value}}` or
    `[{column: value}, ...]`. A report that mixes them (scalars next to tables, as `run_probe.py` writes) gives a
    table of its scalars and one captioned table per nested part; run provenance (`arguments`, `argv`), which holds
    local paths, is left out. Deeper values are shown as JSON."""
    if not isinstance(data, dict) or _is_rows(data):
        return _table(data)
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    parts = [_table(scalars)] if scalars else []
    for key, value in data.items():
        if key not in _PROVENANCE_KEYS and isinstance(value, (dict, list)) and value:
            parts.append(f"**{key}**\n\n{_table(value)}")
    return "\n\n".join(parts)


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
