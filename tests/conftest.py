import os
import sys

import pytest
import torch

# Every model, tokenizer and dataset in the tests is built locally; nothing is downloaded.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Subprocesses the tests start (remote-code loaders, scripts, torchrun) compute with one thread, as this process does
# (`one_thread` below): results compared bit for bit across processes must not depend on the thread count.
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test model is tiny: its ops spend their time in thread hand-offs, worst on a busy 2-core machine, so one
    thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collectstart(collector):
    """Before the module of transformers' common tests imports them: accept the markers they use."""
    if isinstance(collector, pytest.Module) and collector.path.name == "test_transformers_common.py":
        from release_tests import marker_names

        try:
            names = marker_names()
        except (RuntimeError, FileNotFoundError):  # no release tests to read: the module's import fails on the same
            return  # error, reported as that module's collection error while the rest of the suite runs
        for name in sorted(names):
            collector.config.addinivalue_line("markers", f"{name}: used by transformers' own tests")


def pytest_collection_modifyitems(config, items):
    """The README's commands (`tests/test_readme_commands.py`: 9 minutes for CI's set, an hour for all) run only when
    `-m` names their marker, as CI's own step: `python -m pytest -n 0 -s -m readme_commands
    tests/test_readme_commands.py`."""
    if "readme_commands" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="the README's commands run only with -m readme_commands (9 minutes; an hour with "
                                   "HIVE_README_LONG=1)")
    for item in items:
        if "readme_commands" in item.keywords:
            item.add_marker(skip)
