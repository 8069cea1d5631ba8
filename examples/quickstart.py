"""Compose a HIVE model from a vision checkpoint and an LLM checkpoint, run it, save it, reload it as remote code.

    python examples/quickstart.py                                   # tiny local checkpoints, no download
    python examples/quickstart.py --vision google/siglip-large-patch16-384 --text facebook/MobileLLM-350M

With no arguments it first writes a tiny SigLIP and a tiny Llama checkpoint to `--workdir`, so it runs offline.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, SiglipConfig, SiglipModel
from transformers.utils import logging

from hive_hf import HiveForConditionalGeneration

logger = logging.get_logger("hive_hf.quickstart")


def write_tiny_checkpoints(workdir: Path) -> tuple[str, str]:
    """A 4-layer SigLIP and a 4-layer Llama, saved like any Hub checkpoint."""
    torch.manual_seed(0)
    vision = SiglipModel(SiglipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "vocab_size": 64},
    ))
    vision.save_pretrained(workdir / "tiny-siglip")
    llm = AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ))
    llm.save_pretrained(workdir / "tiny-llama")
    return str(workdir / "tiny-siglip"), str(workdir / "tiny-llama")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision", help="vision checkpoint (local folder or Hub id); default: a tiny local SigLIP")
    parser.add_argument("--text", help="causal LM checkpoint (local folder or Hub id); default: a tiny local Llama")
    parser.add_argument("--fusion", default="joint", choices=["joint", "gated", "concat"])
    parser.add_argument("--workdir", default="outputs/quickstart")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vision, text = (args.vision, args.text) if args.vision and args.text else write_tiny_checkpoints(workdir)

    model = HiveForConditionalGeneration.from_vision_text_pretrained(vision, text, fusion=args.fusion).eval()
    config = model.config
    print(f"vision layers {config.vision_feature_layers} -> LLM layers {config.cross_attention_layers} ({config.fusion})")
    size = config.vision_config.image_size
    pixel_values = torch.randn(1, 3, size, size)
    input_ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids)
    print(f"loss {out.loss.item():.3f}, logits {tuple(out.logits.shape)}")
    generated = model.generate(pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=8, do_sample=False)
    print(f"generated ids {generated[0].tolist()}")

    folder = workdir / f"hive-{args.fusion}"
    model.save_pretrained(folder)
    print(f"saved to {folder}: {sorted(p.name for p in folder.iterdir())}")
    # A fresh process, as a user without hive_hf installed would load the release.
    check = textwrap.dedent(f"""
        import torch
        from transformers import AutoModel
        encoder = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        print("reloaded", type(encoder).__name__, "with", sum(p.numel() for p in encoder.parameters()), "parameters")
    """)
    subprocess.run([sys.executable, "-c", check], check=True)


if __name__ == "__main__":
    main()
