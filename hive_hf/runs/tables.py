"""Markdown tables: the one writer every results table, model card and report uses (`markdown_table`), and
`results_table`, which lays out whatever a results JSON holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# In results files: how the evaluation ran, with local paths; never shown in a table.
PROVENANCE_KEYS = ("arguments", "args", "argv")


def cell(value: Any) -> str:
    """A value as a table cell: floats to 4 significant decimals, containers as JSON, None as a dash."""
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".")
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = "–" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A GitHub markdown table: `header` and one line per row. Strings are written as they are (format numbers
    before, to the precision the table means); other values go through `cell`. `align` has one letter per column,
    `l` (the default for columns it does not reach) or `r` (numbers)."""
    def line(values: Sequence[Any]) -> str:
        texts = [v if isinstance(v, str) else cell(v) for v in values]
        return "|" + "|".join(f" {t} " if t else " " for t in texts) + "|"  # an empty cell is "| |"

    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"A table row has {len(row)} cells for {len(header)} columns: {list(row)}.")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(header), "l"))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


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
    return markdown_table([cell(h) for h in header], [[cell(v) for v in row] for row in rows])


def results_table(data: Any) -> str:
    """Markdown for whatever table a results JSON holds: `{metric: value}`, `{row: {column: value}}` or
    `[{column: value}, ...]`. A report that mixes them (scalars next to tables, as the probe writes) gives a table of
    its scalars and one captioned table per nested part; run provenance (`arguments`, `argv`), which holds local
    paths, is left out. Deeper values are shown as JSON."""
    if not isinstance(data, dict) or _is_rows(data):
        return _table(data)
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    parts = [_table(scalars)] if scalars else []
    for key, value in data.items():
        if key not in PROVENANCE_KEYS and isinstance(value, (dict, list)) and value:
            parts.append(f"**{key}**\n\n{_table(value)}")
    return "\n\n".join(parts)
