#!/usr/bin/env python
"""Pre-train a vision encoder the HIVE way: three stages, each a `Trainer` run with its own optimizer and schedule.

Stage 1 trains the connector, stage 2 adds the LLM (in full, or LoRA with --lora_r), stage 3 adds the vision
encoder. Each stage starts from the previous stage's weights and writes its own folder (`<output_dir>/stage<k>`:
checkpoint + processor, metrics, loss_curve.png). Run the same command again after a crash: finished stages are
skipped and the interrupted one resumes from its last checkpoint.

    # the demo: tiny backbones on the embedded synthetic shapes, about a minute on a 2-core CPU
    python examples/run_pretrain.py examples/configs/demo.json

    # real backbones and data (flags or a JSON file; flags after a JSON file override it)
    python examples/run_pretrain.py \\
        --vision_model_name_or_path google/siglip-large-patch16-384 \\
        --text_model_name_or_path facebook/MobileLLM-350M --text_model_type llama \\
        --dataset /data/cc595k --image_column image --caption_column caption \\
        --per_device_train_batch_size 32 --bf16 --output_dir runs/hive-siglip

    # the paper's recipe, or the authors' released one (see the README for what differs)
    python examples/run_pretrain.py examples/configs/paper.json --dataset /data/cc595k
    python examples/run_pretrain.py examples/configs/authors_florence.json --dataset /data/cc3m_florence

    # several processes (CPU: gloo)
    torchrun --nproc_per_node=2 examples/run_pretrain.py examples/configs/demo.json --use_cpu True

The flags, their checks and the run itself are `hive_hf.cli.pretrain`; `--help` lists HIVE's flags and the common
Trainer ones, `--help-all` every `TrainingArguments` flag.
"""

from hive_hf.cli.pretrain import main

if __name__ == "__main__":
    main()
