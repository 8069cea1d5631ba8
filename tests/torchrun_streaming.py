"""Streamed training with the sample keys of every step recorded: helpers for tests/test_streaming.py, and, run as
a script (under `torchrun` or alone), a short streamed stage that writes what each process trained on.

    python tests/torchrun_streaming.py SHARDS OUT WORKERS GLOBAL_BATCH

writes `OUT/keys-rank<r>.json`: for each optimizer step, the keys of the samples this process trained on.
"""

import json
import sys
from pathlib import Path

import torch
from tiny import set_gates, tiny_model
from transformers import SiglipImageProcessorPil, TrainingArguments

from hive_hf import HiveProcessor
from hive_hf.data import load_caption_dataset
from hive_hf.tiny_backbones import build_word_tokenizer
from hive_hf.training import HiveCaptionCollator, HiveTrainer
from hive_hf.training.arguments import split_global_batch

MAX_PER_DEVICE = 4


class KeyedCollator(HiveCaptionCollator):
    """Also returns each batch's sample keys, so that a test sees what every step trained on."""

    def __call__(self, rows):
        batch = super().__call__(rows)
        batch["sample_keys"] = torch.tensor([int(r["__key__"]) for r in rows])
        return batch


class KeyedTrainer(HiveTrainer):
    """Records the sample keys of every micro-batch in `seen`, and of every optimizer step in `steps`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.steps = [], {}

    def compute_loss(self, model, inputs, *args, **kwargs):
        keys = inputs.pop("sample_keys").tolist()
        self.seen.append(keys)
        self.steps.setdefault(self.state.global_step + 1, []).extend(keys)
        return super().compute_loss(model, inputs, *args, **kwargs)


def stream_trainer(shards, captions, out, workers=2, callbacks=(), **overrides) -> KeyedTrainer:
    """A stage-2 `KeyedTrainer` of the tiny model on the shards in `shards`, streamed."""
    model = tiny_model(seed=0)
    set_gates(model, 0.5)
    processor = HiveProcessor.for_model_config(
        model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}), build_word_tokenizer(captions))
    settings = dict(output_dir=str(out), per_device_train_batch_size=MAX_PER_DEVICE, max_steps=10, learning_rate=1e-2,
                    use_cpu=True, report_to="none", save_strategy="steps", save_steps=3, remove_unused_columns=False,
                    logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=workers)
    return KeyedTrainer(model=model, args=TrainingArguments(**{**settings, **overrides}),
                        train_dataset=load_caption_dataset(str(shards), streaming=True),
                        data_collator=KeyedCollator(processor), stage=2, callbacks=list(callbacks))


def main(shards: str, out: str, workers: int, global_batch: int) -> None:
    captions = [row["caption"] for row in load_caption_dataset(shards, streaming=True)]
    probe = TrainingArguments(output_dir=out, use_cpu=True, report_to="none")
    per_device, accumulation = split_global_batch(global_batch, MAX_PER_DEVICE, probe.world_size)
    trainer = stream_trainer(shards, captions, out, workers=workers, max_steps=4, save_strategy="no",
                             per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
    trainer.train()
    Path(out, f"keys-rank{trainer.args.process_index}.json").write_text(json.dumps(trainer.steps))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
