#!/usr/bin/env python
"""Classification probe of frozen vision encoders: the HIVE paper's Table 1.

Each encoder stays frozen; only a head trains (`--probe attentive`, the authors' default, or `--probe linear` on the
mean token), on a block's raw output: `--feature_layer` (a `hidden_states` index; default: a HIVE checkpoint's deepest
tapped layer, -2 for a stock tower, as the authors probe), CLIP's class token dropped. `--recipe paper` (the default:
AdamW, batch 512, clip 3.0, 1.5 warmup epochs then cosine, RandomResizedCrop + flip + ColorJitter, the learning rate
picked on a validation split carved from train) or `--recipe authors` / `authors_imagenet` (the released scripts: 5
epochs at 2e-4, or 1 epoch at 1e-3 on ImageNet-1K; weight decay 0.01, 3% warmup, bf16). One run per seed gives
`mean ± std` top-1 accuracy on the test split. Writes `<output_dir>/probe_results.json` (per-seed numbers, chosen
learning rate, the features read, skipped images) and `probe_results.md` (the table), and prints the table.

    # the embedded default: synthetic shapes (2000 train / 500 test, 5 classes) drawn at the encoders' size
    python examples/run_probe.py \
        --encoders runs/tiny/backbones/vision runs/tiny_sa/stage3 runs/tiny/stage3 \
        --encoder_names base sa hive --output_dir outputs/probe

    # a Hub dataset, a linear probe on cached features (caching needs --augment False)
    python examples/run_probe.py --encoders google/siglip-base-patch16-224 runs/hive-siglip/stage3 \
        --dataset cifar10 --image_column img --probe linear --augment False --feature_cache_dir cache/probe

    # the authors' recipe on ImageNet-1K (their validation split is the test split)
    python examples/run_probe.py --encoders runs/hive-siglip/stage3 --dataset ILSVRC/imagenet-1k \
        --test_split validation --recipe authors_imagenet

    # a local imagefolder (class subfolders; train/ and test/ subfolders, or carve a test split)
    python examples/run_probe.py --encoders runs/hive/stage3 --dataset /data/pets --test_fraction 0.2

Arguments come as flags or as one JSON file (flags after it override it). Accepted encoders: a full HIVE checkpoint,
an encoder-only HIVE release, a two-tower SigLIP/CLIP checkpoint or a vision-only one (folder or Hub id).

The flags, their checks and the steps are `hive_hf.cli.probe`; `--help` lists them.
"""

from hive_hf.cli.probe import main

if __name__ == "__main__":
    main()
