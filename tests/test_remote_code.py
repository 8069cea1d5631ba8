"""Saved HIVE folders, and the encoder-only folder a release pushes, load through remote code in a process where
`hive_hf` cannot be imported; the code they ship imports nothing but the standard library, torch and transformers."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import AUTHORS, FUSIONS, move_new_norms, set_gates, tiny_inputs, tiny_model
from transformers import SiglipImageProcessorPil

from hive_hf import HiveProcessor
from hive_hf.release import CardOptions, StageRecord, write_stage_folders
from hive_hf.tiny_backbones import build_word_tokenizer

HUB_CODE = {"configuration_hive.py", "modeling_hive.py", "processing_hive.py"}  # what a repository runs as code

LOADER = textwrap.dedent(
    """
    import sys

    class BlockHive:
        # A meta-path finder that refuses `hive_hf`: what a user without the package has.
        def find_spec(self, name, path=None, target=None):
            if name == "hive_hf" or name.startswith("hive_hf."):
                raise ImportError("hive_hf is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockHive())
    try:
        import hive_hf  # noqa: F401
        raise SystemExit("hive_hf was importable")
    except ImportError:
        pass

    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    folder, encoder_folder, inputs_file, out_file = sys.argv[1:5]
    inputs = torch.load(inputs_file)
    full = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    encoder_only = AutoModel.from_pretrained(encoder_folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = full(**inputs).logits
        features = encoder(inputs["pixel_values"]).hierarchical_features
        encoder_only_features = encoder_only(inputs["pixel_values"]).hierarchical_features
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    batch = processor(images=[Image.new("RGB", (20, 20), (200, 30, 30))], text=["two red circles."], add_eos=True,
                      return_labels=True)
    assert "hive_hf" not in sys.modules
    torch.save({"logits": logits, "features": features, "encoder_only_features": encoder_only_features,
                "batch": dict(batch), "classes": [type(full).__module__, type(encoder).__name__,
                                                  type(processor).__module__, type(encoder_only).__module__]}, out_file)
    """
)


@pytest.mark.parametrize("fusion", [*FUSIONS, "joint-authors"])
def test_remote_code_loads_with_equal_outputs(fusion, tmp_path):
    model = tiny_model(**({"fusion": "joint", **AUTHORS} if fusion == "joint-authors" else {"fusion": fusion}))
    set_gates(model, 0.4)
    model.config.training_stage = 2  # separate image k/v in use with the authors' options
    move_new_norms(model)
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        logits = model(**inputs).logits
        features = model.vision_model(inputs["pixel_values"]).hierarchical_features
    folder = tmp_path / "hive-tiny"
    model.save_pretrained(folder)
    processor = HiveProcessor.for_model_config(
        model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}),
        build_word_tokenizer(["two red circles."]))
    processor.save_pretrained(folder)
    expected_batch = processor(images=[Image.new("RGB", (20, 20), (200, 30, 30))], text=["two red circles."],
                               add_eos=True, return_labels=True)
    encoder_folder = tmp_path / "hive-tiny-encoder"  # what `hive-release` commits to the encoder repository
    encoder_folder.mkdir()
    write_stage_folders(folder, {"encoder": encoder_folder}, [StageRecord(stage=1)],
                        CardOptions(repos={"encoder": "me/hive-tiny-encoder"}), final=True)
    assert {p.name for p in folder.glob("*.py")} == HUB_CODE
    assert {p.name for p in encoder_folder.glob("*.py")} == HUB_CODE - {"processing_hive.py"}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_hive.HiveVisionEncoderModel"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_hive.HiveForConditionalGeneration"
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "load.py").write_text(LOADER)

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(folder), str(encoder_folder), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["classes"][0].startswith("transformers_modules.")
    assert out["classes"][1] == "HiveVisionEncoderModel"
    assert out["classes"][2].startswith("transformers_modules.")
    assert out["classes"][3].startswith("transformers_modules.")
    for key, value in expected_batch.items():
        assert torch.equal(out["batch"][key], value), key
    torch.testing.assert_close(out["logits"], logits, atol=0, rtol=0)
    for a, b, c in zip(out["features"], out["encoder_only_features"], features, strict=True):
        torch.testing.assert_close(a, c, atol=0, rtol=0)
        torch.testing.assert_close(b, c, atol=0, rtol=0)


def test_remote_code_files_import_only_torch_transformers_and_each_other():
    """The three files a repository ships as code (`modeling_hive.py`, `configuration_hive.py`,
    `processing_hive.py`) import the standard library, torch, transformers and each other, nothing else."""
    package = Path(sys.modules[HiveProcessor.__module__].__file__).parent
    for name in sorted(HUB_CODE):
        tree = ast.parse((package / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: only among the three
                assert f"{node.module}.py" in HUB_CODE, (name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for module in modules:
                    root = module.split(".")[0]
                    assert root in {"torch", "transformers"} or root in sys.stdlib_module_names, (name, module)
