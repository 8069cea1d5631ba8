#!/usr/bin/env python
"""The README's VLM demo table: LLaVA fine-tuning on the demo's HIVE encoder and on its base encoder, with a blind
baseline (README, "VLM fine-tuning").

1. writes the synthetic shapes as LLaVA conversation data (`write_shapes_conversations`: 2,000 pictures, five
   questions each, one in each scoring style),
2. runs `examples/run_vlm_finetune.py` twice with the same flags (a tiny LLM built offline, both stages, then the
   evaluation on 200 held-out pictures): once on `<demo_dir>/stage3` (HIVE), once on `<demo_dir>/backbones/vision`
   (the stock tower the demo started from),
3. scores a blind baseline on the same questions: each question answered with its most frequent training answer,
4. reads each run's stage markers (`vlm_stage.json`: first and last logged loss, training time) and
   `eval_results.json`,
5. when lmms-eval is installed (`pip install -e ".[lmms]"`): writes the evaluation questions as lmms-eval tasks
   (`<output_dir>/lmms_tasks`, `hive_hf.evaluation.lmms`), runs lmms-eval's `llava_hf` on each run's last stage, and
   reports its scores beside ours, our metrics on its answers, and how many of its answers are ours;
6. writes the tables to --results_file (and the numbers to a .json beside it), which the README quotes.

    python examples/run_pretrain.py examples/configs/demo.json    # outputs/demo, once (under a minute)
    python benchmarks/vlm_demo.py --threads 1                     # about 7.5 minutes on one CPU thread

A run folder that already holds finished stages resumes from them (the fine-tuning script skips them); use a new
--output_dir for a fresh measurement.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hive_hf.cli.measure import DemoMeasurementArguments, run_step
from hive_hf.cli.parsing import HiveArgumentParser, user_errors
from hive_hf.data.vqa import load_vqa_benchmark, make_shapes_vqa_dataset, write_shapes_conversations
from hive_hf.evaluation.lmms import lmms_eval_command, read_lmms_results, write_lmms_tasks
from hive_hf.evaluation.vlm import TASK_TITLES, blind_baseline_scores, generate_answers, score_predictions
from hive_hf.runs.layout import VLM_STAGE_MARKER, RunLayout
from hive_hf.runs.records import command_line, demo_encoders, write_results
from hive_hf.runs.stages import VLM_STAGES
from hive_hf.runs.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]

TRAIN_PICTURES = 2000
# What examples/run_vlm_finetune.py evaluates with these flags: its default --seed, --shapes_eval_images and
# --shapes_image_size (checked against the questions each run answered).
EVAL_SEED, EVAL_PICTURES, IMAGE_SIZE = 42, 200, 32
# {row name: (output subfolder, encoder in demo_encoders)}
RUNS: dict[str, tuple[str, str]] = {"HIVE encoder": ("hive", "HIVE"), "base encoder": ("base", "base")}
BLIND = "blind question prior"
FINETUNE_FLAGS = [
    "--tiny_text_backbone", "--tiny_text_pretrain_steps", "200", "--train_benchmark", "conversations", "--do_train",
    "--do_eval", "--per_device_train_batch_size", "32", "--stage_batch_sizes", "32", "32", "--stage_epochs", "1", "12",
    "--stage_learning_rates", "3e-3", "1e-3", "--lr_scheduler_type", "constant_with_warmup", "--logging_steps", "20",
    "--per_device_eval_batch_size", "64", "--use_cpu", "--report_to", "none",
]


def finetune_command(encoder: Path, data_dir: Path, output_dir: Path, run_name: str) -> list[str]:
    """The `examples/run_vlm_finetune.py` arguments of one encoder's run (the same flags for every encoder)."""
    return [str(ROOT / "examples" / "run_vlm_finetune.py"), "--vision_model_name_or_path", str(encoder),
            "--train_questions_file", str(data_dir / "conversations.json"), "--train_image_dir",
            str(data_dir / "images"), "--output_dir", str(output_dir), "--run_name", run_name, *FINETUNE_FLAGS]


def read_run(run_dir: Path) -> dict[str, Any]:
    """One finished fine-tuning run from its own files: `{"stages": {stage: its marker without the loss history},
    "scores": {task: headline score}, "num_questions"}`."""
    layout = RunLayout(run_dir, marker=VLM_STAGE_MARKER)
    stages = {stage: {k: v for k, v in layout.read_marker(stage).items() if k != "log_history"}
              for stage in VLM_STAGES.stages}
    metrics = json.loads((layout.root / "eval_results.json").read_text())  # `<task>_<key>`, as the script flattens
    scores = {task: metrics[f"{task}_score"] for task in TASK_TITLES if f"{task}_score" in metrics}
    return {"stages": stages, "scores": scores, "num_questions": metrics["eval_samples"]}


def vlm_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table from `{row name: {"scores": {task: score}, "stages": {stage: {"first_loss", "last_loss",
    "train_runtime"}} (left out for a baseline)}}`: each stage's first -> last logged loss, the training minutes, then
    one column per task present, in the paper's order (MME, GQA, OK-VQA, ScienceQA)."""
    tasks = [t for t in TASK_TITLES if any(t in row["scores"] for row in rows.values())]
    stages = VLM_STAGES.stages
    lines = []
    for name, row in rows.items():
        run = row.get("stages")
        losses = [f"{run[s]['first_loss']:.3f} -> {run[s]['last_loss']:.3f}" if run else "" for s in stages]
        minutes = f"{sum(run[s]['train_runtime'] for s in stages) / 60:.1f}" if run else ""
        scores = [f"{row['scores'][t]:.2f}" if t in row["scores"] else "-" for t in tasks]
        lines.append([name, *losses, minutes, *scores])
    header = ["", *(f"stage {s} loss" for s in stages), "training (min)", *(TASK_TITLES[t] for t in tasks)]
    return markdown_table(header, lines, align="l" * (len(stages) + 1) + "r" * (len(tasks) + 1))


def blind_prior(run_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """The blind baseline's `score_predictions` on the questions the runs answered (checked against each run's
    `predictions.jsonl`), trained on the questions of the conversations."""
    train = make_shapes_vqa_dataset(TRAIN_PICTURES, image_size=IMAGE_SIZE)
    evaluation = load_vqa_benchmark("shapes", num_images=EVAL_PICTURES, image_size=IMAGE_SIZE, seed=EVAL_SEED)
    for run_dir in run_dirs:
        with open(run_dir / "predictions.jsonl") as handle:
            answered = [json.loads(line)["question_id"] for line in handle]
        if answered != evaluation["question_id"]:
            raise ValueError(f"{run_dir} answered other questions than the blind baseline's ({EVAL_PICTURES} shapes "
                             f"pictures, seed {EVAL_SEED}): were its --seed or --shapes_* flags changed?")
    return blind_baseline_scores(train, evaluation)


def lmms_eval_rows(out: Path, threads: int) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """lmms-eval's `llava_hf` on each run's last stage, on the questions the runs answered (written as its tasks):
    `({row name: {"scores": {task: score}, "same_answers": % of its answers equal to our pipeline's}}, {run: wall
    seconds})`, with two rows per run: lmms-eval's scores and our metrics' on its answers."""
    evaluation = load_vqa_benchmark("shapes", num_images=EVAL_PICTURES, image_size=IMAGE_SIZE, seed=EVAL_SEED)
    tasks = write_lmms_tasks(evaluation, out / "lmms_tasks")
    rows, seconds = {}, {}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local model and data: nothing to fetch
    for name, (folder, _) in RUNS.items():
        model_dir = RunLayout(out / folder, marker=VLM_STAGE_MARKER).stage_dir(VLM_STAGES.stages[-1])
        command = lmms_eval_command(model_dir, out / "lmms_tasks", out / folder / "lmms_eval", list(tasks.values()))
        seconds[name] = run_step(command[1:], threads)
        theirs = read_lmms_results(out / folder / "lmms_eval")
        with open(out / folder / "predictions.jsonl") as handle:
            ours = [json.loads(line)["prediction"] for line in handle]
        answers = {task: iter(values["predictions"]) for task, values in theirs.items()}
        in_order = [next(answers[task]) for task in evaluation["task"]]  # each task's answers in dataset order
        rescored = score_predictions(evaluation, in_order)
        # our answers generated as llava_hf feeds the model: BOS added, the image as is, one question at a time
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
        as_llava_hf = generate_answers(model, AutoProcessor.from_pretrained(model_dir), evaluation, batch_size=1,
                                       image_aspect_ratio="square", add_special_tokens=True)
        same = {key: {task: 100.0 * sum(a == b for a, b, t in zip(in_order, answers, evaluation["task"]) if t == task)
                      / rescored[task]["num_questions"] for task in theirs}
                for key, answers in (("ours", ours), ("ours_as_llava_hf", as_llava_hf))}
        rows[f"{name}: lmms-eval `llava_hf`"] = {"scores": {t: v["score"] for t, v in theirs.items()},
                                                 "same_answers": same}
        rows[f"{name}: our metrics on its answers"] = {"scores": {t: v["score"] for t, v in rescored.items()}}
    return rows, seconds


def lmms_table(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> str:
    """Our pipeline's scores, lmms-eval's and our metrics' on its answers, per task (and the share of its answers
    that are ours)."""
    tasks = [t for t in TASK_TITLES if any(t in row["scores"] for row in ours.values())]
    lines = []
    for name, row in ours.items():
        lines.append([f"{name}: our pipeline", *(f"{row['scores'][t]:.2f}" for t in tasks)])
        for key, other in theirs.items():
            if key.startswith(f"{name}:"):
                same = other.get("same_answers")
                lines.append([key, *(f"{other['scores'][t]:.2f}" + (
                    f" ({same['ours'][t]:.1f}% / {same['ours_as_llava_hf'][t]:.1f}%)" if same else "") for t in tasks)])
    return markdown_table(["", *(TASK_TITLES[t] for t in tasks)], lines, align="l" + "r" * len(tasks))


@dataclass
class VLMDemoArguments(DemoMeasurementArguments):
    output_dir: str = field(default="outputs/vlm_demo", metadata={
        "help": "The conversation data (shapes_llava/) and one run folder per encoder (hive/, base/)."})
    results_file: str = field(default="outputs/vlm_demo/results.md", metadata={
        "help": "The table (and a .json beside it); results/vlm_demo.md is the file the README quotes."})


def main() -> None:
    parser = HiveArgumentParser(VLMDemoArguments, description=__doc__.split("\n\n")[0])
    with user_errors(parser.prog, parser.flag_names()):
        (args,) = parser.parse()
        encoders = demo_encoders(args.demo_dir)
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    data_dir = write_shapes_conversations(out / "shapes_llava", TRAIN_PICTURES, image_size=IMAGE_SIZE).parent
    commands, seconds, rows = {}, {}, {}
    for name, (folder, encoder) in RUNS.items():
        command = finetune_command(encoders[encoder], data_dir, out / folder, name)
        commands[name] = command_line(command)
        seconds[name] = run_step(command, args.threads)
        rows[name] = read_run(out / folder)
    blind = blind_prior([out / folder for folder, _ in RUNS.values()])
    rows[BLIND] = {"scores": {task: values["score"] for task, values in blind.items()}}

    first = next(iter(rows.values()))
    table = (f"One run per encoder (`--seed {EVAL_SEED}`), scored on {first['num_questions']} questions about "
             f"{EVAL_PICTURES} held-out pictures; loss: each stage's first -> last logged value; training: minutes of "
             "stages 1 + 2:\n\n" + vlm_table(rows))
    lmms_rows: dict[str, dict[str, Any]] = {}
    if importlib.util.find_spec("lmms_eval") is None:
        table += '\n\nlmms-eval is not installed (`pip install -e ".[lmms]"`): its scores are not reported.'
    else:
        lmms_rows, lmms_seconds = lmms_eval_rows(out, args.threads)
        seconds.update({f"{name}: lmms-eval": value for name, value in lmms_seconds.items()})
        ours = {name: rows[name] for name in RUNS}
        table += ("\n\nThe same checkpoints evaluated by lmms-eval (`--model llava_hf --force_simple`, its own tasks "
                  "on the same questions; in brackets: its answers equal to our pipeline's / to ours generated as "
                  "`llava_hf` feeds the model: the tokenizer's BOS first, the image as is, one question at a time), "
                  "and our metrics on its answers:\n\n" + lmms_table(ours, lmms_rows))
    data = {"rows": rows, "blind_question_prior": blind, "lmms_eval": lmms_rows, "commands": commands,
            "wall_seconds": seconds, "conversations": {"pictures": TRAIN_PICTURES, "image_size": IMAGE_SIZE}}
    path = write_results(args.results_file, table, data, seeds=[EVAL_SEED], threads=args.threads)
    print(f"\n{table}\n\nwritten to {path} ({sum(seconds.values()) / 60:.1f} min)")


if __name__ == "__main__":
    main()
