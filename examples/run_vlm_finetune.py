#!/usr/bin/env python
"""Fine-tune a LLaVA-style VLM on top of a vision encoder and evaluate it on VQA benchmarks (HIVE paper, Table 2).

The encoder (a HIVE checkpoint, an encoder-only HIVE release, or a stock SigLIP/CLIP checkpoint) feeds a stock
`LlavaForConditionalGeneration` through a fresh projector: the second-to-last block's tokens (`--vision_feature_layer
-2`, as the authors) go into the LLM's input; images are padded to a square (`--image_aspect_ratio pad`). Stage 1
trains the projector, stage 2 the LLM as well (in full, or LoRA with --lora_r); the encoder stays frozen. Training data
are conversations in the LLM's chat template, the loss on the assistant turns only: LLaVA-style JSON or a dataset with a
`messages` column (`--train_benchmark conversations`), or any benchmark layout asked as one-question conversations.
Each stage writes `<output_dir>/stage<k>` (a plain LLaVA checkpoint + `LlavaProcessor`, loadable with
`AutoModelForImageTextToText` and no remote code); the last one is then evaluated as lmms-eval does (its prompts in
the chat template, greedy, 16 new tokens, each benchmark's own scoring), printing a table and writing
`eval_results.json`, `predictions.jsonl`, `results.md`. Run the same command again after a crash: finished stages are
skipped, the interrupted one resumes.

    # the embedded demo: VQA on the synthetic shapes (all four scoring styles), a tiny LLM built offline
    python examples/run_vlm_finetune.py --vision_model_name_or_path /tmp/vlm_run/stage3 --tiny_text_backbone \\
        --do_train --do_eval --output_dir /tmp/vlm_hive

    # real backbones (the paper's LLM; the authors': Qwen/Qwen2-0.5B-Instruct), LLaVA conversations, GQA
    python examples/run_vlm_finetune.py \\
        --vision_model_name_or_path runs/hive-siglip/stage3 --text_model_name_or_path meta-llama/Llama-3.2-1B-Instruct \\
        --train_benchmark conversations --train_questions_file llava_v1_5_mix665k.json --train_image_dir /data/llava \\
        --benchmark gqa --questions_file testdev_balanced_questions.json --image_dir /data/gqa/images \\
        --do_train --do_eval --per_device_train_batch_size 16 --bf16 --output_dir runs/vlm-hive

    # evaluate an existing LLaVA checkpoint only
    python examples/run_vlm_finetune.py --model_name_or_path runs/vlm-hive/stage2 --do_eval \\
        --benchmark mme --questions_file /data/MME/data --output_dir runs/vlm-hive/mme

The flags, their checks and the steps are `hive_hf.cli.vlm_finetune`; `--help` lists them.
"""

from hive_hf.cli.vlm_finetune import main

if __name__ == "__main__":
    main()
