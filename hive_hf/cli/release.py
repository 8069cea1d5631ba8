"""`hive-release` / `python -m hive_hf.cli.release`: publish a pre-training run folder from the command line."""

from __future__ import annotations

import argparse
import logging as pylogging
import sys
from collections.abc import Sequence
from pathlib import Path

import transformers
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from tqdm.contrib.logging import logging_redirect_tqdm

from ..release.cards import REPO_LABELS
from ..release.errors import ReleaseError
from ..release.hub import ReleaseCommit, release_run
from .parsing import CommandParser, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="hive-release",
        description="Publish a HIVE pre-training run (the --output_dir of examples/run_pretrain.py) to the Hugging "
                    "Face Hub: the full model, the encoder (remote code) and optionally the encoder in stock "
                    "transformers format, each with a model card and one commit per finished stage, tagged "
                    "stage1, stage2, stage3.",
        epilog="The token comes from --token, HF_TOKEN or `hf auth login`, as everywhere in huggingface_hub; it is "
               "never printed or written into a card.",
    )
    parser.add_argument("run_dir", type=Path, help="The run folder: init/, stage1/, stage2/, stage3/, ...")
    parser.add_argument("repo_id", help="Repository of the full model, e.g. `me/hive-siglip` (without a namespace: "
                                        "the token's user).")
    parser.add_argument("--encoder_repo", "--encoder-repo", dest="encoder_repo",
                        help="Repository of the encoder alone (default: <repo_id>-encoder).")
    parser.add_argument("--stock_encoder_repo", "--stock-encoder-repo", dest="stock_encoder_repo",
                        help="Also publish the encoder in stock transformers format (to_base_model()) here.")
    parser.add_argument("--private", action="store_true", default=None,
                        help="Create the repositories private (no effect on existing ones).")
    parser.add_argument("--revision", help="Branch to commit to (created if missing; default: main).")
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message",
                        help="Commit message; each stage's commit appends ' (stage<k>)'.")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the stored login).")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="Write the exact folders that would be committed, print them, push nothing.")
    parser.add_argument("--dry_run_dir", "--dry-run-dir", dest="dry_run_dir", type=Path,
                        help="Where --dry-run writes <repo_id>/stage<k>/ folders (default: <run_dir>/release).")
    parser.add_argument("--license", default="other",
                        help="License id of the weights for the cards (default: other; the backbones' terms apply).")
    parser.add_argument("--dataset", dest="datasets", action="append", default=[], metavar="ID",
                        help="A dataset the run trained on (Hub id or name); repeat for several.")
    parser.add_argument("--vision_base_model", help="Hub id of the vision backbone (default: from the config).")
    parser.add_argument("--text_base_model", help="Hub id of the LLM backbone (default: from the config).")
    parser.add_argument("--results", dest="results_files", action="append", default=[], type=Path, metavar="FILE",
                        help="A JSON file of evaluation results to render in the cards (results.json, "
                             "probe_results.json and eval_results.json in run_dir are found by themselves).")
    parser.add_argument("--template_dir", type=Path, help="A folder of replacement card templates.")
    return parser


def _size(num_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return ""


def _print_plan(commits: Sequence[ReleaseCommit], dry_run: bool, private: bool | None, revision: str | None) -> None:
    if dry_run:
        print("Dry run: nothing was pushed. These folders are exactly what each commit would upload:")
    else:
        print("Released:")
    for repo_id in dict.fromkeys(c.repo_id for c in commits):
        kind = next(c.kind for c in commits if c.repo_id == repo_id)
        visibility = {None: "hub default", True: "private", False: "public"}[private]
        print(f"\n{repo_id}  [{REPO_LABELS[kind]}; {visibility}; branch {revision or 'main'}]")
        for commit in (c for c in commits if c.repo_id == repo_id):
            target = f"commit {commit.commit}" if commit.commit else str(commit.folder)
            print(f"  tag {commit.tag}: {target}")
            if dry_run:
                for path in sorted(p for p in commit.folder.rglob("*") if p.is_file()):
                    print(f"    {str(path.relative_to(commit.folder)):<32} {_size(path.stat().st_size):>10}")


def main(argv: Sequence[str] | None = None) -> int:
    """`hive-release` / `python -m hive_hf.cli.release`. Returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging()
    transformers.utils.logging.disable_progress_bar()  # one progress bar: the release's
    try:
        with logging_redirect_tqdm(loggers=[pylogging.getLogger()]):  # log lines above the progress bar
            commits = release_run(
                args.run_dir, args.repo_id, encoder_repo_id=args.encoder_repo,
                stock_encoder_repo_id=args.stock_encoder_repo, private=args.private, revision=args.revision,
                commit_message=args.commit_message, token=args.token, dry_run=args.dry_run,
                dry_run_dir=args.dry_run_dir, license=args.license, datasets=args.datasets,
                vision_base_model=args.vision_base_model, text_base_model=args.text_base_model,
                results_files=args.results_files, template_dir=args.template_dir,
            )
    except (HfHubHTTPError, LocalTokenNotFoundError) as err:  # the Hub client's own message says what to do
        print(f"hive-release: {err}", file=sys.stderr)
        return 1
    except ReleaseError as err:
        print(f"hive-release: error: {err}", file=sys.stderr)
        return 2
    _print_plan(commits, args.dry_run, args.private, args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
