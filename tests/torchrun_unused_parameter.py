"""Run under `torchrun`: stage 3 of a tiny HIVE model under DDP without `find_unused_parameters`, with stage logic
that forgets to freeze the tower's post norm and pooling head, which the forward never reaches (what a stage that
trains a parameter outside the loss looks like). `HiveStageCallback` must stop every process with an error naming
them, instead of DDP failing one step later with no name, or waiting for gradients that never come."""

import sys

from tiny import tiny_model
from transformers import SiglipImageProcessorPil, TrainingArguments

from hive_hf import HiveForConditionalGeneration, HiveProcessor
from hive_hf.data import make_shapes_dataset
from hive_hf.tiny_backbones import build_word_tokenizer
from hive_hf.training import HiveCaptionCollator, HiveTrainer

HiveForConditionalGeneration._unused_vision_parameters = lambda self: set()

shapes = make_shapes_dataset(32, image_size=16, seed=0)
model = tiny_model()
processor = HiveProcessor.for_model_config(
    model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}), build_word_tokenizer(shapes["caption"]))
args = TrainingArguments(
    output_dir=sys.argv[1], per_device_train_batch_size=4, max_steps=3, use_cpu=True, report_to="none",
    save_strategy="no", remove_unused_columns=False, disable_tqdm=True, ddp_find_unused_parameters=False)
trainer = HiveTrainer(model=model, args=args, train_dataset=shapes, data_collator=HiveCaptionCollator(processor),
                      stage=3)
trainer.train()
print(f"trained {trainer.state.global_step} steps")
