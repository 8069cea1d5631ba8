"""The example scripts as modules, for tests that call their functions or run `main()` in this process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BENCHMARKS = EXAMPLES.parent / "benchmarks"


def load_script(name: str, folder: Path = EXAMPLES) -> ModuleType:
    """`examples/<name>.py` (or `<folder>/<name>.py`), imported once (as `<name>_script`)."""
    module_name = f"{name}_script"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve their string annotations through it
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def user_error(name: str, argv: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
               folder: Path = EXAMPLES) -> str:
    """Run `examples/<name>.py` (or `<folder>/<name>.py`) with `argv` in this process, expecting it to stop on a user
    error as argparse does: exit status 2 and one line `<name>.py: error: <message>` on stderr, no traceback. Returns
    the message."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        load_script(name, folder).main()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"{name}.py: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix(f"{name}.py: error: ")
