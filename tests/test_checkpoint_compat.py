"""Checkpoints written by earlier code still load and compute what they did.

`tests/fixtures/pre_redesign/<fusion>/` holds tiny models saved by hive_hf before the package was restructured into
`runs/` and `cli/` and `modeling_hive.py` was reorganised (commit 2b7d181), with the inputs they were given and the
logits they returned (`expected.safetensors`). The gated model's gates were set to 0.5 and every model's new norms
moved away from their init, so the image pathway and its weights matter to the logits.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hive_hf import HiveForConditionalGeneration

FIXTURES = Path(__file__).parent / "fixtures" / "pre_redesign"


@pytest.mark.parametrize("fusion", ["joint", "gated", "concat"])
def test_a_checkpoint_saved_before_the_redesign_loads_with_equal_logits(fusion: str) -> None:
    model, info = HiveForConditionalGeneration.from_pretrained(FIXTURES / fusion, output_loading_info=True)
    assert not any(info.values()), info
    expected = load_file(FIXTURES / fusion / "expected.safetensors")
    inputs = {k.removeprefix("inputs."): v for k, v in expected.items() if k.startswith("inputs.")}
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
