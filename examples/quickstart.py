"""The README's quickstart, offline: compose a HIVE model from a vision checkpoint and an LLM checkpoint, run it,
generate, save it, reload its encoder as remote code and turn it into the stock vision tower.

    python examples/quickstart.py                                   # tiny local checkpoints, no download
    python examples/quickstart.py --vision google/siglip-large-patch16-384 --text facebook/MobileLLM-350M

With no arguments it first writes a tiny SigLIP vision tower and a tiny Llama checkpoint to `--workdir`, so it runs
offline; `--text_model_type llama` loads the LLM as a Llama whatever its config names (MobileLLM's Hub checkpoints).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, SiglipVisionConfig, SiglipVisionModel

from hive_hf import HiveForConditionalGeneration
from hive_hf.cli.parsing import CommandParser


def write_tiny_checkpoints(workdir: Path) -> tuple[str, str]:
    """A 4-layer SigLIP vision tower and a 4-layer Llama, saved like any Hub checkpoint (the tower alone: HIVE loads
    only the vision half of a two-tower SigLIP, and would list the text half's weights as unused)."""
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8,
    ))
    vision.save_pretrained(workdir / "tiny-siglip")
    llm = AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ))
    llm.save_pretrained(workdir / "tiny-llama")
    return str(workdir / "tiny-siglip"), str(workdir / "tiny-llama")


def main() -> None:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", help="Vision checkpoint (local folder or Hub id); default: a tiny local SigLIP.")
    parser.add_argument("--text", help="Causal LM checkpoint (local folder or Hub id); default: a tiny local Llama.")
    parser.add_argument("--text_model_type", default="llama",
                        help="Load the LM as this architecture whatever its config names (default: llama).")
    parser.add_argument("--fusion", default="joint", choices=["joint", "gated", "concat"],
                        help="How the image reaches the LLM (default: joint).")
    parser.add_argument("--workdir", default="outputs/quickstart", help="Where the checkpoints go (default: %(default)s).")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vision, text = (args.vision, args.text) if args.vision and args.text else write_tiny_checkpoints(workdir)

    model = HiveForConditionalGeneration.from_vision_text_pretrained(
        vision, text, text_model_type=args.text_model_type, fusion=args.fusion
    ).eval()
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
        from transformers import AutoModel
        encoder = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)  # the HIVE vision encoder
        print("reloaded", type(encoder).__name__, "with", sum(p.numel() for p in encoder.parameters()), "parameters")
        tower = encoder.to_base_model()  # the stock tower with the same weights
        print("to_base_model():", type(tower).__name__)
    """)
    subprocess.run([sys.executable, "-c", check], check=True)


if __name__ == "__main__":
    main()
