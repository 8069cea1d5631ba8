"""`python -m hive_hf.cli.attention_maps`: where the LLM's text tokens look in the image, per fused layer
(`hive_hf.analysis.attention_maps`), summarised per layer and drawn over the patch grid.

    python -m hive_hf.cli.attention_maps outputs/demo/stage3 --caption "two red circles in the top left." \\
        --tokens red circles
"""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis._common import load_checkpoint, load_image, pixels_to_image
from ..analysis.attention_maps import (
    AttentionMaps,
    attention_summary,
    find_token_positions,
    plot_attention_maps,
    summary_table,
    text_to_image_attention,
)
from .parsing import CommandParser, user_errors


def main(argv: list[str] | None = None) -> AttentionMaps:
    parser = CommandParser(prog="python -m hive_hf.cli.attention_maps", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="A HIVE checkpoint folder (any fusion).")
    parser.add_argument("--image", default=None, help="An image file; default: a synthetic-shapes picture.")
    parser.add_argument("--caption", default=None, help="The text; default: the synthetic picture's caption.")
    parser.add_argument("--tokens", nargs="+", default=None,
                        help="Tokens to show, as strings or positions; default: every caption token.")
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="LLM layers to show (default: every fused layer; concat: every layer).")
    parser.add_argument("--output", default="outputs/attention_maps.png", help="Where the PNG grid goes.")
    parser.add_argument("--json", default=None, help="Also write the per-layer summary to this JSON file.")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_dir():
        parser.error(f"{args.checkpoint}: no such checkpoint folder")

    # attention weights are computed by eager attention only (sdpa returns none)
    with user_errors(parser.prog):  # a missing or wrong checkpoint
        model, processor = load_checkpoint(args.checkpoint, "eager")
    fusion = model.config.fusion
    image, default_caption = load_image(args.image, 4 * model.config.vision_config.image_size)
    caption = args.caption or default_caption
    if caption is None:
        parser.error("--caption is required with --image.")
    batch = processor(images=image, text=caption)
    ids = batch["input_ids"]
    caption_start = ids.shape[1] - len(processor.tokenizer(caption, add_special_tokens=False)["input_ids"])
    tokens = args.tokens or [str(p) for p in range(caption_start, ids.shape[1])]
    positions = find_token_positions(processor.tokenizer, ids, tokens)
    names = processor.tokenizer.convert_ids_to_tokens([ids[0, p].item() for p in positions])
    maps = text_to_image_attention(model, batch["pixel_values"], ids, positions, batch["attention_mask"], args.layers,
                                   token_names=names)
    # The same numbers over every caption token, so that the summary does not hang on the few tokens drawn.
    everything = text_to_image_attention(model, batch["pixel_values"], ids, list(range(caption_start, ids.shape[1])),
                                         batch["attention_mask"], args.layers)
    print(f"Caption: {caption!r}; fusion: {fusion}; tokens shown: {list(zip(maps.tokens, maps.positions))}\n")
    print(summary_table(attention_summary(maps), "Chosen tokens, averaged:"))
    print()
    print(summary_table(attention_summary(everything), "Every caption token, averaged:"))
    path = plot_attention_maps(maps, pixels_to_image(batch["pixel_values"][0], processor), args.output)
    print(f"\nattention maps: {path} ({len(maps.tokens)} rows x {len(maps.layers)} columns)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "caption": caption, "fusion": fusion, "tokens": maps.tokens, "positions": maps.positions,
            "chosen_tokens": attention_summary(maps), "every_caption_token": attention_summary(everything),
        }, indent=2))
    return maps


if __name__ == "__main__":
    main()
