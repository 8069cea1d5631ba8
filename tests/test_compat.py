"""Behaviour that must hold on every supported transformers release (`bash .ci/compat <version>` runs this file with
the model, processor and remote-code tests against any one release)."""

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from tiny import FUSIONS, set_gates, tiny_inputs, tiny_model
from transformers.utils import logging as hf_logging

from hive_hf.modeling_hive import CACHE_NAME, HiveCausalLMOutputWithPast

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_our_calls_raise_no_deprecation_warning(fusion, tmp_path, caplog):
    """Forward with a loss, cached generation and a save/load round trip use this release's names: no
    `DeprecationWarning`/`FutureWarning` and no logged deprecation (e.g. `past_key_values` on 5.24+)."""
    logging.Logger.warning_once.cache_clear()  # a message logged once by an earlier test would be hidden
    model = tiny_model(fusion=fusion)
    set_gates(model, 0.4)
    inputs = tiny_inputs(model.config)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        hf_logging.enable_propagation()
        try:
            out = model(**inputs, labels=inputs["input_ids"])
            model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=True)
            model.save_pretrained(tmp_path / "model")
            type(model).from_pretrained(tmp_path / "model")
        finally:
            hf_logging.disable_propagation()
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    deprecations += [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    ours = [m for m in deprecations if "torch" not in m.lower() or "transformers" in m.lower()]
    assert not ours, ours
    assert getattr(out, CACHE_NAME) is not None


def test_output_declares_this_releases_cache_name():
    names = {f.name for f in HiveCausalLMOutputWithPast.__dataclass_fields__.values()}
    assert CACHE_NAME in names
    assert ("past_key_values" if CACHE_NAME == "cache" else "cache") not in names


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_a_cache_passed_under_either_name_is_used(name):
    """Users (and generation on releases before 5.24) pass `past_key_values=`; 5.24+ passes `cache=`."""
    model = tiny_model(fusion="joint")
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        full = model(**inputs).logits
        prefix = {k: v[:, :-1] if k != "pixel_values" else v for k, v in inputs.items()}
        first = model(**prefix, use_cache=True)
        with _deprecated_name_warns(name == "past_key_values"):
            step = model(input_ids=inputs["input_ids"][:, -1:], attention_mask=inputs["attention_mask"],
                         image_key_values=first.image_key_values, use_cache=True, **{name: getattr(first, CACHE_NAME)})
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"), _deprecated_name_warns(True):
        model(**inputs, cache=getattr(first, CACHE_NAME), past_key_values=getattr(first, CACHE_NAME))


def _deprecated_name_warns(used: bool):
    """From 5.24 (`cache`), `past_key_values=` still works and says it is deprecated; before, it is the name."""
    if used and CACHE_NAME == "cache":
        return pytest.warns(FutureWarning, match="use `cache` instead")
    return contextlib.nullcontext()


# -- a checkpoint crosses releases -----------------------------------------------------------------------------------
SAVE = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from tiny import set_gates, tiny_inputs, tiny_model
    for fusion in ("joint", "gated", "concat"):
        model = tiny_model(fusion=fusion, seed=3)
        set_gates(model, 0.4)
        inputs = tiny_inputs(model.config)
        with torch.no_grad():
            logits = model(**inputs).logits
        model.save_pretrained(f"{sys.argv[1]}/{fusion}")
        torch.save({"inputs": inputs, "logits": logits}, f"{sys.argv[1]}/{fusion}/expected.pt")
    """
)
LOAD = textwrap.dedent(
    """
    import sys

    class BlockHive:  # a user without the package: only the remote code can build the model
        def find_spec(self, name, path=None, target=None):
            if name == "hive_hf" or name.startswith("hive_hf."):
                raise ImportError("hive_hf is blocked in this process")

    sys.meta_path.insert(0, BlockHive())
    import torch
    from transformers import AutoModelForImageTextToText
    for fusion in ("joint", "gated", "concat"):
        folder = f"{sys.argv[1]}/{fusion}"
        expected = torch.load(f"{folder}/expected.pt")
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**expected["inputs"]).logits
        torch.testing.assert_close(logits, expected["logits"], atol=0, rtol=0)
        print(fusion, "equal")
    """
)


def _run(python: str, script: str, *args: str, modules: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(modules)}
    proc = subprocess.run([python, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _version(python: str) -> str:
    return subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not os.environ.get("HIVE_OTHER_PYTHON"),
                    reason="set HIVE_OTHER_PYTHON to a Python with another transformers release (.ci/run does)")
@pytest.mark.parametrize("direction", ["other_saves_this_loads", "this_saves_other_loads"])
def test_a_checkpoint_loads_with_equal_logits_under_another_release(direction, tmp_path):
    """A checkpoint saved under one transformers release loads through remote code, with bit-equal logits, under
    another (CI: the newest release and the declared floor, both ways)."""
    other = os.environ["HIVE_OTHER_PYTHON"]
    assert _version(other) != transformers.__version__, "HIVE_OTHER_PYTHON has this same release"
    saver, loader = (other, sys.executable) if direction == "other_saves_this_loads" else (sys.executable, other)
    _run(saver, SAVE, str(tmp_path), str(REPO / "tests"), modules=tmp_path / "modules_save")
    out = _run(loader, LOAD, str(tmp_path), modules=tmp_path / "modules_load")
    assert out.split() == ["joint", "equal", "gated", "equal", "concat", "equal"]
