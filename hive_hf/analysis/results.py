"""Results files: every table the README shows is written by a command into `results/<name>.md` (the table and a
line saying how it was made) and `results/<name>.json` (the numbers and the environment), and copied into the README
verbatim between `<!-- results: results/<name>.md -->` and `<!-- /results -->` (a test keeps the two equal).

    python -m hive_hf.analysis.results README.md    # copy every quoted results file into its README block
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers


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


def command_line() -> str:
    """The command this process runs, as a user would type it (script path relative to the checkout)."""
    args = list(sys.argv)
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
