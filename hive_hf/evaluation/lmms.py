"""The fine-tuned VLM evaluated by lmms-eval itself (HIVE, arXiv 2604.00086, Table 2 comes from lmms-eval).

:func:`write_lmms_tasks` writes a folder lmms-eval reads with `--include_path`: four task files that are lmms-eval's own
`mme`, `gqa`, `ok_vqa_val2014` and `scienceqa` tasks (the same prompt kwargs, generation kwargs, metrics, and its own
`doc_to_text` / `process_results` functions, imported from `lmms_eval.tasks.*.utils`), renamed `hive_*` and pointed at
local parquet files in the layout of lmms-lab's Hub copies, written from any records of :mod:`hive_hf.data.vqa`
(the demo's shapes questions, or a real benchmark read by its loader). `tests/test_lmms.py` checks the task files
against the installed lmms-eval's. Two changes, both about where the data are:

- `dataset_path: parquet` with `data_files` beside the task file instead of the Hub id;
- GQA: the images are a column of the local file, so lmms-eval's `gqa_process_docs` (which joins them from the Hub's
  `testdev_balanced_images` configuration) is left out; its visual function converts them to RGB as before.

:func:`lmms_eval_command` is the command line (`python -m lmms_eval --model llava_hf ...`) for a run's LLaVA folder and
:func:`read_lmms_results` reads back its scores (as percentages, MME as perception + cognition, our tables' units)
and the answers it generated, which `score_predictions` then scores with our metrics.

lmms-eval is an optional extra (`pip install -e ".[lmms]"`): nothing here imports it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from ..data.vqa import POST_PROMPTS, TASK_METRICS, training_answer

__all__ = ["LMMS_TASKS", "LmmsTask", "lmms_eval_command", "read_lmms_results", "write_lmms_tasks"]


@dataclass(frozen=True)
class LmmsTask:
    """One lmms-eval task as we write it: our task key's local copy of lmms-eval task `source`."""

    name: str  # the local task's name (`--tasks`)
    source: str  # the lmms-eval task it copies
    module: str  # lmms_eval.tasks.<module>.utils holds its functions
    split: str  # lmms-lab's split name, kept
    config: dict[str, Any] = field(default_factory=dict)  # the task file's keys, functions as "!function name"
    metrics: tuple[str, ...] = ()  # lmms-eval's result keys that make our headline score


_GREEDY_16 = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
_EXACT_MATCH = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                "ignore_punctuation": True}


def _prompts(task: str, **extra: Any) -> dict[str, Any]:
    return {"default": {**extra, "pre_prompt": "", "post_prompt": POST_PROMPTS[task]}}


# Our task key (`TASK_METRICS`) -> its lmms-eval task, copied from lmms-eval 0.7.3 (`lmms_eval/tasks/<module>/*.yaml`;
# `lmms_eval_specific_kwargs` keeps the `default` entry, the one `llava_hf` reads).
LMMS_TASKS: dict[str, LmmsTask] = {
    "mme": LmmsTask("hive_mme", "mme", "mme", "test", {
        "output_type": "generate_until", "doc_to_visual": "!function mme_doc_to_visual",
        "doc_to_text": "!function mme_doc_to_text", "doc_to_target": "answer", "generation_kwargs": _GREEDY_16,
        "process_results": "!function mme_process_results",
        "metric_list": [{"metric": f"mme_{part}_score", "aggregation": "!function mme_aggregate_results",
                         "higher_is_better": True} for part in ("perception", "cognition")],
        "lmms_eval_specific_kwargs": _prompts("mme"),
    }, ("mme_perception_score", "mme_cognition_score")),
    "gqa": LmmsTask("hive_gqa", "gqa", "gqa", "testdev", {
        "output_type": "generate_until", "doc_to_visual": "!function gqa_doc_to_visual",
        "doc_to_text": "!function gqa_doc_to_text", "doc_to_target": "answer", "generation_kwargs": _GREEDY_16,
        "metric_list": [_EXACT_MATCH], "lmms_eval_specific_kwargs": _prompts("gqa"),
    }, ("exact_match",)),
    "vqa": LmmsTask("hive_ok_vqa", "ok_vqa_val2014", "ok_vqa", "val2014", {
        "output_type": "generate_until", "doc_to_visual": "!function ok_vqa_doc_to_visual",
        "doc_to_text": "!function ok_vqa_doc_to_text", "doc_to_target": "answer",
        "generation_kwargs": {"until": ["ASSISTANT:"]},
        "metric_list": [_EXACT_MATCH, {"metric": "submission", "aggregation": "!function ok_vqa_aggregate_submissions",
                                       "higher_is_better": True}],
        "process_results": "!function ok_vqa_process_results", "lmms_eval_specific_kwargs": _prompts("vqa"),
    }, ("exact_match",)),
    "scienceqa": LmmsTask("hive_scienceqa", "scienceqa", "scienceqa", "test", {
        "output_type": "generate_until", "doc_to_visual": "!function sqa_doc_to_visual",
        "doc_to_text": "!function sqa_doc_to_text", "doc_to_target": "!function sqa_doc_to_target",
        "generation_kwargs": {"max_new_tokens": 16, "temperature": 0, "do_sample": False},
        "metric_list": [_EXACT_MATCH], "process_results": "!function sqa_process_results",
        "lmms_eval_specific_kwargs": _prompts("scienceqa", format="default"),
        "model_specific_generation_kwargs": {"llava": {"image_aspect_ratio": "original"}},
    }, ("exact_match",)),
}


# -- the data, in lmms-lab's layout ------------------------------------------------------------------------------------
def _image(image: dict[str, Any] | None) -> dict[str, Any] | None:
    """An image cell with its bytes, so the parquet file holds the picture and not a path."""
    if image is None or image.get("bytes") is not None:
        return image
    return {"bytes": Path(image["path"]).read_bytes(), "path": None}


def _lmms_row(task: str, record: dict[str, Any]) -> dict[str, Any]:
    """A record (`VQA_FEATURES`) as a row of the lmms-lab dataset lmms-eval reads for `task`."""
    image = _image(record["image"])
    if task == "mme":  # lmms-lab/MME: `question_id` is the image path the two questions of a picture share
        return {"question_id": record["image_id"], "image": image, "question": record["question"],
                "answer": record["answers"][0], "category": record["category"]}
    if task == "gqa":  # testdev_balanced_instructions, with the image its process_docs would join
        return {"id": record["question_id"], "imageId": record["image_id"], "image": image,
                "question": record["question"], "answer": record["answers"][0]}
    if task == "vqa":  # lmms-lab/OK-VQA
        return {"question_id": record["question_id"], "image": image, "question": record["question"],
                "answers": record["answers"], "answer": training_answer(record)}
    # lmms-lab/ScienceQA: our loader put the hint in the question ("Context: ...\n"), so the hint is left empty
    return {"image": image, "question": record["question"], "choices": record["choices"],
            "answer": record["answer_index"], "hint": ""}


class _Dumper(yaml.SafeDumper):
    """Strings with a newline in double quotes, as lmms-eval's files write the post-prompts (`"\\nAnswer ..."`)."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None))


def _render_yaml(spec: LmmsTask, data_file: str) -> str:
    """The task file: lmms-eval's keys with our name and data; `!function` tags name lmms-eval's own functions."""
    config = {"task": spec.name, "dataset_path": "parquet", "dataset_kwargs": {"data_files": {spec.split: data_file}},
              "test_split": spec.split, **spec.config}
    text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=1000)  # the tags are written unquoted below
    return re.sub(r"'!function (\w+)'", rf"!function lmms_eval.tasks.{spec.module}.utils.\1", text)


def write_lmms_tasks(dataset: datasets.Dataset, folder: str | Path) -> dict[str, str]:
    """Write lmms-eval task files and their data for the tasks present in `dataset` (`VQA_FEATURES` records):
    `folder/<name>.yaml` and `folder/data/<name>.parquet`, the records in their order. Returns `{our task: lmms-eval
    task name}`; pass `folder` to lmms-eval as `--include_path`."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    records = dataset.to_list()
    written = {}
    for task, spec in LMMS_TASKS.items():
        rows = [_lmms_row(task, r) for r in records if r["task"] == task]
        if not rows:
            continue
        table = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
        table.to_parquet(str(folder / "data" / f"{spec.name}.parquet"))
        (folder / f"{spec.name}.yaml").write_text(_render_yaml(spec, f"data/{spec.name}.parquet"))
        written[task] = spec.name
    unknown = set(dataset["task"]) - set(TASK_METRICS)
    if unknown:
        raise ValueError(f"Records of tasks {sorted(unknown)} have no lmms-eval task; use {sorted(LMMS_TASKS)}.")
    return written


# -- running lmms-eval and reading its results -------------------------------------------------------------------------
def lmms_eval_command(model_dir: str | Path, tasks_dir: str | Path, output_dir: str | Path, tasks: list[str],
                      device: str = "cpu", limit: int | None = None, python: str | None = None) -> list[str]:
    """`python -m lmms_eval --model llava_hf ...` on a LLaVA folder (a VLM run's `stage<k>`), the tasks of
    `tasks_dir` (`write_lmms_tasks`), answers logged to `output_dir`. Batch size 1, as `llava_hf` requires."""
    command = [python or sys.executable, "-m", "lmms_eval", "--model", "llava_hf", "--force_simple",
               "--model_args", f"pretrained={model_dir},device={device},device_map={device}", "--tasks", ",".join(tasks),
               "--include_path", str(tasks_dir), "--batch_size", "1", "--log_samples",
               "--output_path", str(output_dir)]
    return command + (["--limit", str(limit)] if limit is not None else [])


def _latest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"No {pattern} under {folder}: did lmms-eval run with --output_path {folder}?")
    return found[-1]


def read_lmms_results(output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """lmms-eval's scores and answers from its newest run under `output_dir`: `{our task: {"score": headline in our
    tables' units (MME: perception + cognition; the others: %), "predictions": its answers in document order,
    "raw": lmms-eval's metric values}}` for the `hive_*` tasks present."""
    output_dir = Path(output_dir)
    results_file = _latest(output_dir, "*_results.json")
    results = json.loads(results_file.read_text())["results"]
    scores = {}
    for task, spec in LMMS_TASKS.items():
        if spec.name not in results:
            continue
        # MME reports no cognition score when the data hold no cognition subtask (the demo's)
        raw = {metric: results[spec.name][f"{metric},none"] for metric in spec.metrics
               if f"{metric},none" in results[spec.name]}
        score = sum(raw.values()) if task == "mme" else 100.0 * raw["exact_match"]
        samples = _latest(results_file.parent, f"*_samples_{spec.name}.jsonl")
        rows = sorted((json.loads(line) for line in samples.read_text().splitlines() if line.strip()),
                      key=lambda row: row["doc_id"])
        # lmms-eval strips an answer before scoring it, as `generate_answers` does
        predictions = [(row["filtered_resps"][0] if isinstance(row["filtered_resps"], list)
                        else row["filtered_resps"]).strip() for row in rows]
        scores[task] = {"score": float(score), "predictions": predictions, "raw": raw}
    return scores
