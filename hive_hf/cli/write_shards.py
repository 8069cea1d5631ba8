"""`python -m hive_hf.cli.write_shards`: write an image-caption dataset as WebDataset .tar shards, ready for
`run_pretrain.py --dataset <folder> --streaming True` (see `hive_hf.data.shards` for how many shards to write).

    # the embedded captioned shapes, 4096 rows in 16 shards (offline)
    python -m hive_hf.cli.write_shards synthetic outputs/shapes-shards --max_samples 4096 --num_shards 16
    # an image folder with metadata.jsonl, 1000 rows a shard, shuffled
    python -m hive_hf.cli.write_shards /data/pictures data/pictures-shards --caption_column text \\
        --samples_per_shard 1000 --shuffle_seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..data.captions import load_caption_dataset
from ..data.shards import IMAGE_FORMATS, write_shards
from .parsing import CommandParser, setup_logging, user_errors

PROG = "python -m hive_hf.cli.write_shards"


def parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("source", help="'synthetic' (the embedded shapes), an imagefolder with metadata.jsonl/csv, "
                                       "shards, or any `datasets.load_dataset` name (as run_pretrain.py --dataset).")
    parser.add_argument("output_dir", help="Folder the shards go to (<prefix>-000000.tar, ...).")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--samples_per_shard", type=int, help="Rows per shard (the last may hold fewer).")
    size.add_argument("--num_shards", type=int,
                      help="How many shards, rows spread evenly: a multiple of processes x DataLoader workers.")
    parser.add_argument("--image_column", default="image", help="Column holding the images (default: image).")
    parser.add_argument("--caption_column", default="caption", help="Column holding the captions (default: caption).")
    parser.add_argument("--split", default="train", help="Split to write (default: train).")
    parser.add_argument("--max_samples", type=int, help="Write at most this many rows (the synthetic set's size; "
                                                        "default 2000).")
    parser.add_argument("--image_size", type=int, help="Side of the synthetic images (default: 32).")
    parser.add_argument("--image_format", choices=sorted(IMAGE_FORMATS), default="jpg",
                        help="How images are stored (default: jpg, quality 95).")
    parser.add_argument("--shuffle_seed", type=int, help="Shuffle the rows with this seed before writing (a stream "
                                                         "is read in its stored order); default: keep the order.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic set (default: 0).")
    parser.add_argument("--prefix", default="shard", help="Shard file names' prefix (default: shard).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    command = parser()
    args = command.parse_args(argv)
    setup_logging()
    with user_errors(PROG, {name: f"--{name}" for name in vars(args)}):
        extra = {"image_size": args.image_size} if args.image_size is not None else {}
        dataset = load_caption_dataset(args.source, image_column=args.image_column,
                                       caption_column=args.caption_column, split=args.split,
                                       max_samples=args.max_samples, seed=args.seed, **extra)
        written = write_shards(dataset, args.output_dir, samples_per_shard=args.samples_per_shard,
                               num_shards=args.num_shards, image_format=args.image_format,
                               shuffle_seed=args.shuffle_seed, prefix=args.prefix)
    skipped = f", {written.skipped} unreadable rows skipped" if written.skipped else ""
    print(f"{sum(written.rows)} rows in {len(written.paths)} shards in {args.output_dir}{skipped}")
    print(f"  train on them: python examples/run_pretrain.py ... --dataset {args.output_dir} --streaming True "
          "--stage_max_steps ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
