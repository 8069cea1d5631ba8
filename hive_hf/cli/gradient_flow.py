"""`python -m hive_hf.cli.gradient_flow`: how much gradient each encoder layer receives from the caption loss, HIVE
against the SA baseline (`hive_hf.analysis.gradient_flow`), printed per layer and drawn as per-patch maps.

    python -m hive_hf.cli.gradient_flow --hive outputs/demo/stage3 --baseline outputs/demo_sa/stage3 --batches 4
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..analysis._common import load_checkpoint, load_image, pixels_to_image
from ..analysis.gradient_flow import (
    GradientFlow,
    encoder_gradient_flow,
    gradient_flow_over_batches,
    gradient_flow_table,
    plot_gradient_maps,
    summarize_flows,
    summary_table,
)
from ..data import make_shapes_dataset
from .parsing import CommandParser, user_errors


def main(argv: list[str] | None = None) -> dict[str, GradientFlow]:
    parser = CommandParser(prog="python -m hive_hf.cli.gradient_flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hive", required=True, help="A HIVE checkpoint folder (joint or gated fusion).")
    parser.add_argument("--baseline", required=True, help="The SA baseline checkpoint folder (concat fusion).")
    parser.add_argument("--image", default=None, help="An image file; default: a synthetic-shapes picture.")
    parser.add_argument("--caption", default=None, help="Its caption; default: the synthetic picture's.")
    parser.add_argument("--output", default="outputs/gradient_flow.png", help="Where the PNG grid goes.")
    parser.add_argument("--json", default=None, help="Also write the per-layer numbers to this JSON file.")
    parser.add_argument("--batches", type=int, default=0,
                        help="Also measure over this many batches of synthetic shapes (not --image) and print "
                             "the per-layer mean ± std across them: one picture is one sample of a noisy quantity.")
    parser.add_argument("--batch_size", type=int, default=16, help="Images per batch with --batches.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed of the synthetic batches (held-out data).")
    args = parser.parse_args(argv)
    for flag, folder in (("--hive", args.hive), ("--baseline", args.baseline)):
        if not Path(folder).is_dir():
            parser.error(f"{flag} {folder}: no such checkpoint folder")

    flows: dict[str, GradientFlow] = {}
    images: dict[str, np.ndarray] = {}
    for name, ckpt in ((None, args.hive), ("SA (concat)", args.baseline)):
        with user_errors(parser.prog, {"hive": "--hive", "baseline": "--baseline"}):  # a missing or wrong checkpoint
            model, processor = load_checkpoint(ckpt)
        image, default_caption = load_image(args.image, 4 * model.config.vision_config.image_size)
        caption = args.caption or default_caption
        if caption is None:
            parser.error("--caption is required with --image.")
        batch = processor(images=image, text=caption, add_eos=True, return_labels=True)
        name = name or f"HIVE ({model.config.fusion})"
        flows[name] = encoder_gradient_flow(model, batch["pixel_values"], batch["input_ids"],
                                            batch["attention_mask"], batch["labels"])
        images[name] = pixels_to_image(batch["pixel_values"][0], processor)
    print(f"Caption: {caption!r}\n")
    print(gradient_flow_table(flows))
    path = plot_gradient_maps(flows, images, args.output)
    print(f"\ngradient maps: {path}")
    summaries = {}
    if args.batches > 0:
        for name, ckpt in zip(flows, (args.hive, args.baseline)):
            model, processor = load_checkpoint(ckpt)
            data = make_shapes_dataset(args.batches * args.batch_size, model.config.vision_config.image_size,
                                       seed=args.seed, split="gradient_flow")
            summaries[name] = summarize_flows(gradient_flow_over_batches(
                model, processor, data["image"], data["caption"], args.batch_size))
        print(f"\nOver {args.batches} batches of {args.batch_size} synthetic images (mean ± std):\n")
        print(summary_table(summaries))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {n: f.to_dict() for n, f in flows.items()}
        for name, summary in summaries.items():
            record[name]["over_batches"] = asdict(summary)
        Path(args.json).write_text(json.dumps(record, indent=2))
    return flows


if __name__ == "__main__":
    main()
