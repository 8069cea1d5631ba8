"""Every command the README documents, run as a newcomer runs it: as written, in about the time the README states next
to it, quietly, and writing nothing outside `outputs/` and the paths it names.

The README is the source: the commands are read from its fenced `bash` blocks (and the `$ ` lines of its `text`
blocks, with the output printed below them), in the README's order, so that a command that reads a run (the probe,
the release's dry run) finds the one an earlier command wrote, as it does for a reader who follows the README. They
run in a temporary copy of the checkout's tracked files with `OMP_NUM_THREADS=1` and `HF_HUB_OFFLINE=1` (every
runnable command is offline), `python` being this interpreter. Each command must:

- exit 0 (a documented error: exit 2 and print exactly the documented line);
- print no line with `warning` (any case), `UNEXPECTED` or `MISSING` on stderr;
- create, change or delete no file outside `outputs/` and the paths the command names;
- finish within `TIME_MARGIN` times the time the README states for it: the first of the command's own comment, the
  comment lines just above it in its block, or the paragraph just before its block (`about 1.5 minutes`, `~7 min`,
  `under a minute`, `about half a minute`); a runnable command with no stated time fails.

Commands that need the Hub, GPUs, real datasets, a token or a network install are left out by `EXCLUDED`, each with
its reason; an entry that matches no command fails, so the list cannot go stale. A command the README repeats (the
demo run before each section that reads it) runs once. The stated times add up to an hour on one thread of a 2-core
machine (2 to 3 times that while other work loads both cores), so the tests run only when asked for, and CI runs the
commands stated at 2 minutes or less (about 9 minutes); the results benchmarks above that, and the commands that read
what they write, run with HIVE_README_LONG=1:

    python -m pytest -n 0 -s -m readme_commands tests/test_readme_commands.py    # what CI runs
    HIVE_README_LONG=1 python -m pytest -n 0 -s -m readme_commands tests/test_readme_commands.py    # every command
    HIVE_README_TIME_MARGIN=4 python -m pytest -n 0 -s -m readme_commands tests/test_readme_commands.py   # a busy machine
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# A command may take this many times the time the README states: the stated times are one run's on one thread of a
# 2-core machine whose other core does other work, and such a machine is slower some days than others.
# HIVE_README_TIME_MARGIN overrides it, e.g. on a machine known to be slower.
TIME_MARGIN = float(os.environ.get("HIVE_README_TIME_MARGIN", "2.0"))
# Commands the README states at over this many seconds (the VLM demo, reproduce_small, the measured and the small
# efficiency benchmarks: results benchmarks that are rerun on purpose) run only with HIVE_README_LONG=1, and so do the
# commands that read what they write, so that CI's run stays within its budget.
LONG_SECONDS = 120.0
RUN_LONG = os.environ.get("HIVE_README_LONG") == "1"
# A documented mistake is reported "before anything is downloaded or trained"; the README states no time for it.
ERROR_BUDGET_SECONDS = 60.0

# {a piece of a command: why the command is not run here}. A command is left out when it contains the piece.
EXCLUDED: dict[str, str] = {
    "python3 -m venv": "set-up: creates a virtual environment (the test runs in one)",
    "pip install": "set-up: installs packages from the package registry (network)",
    "-m pytest": "the whole test suite: CI runs it as its own step",
    "bash .ci/compat": "installs a transformers release with pip into a new environment (network)",
    "--private": "publishes to the Hub: needs a token and pushes",
    "--dataset /data/": "a real dataset (LLaVA-Pretrain-595k, CC3M) and the Hub's SigLIP/MobileLLM checkpoints",
    "google/siglip-large-patch16-384": "downloads SigLIP-L and MobileLLM from the Hub, trains on a real dataset",
    "--nnodes=2": "2 nodes with 8 GPUs each",
    "--nproc_per_node=8": "8 GPUs (nccl) and `<flags>` left for the reader to fill in",
    "meta-llama/Llama-3.2-1B-Instruct": "a gated Hub LLM, LLaVA-1.5's 665k conversations and GQA's images",
    "-m lmms_eval": "needs the optional lmms extra (its own environment: `bash .ci/lmms` installs it and runs its tests)",
}
# The README's `python` blocks are code to read, not commands; they load Hub checkpoints (SigLIP-L, MobileLLM) or a
# user's own releases (`me/hive-siglip`). `examples/quickstart.py`, a command above, runs the quickstart offline.
RUN_LANGUAGES = ("bash", "text")
# `python` and the package's console scripts, as a fresh install provides them.
TOOLS = {"python": [sys.executable], "hive-release": [sys.executable, "-m", "hive_hf.cli.release"],
         "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
WARNING, LOADING_REPORT = re.compile(r"warn", re.IGNORECASE), re.compile(r"UNEXPECTED|MISSING")
_TIME = re.compile(
    r"(?:about|~|under|within|in)\s*(half a minute|a minute|\d+(?:\.\d+)?\s*(?:minutes?|min|seconds?|s)\b)",
    re.IGNORECASE,
)


@dataclass
class Command:
    line: int  # README line where the command starts
    text: str  # the command as a shell runs it (continuation lines joined)
    stated_seconds: float | None
    expected_output: str | None = None  # a documented error: what it prints
    excluded: str | None = None

    @property
    def name(self) -> str:
        words = [w for w in shlex.split(self.text) if not w.startswith("-")]
        script = next((Path(w).name for w in words if w.endswith(".py") or w.startswith("hive_hf.")), words[0])
        return f"L{self.line}-{script}"


def stated_seconds(text: str) -> float | None:
    """The first time stated in `text` (`about 1.5 minutes`, `~7 min`, `under a minute`), in seconds."""
    match = _TIME.search(text)
    if match is None:
        return None
    value = match.group(1).lower()
    if value == "half a minute":
        return 30.0
    if value == "a minute":
        return 60.0
    number = float(re.match(r"[\d.]+", value).group(0))
    return number * 60 if "min" in value else number


def readme_commands(readme: str) -> list[Command]:
    """Every command of the README's fenced `bash` and `text` blocks, in order; `&&` chains are split into their
    steps (so a set-up command's installs can be left out and its demo run)."""
    lines = readme.splitlines()
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)$", lines[i])
        if not fence:
            i += 1
            continue
        language, start = fence.group(1), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j] == "```")
        block = lines[start:end]
        if language in RUN_LANGUAGES:
            prose = _paragraph_before(lines, i)
            commands += _block_commands(block, start + 1, language, prose)
        i = end + 1
    for command in commands:
        command.excluded = next((why for piece, why in EXCLUDED.items() if piece in command.text), None)
    return commands


def _paragraph_before(lines: list[str], fence: int) -> str:
    j = fence - 1
    while j >= 0 and (not lines[j].strip() or lines[j].startswith("<!--")):
        j -= 1
    paragraph = []
    while j >= 0 and lines[j].strip() and not lines[j].startswith(("```", "<!--", "#")):
        paragraph.insert(0, lines[j])
        j -= 1
    return " ".join(paragraph)


def _block_commands(block: list[str], first_line: int, language: str, prose: str) -> list[Command]:
    commands, comments, k = [], [], 0
    while k < len(block):
        raw, line = block[k], first_line + k
        if language == "text":
            if raw.startswith("$ "):
                output = []
                k += 1
                while k < len(block) and not block[k].startswith("$ "):
                    output.append(block[k])
                    k += 1
                commands.append(Command(line, raw[2:], ERROR_BUDGET_SECONDS, "\n".join(output).strip()))
                continue
            k += 1
            continue
        if not raw.strip() or raw.lstrip().startswith("#"):
            comments = [] if not raw.strip() else [*comments, raw]
            k += 1
            continue
        text = raw
        while text.rstrip().endswith("\\") and k + 1 < len(block):
            k += 1
            text = text.rstrip()[:-1].rstrip() + " " + block[k].strip()
        text, _, comment = text.partition("  # ")
        seconds = next((s for s in (stated_seconds(comment), stated_seconds(" ".join(comments)),
                                    stated_seconds(prose)) if s is not None), None)
        for step in text.split(" && "):
            commands.append(Command(line, step.strip(), seconds))
        comments = []
        k += 1
    return commands


COMMANDS = readme_commands(README.read_text())
RUN = [c for c in COMMANDS if c.excluded is None]

pytestmark = pytest.mark.readme_commands


def test_every_excluded_piece_names_a_documented_command():
    """An exclusion that no longer matches a command would hide nothing; one that matches names its reason."""
    texts = [c.text for c in COMMANDS]
    stale = [piece for piece in EXCLUDED if not any(piece in t for t in texts)]
    assert not stale, f"EXCLUDED entries that match no README command: {stale}"
    print("\nREADME commands left out:")
    for command in COMMANDS:
        if command.excluded:
            print(f"  line {command.line}: {command.text[:90]}  -- {command.excluded}")


def test_every_runnable_command_states_its_time():
    missing = [f"line {c.line}: {c.text}" for c in RUN if c.stated_seconds is None]
    assert not missing, "README commands without a stated time next to them:\n" + "\n".join(missing)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the checkout's tracked files (what a clone holds), with `python`, `hive-release` and
    `torchrun` on the PATH."""
    copy = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    files = [f for f in listed.stdout.split("\0") if f] if listed.returncode == 0 else []
    if not files:
        pytest.fail("the README commands run in a copy of the git checkout's tracked files: `git ls-files` failed")
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    bin_dir = copy.parent / f"{copy.name}-bin"
    bin_dir.mkdir()
    for tool, argv in TOOLS.items():
        (bin_dir / tool).write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, argv)) + ' "$@"\n')
        (bin_dir / tool).chmod(0o755)
    return copy


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] != "outputs" and "__pycache__" not in relative.parts:
            stat = path.stat()
            files[relative.as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


def _named(relative: str, command: str) -> bool:
    """Whether the command names `relative` (or a folder holding it), as an argument or a flag's value."""
    for word in shlex.split(command):
        word = word.split("=", 1)[-1].rstrip("/")
        if word and (relative == word or relative.startswith(word + "/")):
            return True
    return False


def _shell_text(command: Command) -> str:
    return re.sub(r"(^|\s)\.venv/bin/", r"\1", command.text)  # the environment a set-up command made: this one


def _run(command: Command, cwd: Path, budget: float) -> tuple[int, str, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(cwd),
           "PATH": f"{cwd.parent / (cwd.name + '-bin')}{os.pathsep}{os.environ.get('PATH', '')}"}
    text = _shell_text(command)
    started = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"line {command.line}: still running after {budget:.0f} s ({TIME_MARGIN}x the README's "
                    f"{command.stated_seconds:.0f} s): {command.text}\n{err[-3000:]}")
    return process.returncode, out, err, time.perf_counter() - started


TIMES: list[tuple[Command, float]] = []
RAN: dict[str, int] = {}  # a command that exited as documented -> its README line
SKIPPED_OUTPUTS: dict[str, int] = {}  # an `outputs/` path a skipped command names -> its README line


def _outputs_named(command: Command) -> list[str]:
    return [w.split("=", 1)[-1].rstrip("/") for w in shlex.split(command.text)
            if w.split("=", 1)[-1].startswith("outputs/")]


def _skip_reason(command: Command) -> tuple[str | None, bool]:
    """Why this command does not run here, and whether what it would write is then missing: it is long, it reads what
    a skipped command writes, or the same command already ran (the README repeats the demo run before the sections
    that read it)."""
    text = _shell_text(command)
    if text in RAN:
        return f"line {command.line}: the same command ran at line {RAN[text]}; its outputs are there", False
    for path in _outputs_named(command):
        for skipped, line in SKIPPED_OUTPUTS.items():
            if path == skipped or path.startswith(skipped + "/"):
                return f"line {command.line}: reads {path}, which line {line} writes (skipped)", True
    if command.stated_seconds > LONG_SECONDS and not RUN_LONG:
        return (f"line {command.line}: stated {command.stated_seconds / 60:.1f} min, over {LONG_SECONDS / 60:.0f}: "
                "runs with HIVE_README_LONG=1"), True
    return None, False


def _budget(command: Command) -> float:
    return command.stated_seconds * (1.0 if command.expected_output is not None else TIME_MARGIN)


@pytest.mark.parametrize("command", [pytest.param(c, id=c.name, marks=pytest.mark.timeout(_budget(c) + 120))
                                     for c in RUN if c.stated_seconds is not None])
def test_readme_command(command: Command, checkout: Path):
    reason, outputs_missing = _skip_reason(command)
    if reason is not None:
        if outputs_missing:
            SKIPPED_OUTPUTS.update({path: command.line for path in _outputs_named(command)})
        pytest.skip(reason)
    budget = _budget(command)
    before = _snapshot(checkout)
    code, out, err, seconds = _run(command, checkout, budget)
    TIMES.append((command, seconds))
    print(f"line {command.line}: {seconds:.0f} s (stated {command.stated_seconds:.0f} s): {command.text}")
    tail = f"\n--- stdout (end)\n{out[-2000:]}\n--- stderr (end)\n{err[-4000:]}"
    if command.expected_output is not None:
        assert code == 2, f"line {command.line}: a documented mistake exits 2, got {code}{tail}"
        assert err.strip() == command.expected_output, f"line {command.line}: the README prints another error{tail}"
    else:
        assert code == 0, f"line {command.line}: exit status {code}: {command.text}{tail}"
    noise = [line for line in re.split(r"[\r\n]", err) if WARNING.search(line) or LOADING_REPORT.search(line)]
    assert not noise, f"line {command.line}: warnings on stderr of a correct run:\n" + "\n".join(noise[:20])
    after = _snapshot(checkout)
    touched = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    stray = [p for p in touched if not _named(p, command.text)]
    assert not stray, (f"line {command.line}: files written outside outputs/ and the paths the command names: "
                       f"{stray[:20]}")
    assert seconds <= budget, f"line {command.line}: {seconds:.0f} s, over the budget {budget:.0f} s"
    RAN[_shell_text(command)] = command.line


def test_times_table():
    """The measured time of every command that ran, beside its stated time (run with `-s` to see it)."""
    if not TIMES:
        pytest.skip("no README command ran")
    print("\n| line | command | stated | measured |\n|---|---|---:|---:|")
    for command, seconds in TIMES:
        print(f"| {command.line} | `{command.text}` | {command.stated_seconds:.0f} s | {seconds:.0f} s |")
    print(f"| | total | {sum(c.stated_seconds for c, _ in TIMES):.0f} s | {sum(s for _, s in TIMES):.0f} s |")
