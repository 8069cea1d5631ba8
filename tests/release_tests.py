"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, ...) from the installed release.

The transformers wheel carries no tests; the release's source distribution on PyPI carries `tests/test_*.py`. `load`
fetches that sdist once per version with pip (`pip download --no-binary :all: transformers==<installed version>`),
keeps its `tests/` under `~/.cache/hive_hf/transformers-tests/<version>/` (`HIVE_CACHE_DIR` moves the cache root) and
imports modules from it as the package `transformers_release_tests`, so that their relative imports resolve.
`HIVE_TRANSFORMERS_TESTS=<folder>` uses a transformers `tests/` folder instead: an extracted sdist, or a checkout of
the release's tag, which also holds the folders the sdist leaves out (below). A failed fetch raises: these tests are
part of CI, which reaches the package registry.

The sdist ships the top-level `tests/test_*.py` only. Of what they import, it lacks `generation/test_utils.py`
(`GenerationTesterMixin`), `exporters/test_export.py` (`ExportTesterMixin`, a base of `ModelTesterMixin` from 5.23 on)
and `utils/test_configuration_utils.py` (`config_common_kwargs`, read only for configs without sub-configs). Where the
folder lacks them, `load` registers empty stand-ins under those names, so `ModelTesterMixin` and `ConfigTester` import
and run whole; `is_stand_in` tells a test which mixins are stand-ins.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_release_tests"
OVERRIDE = "HIVE_TRANSFORMERS_TESTS"
# module (relative to `tests/`) -> what a stand-in for it defines
_STAND_INS = {
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {"_hive_stand_in": True})},
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {"_hive_stand_in": True})},
    "utils.test_configuration_utils": {"config_common_kwargs": {}},
}


def cache_root() -> Path:
    return Path(os.environ.get("HIVE_CACHE_DIR") or Path.home() / ".cache" / "hive_hf") / "transformers-tests"


def tests_dir(version: str = transformers.__version__) -> Path:
    """The `tests/` folder of transformers `version`: `HIVE_TRANSFORMERS_TESTS`, or the cached sdist's (fetched now if
    missing)."""
    override = os.environ.get(OVERRIDE)
    if override:
        folder = Path(override)
        if not (folder / "test_modeling_common.py").is_file():
            raise FileNotFoundError(f"{OVERRIDE}={override!r} is not a transformers tests/ folder (no test_modeling_common.py)")
        return folder
    folder = cache_root() / version / "tests"
    if not (folder / "test_modeling_common.py").is_file():
        _fetch(version, folder)
    return folder


def _fetch(version: str, folder: Path) -> None:
    """Download the sdist of transformers `version` and keep its `tests/` as `folder` (written whole, then renamed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"transformers=={version}", "--dest", tmp]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"could not fetch the transformers {version} sdist ({' '.join(command)}):\n{run.stderr}")
        (archive,) = Path(tmp).glob("transformers-*.tar.gz")
        prefix = f"{archive.name.removesuffix('.tar.gz')}/tests/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(tmp, members=members, filter="data")
        extracted = Path(tmp) / prefix
        # transformers' own tests/ is a package with an empty __init__.py, which the sdist leaves out
        (extracted / "__init__.py").touch()
        if folder.exists():  # another process (a pytest-xdist worker) fetched it meanwhile
            return
        try:
            extracted.rename(folder)
        except OSError:  # ... or renamed its copy between the check and this rename
            if not (folder / "test_modeling_common.py").is_file():
                raise


def _register(root: Path) -> None:
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(root)]
    sys.modules[PACKAGE] = package
    for name, attributes in _STAND_INS.items():
        if (root / f"{name.replace('.', '/')}.py").is_file():
            continue
        parent, child = name.split(".")
        if not (root / parent).is_dir():
            sub = types.ModuleType(f"{PACKAGE}.{parent}")
            sub.__path__ = []
            sys.modules[sub.__name__] = sub
        module = types.ModuleType(f"{PACKAGE}.{name}")
        module.__dict__.update(attributes)
        sys.modules[module.__name__] = module


def load(module: str) -> types.ModuleType:
    """`tests/<module>.py` of the installed transformers release (e.g. `"test_modeling_common"`)."""
    if PACKAGE not in sys.modules:
        _register(tests_dir())
    return importlib.import_module(f"{PACKAGE}.{module}")


def marker_names() -> set[str]:
    """The pytest markers transformers' tests and `testing_utils` apply (registered in transformers' own pytest
    configuration, which the sdist leaves out): found by name in the release's source, so that `--strict-markers`
    accepts them."""
    sources = [*tests_dir().glob("*.py"), Path(transformers.__file__).with_name("testing_utils.py")]
    return {name for path in sources for name in re.findall(r"\bmark\.([A-Za-z_]\w*)", path.read_text())}


def is_stand_in(mixin: type) -> bool:
    return getattr(mixin, "_hive_stand_in", False)
