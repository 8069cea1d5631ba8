"""`python -m hive_hf.cli.results`: the README's results blocks and the demo's agreement with its results file.

    python -m hive_hf.cli.results fill README.md
        copy every results file the README quotes into its block
    python -m hive_hf.cli.results check-demo outputs/demo/results.json --against results/demo.json --tolerance 0.03
        exit 1 when a stage's first or last logged loss of a demo run is further than the tolerance from the
        committed results (what CI runs, under two CPU capabilities)
    python -m hive_hf.cli.results compare results/stage1_options.json outputs/stage1_options/results.json
        the numbers two results files of one command share, largest difference first (timings left out): how far
        a result moves with the CPU's kernels (`ATEN_CPU_CAPABILITY`), the seed or the release
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..runs.records import compare_results, compare_stage_losses, fill_readme, readme_blocks
from .parsing import CommandParser


def parser() -> CommandParser:
    parser = CommandParser(prog="python -m hive_hf.cli.results", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fill = commands.add_parser("fill", help="Copy every quoted results file into its README block.")
    fill.add_argument("readme", nargs="?", default="README.md", type=Path)
    check = commands.add_parser("check-demo", help="Compare a demo run's stage losses with the committed ones.")
    check.add_argument("run_results", type=Path, help="The run's results JSON (outputs/demo/results.json).")
    check.add_argument("--against", type=Path, default=Path("results/demo.json"), help="The committed results JSON.")
    check.add_argument("--tolerance", type=float, default=0.03, help="Largest allowed difference of a loss.")
    compare = commands.add_parser("compare", help="The largest differences between two results files.")
    compare.add_argument("first", type=Path)
    compare.add_argument("second", type=Path)
    compare.add_argument("--show", type=int, default=5, help="How many of the largest differences to print.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    if args.command == "fill":
        args.readme.write_text(fill_readme(args.readme.read_text(), root=args.readme.parent))
        print(f"{args.readme}: {len(readme_blocks(args.readme.read_text()))} results blocks filled")
        return 0
    if args.command == "compare":
        first, second = (_results_json(parser_, p) for p in (args.first, args.second))
        rows = compare_results(first, second)
        if not rows:
            parser_.error(f"{args.first} and {args.second} share no numbers: are they results of the same command?")
        for path, a, b in rows[:args.show]:
            print(f"{path}: {a:.6g} vs {b:.6g} (difference {abs(a - b):.3g})")
        print(f"largest difference over {len(rows)} numbers: {abs(rows[0][1] - rows[0][2]):.3g} "
              f"({first['environment'].get('cpu_capability')} vs {second['environment'].get('cpu_capability')})")
        return 0
    run, committed = (json.loads(Path(p).read_text()) for p in (args.run_results, args.against))
    rows, worst = compare_stage_losses(run, committed)
    for row in rows:
        print(row)
    verdict = "within" if worst <= args.tolerance else "OUTSIDE"
    print(f"largest difference {worst:.4f}: {verdict} the tolerance {args.tolerance} "
          f"({run['environment'].get('cpu_capability')} vs {committed['environment'].get('cpu_capability')})")
    return 0 if worst <= args.tolerance else 1


def _results_json(parser_: CommandParser, path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        parser_.error(f"cannot read results file {path}: {error}")
    if not isinstance(data, dict) or "results" not in data:
        parser_.error(f"{path} is not a results file (no \"results\" key); results files are written by "
                      "write_results")
    return data


if __name__ == "__main__":
    sys.exit(main())
