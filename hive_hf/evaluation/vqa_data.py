"""VQA-style data for LLaVA fine-tuning and the paper's VLM benchmarks (HIVE, arXiv 2604.00086, Table 2).

Every loader returns one `datasets.Dataset` layout, :data:`VQA_FEATURES`:

| column | meaning |
|---|---|
| `question_id` | unique id of the question |
| `image` | `Image(decode=False)`: `{"bytes", "path"}`, decoded (and skipped if bad) by `hive_hf.data.decode_image` |
| `image_id` | the image the question is about (MME pairs two questions per image) |
| `question` | the question text (ScienceQA: with its "Context:" hint) |
| `answers` | reference answers: one (GQA, MME, ScienceQA's correct option) or several (OK-VQA's ten) |
| `choices` | option texts of a multiple-choice question, else empty |
| `answer_index` | index of the correct option in `choices`, else -1 |
| `category` | MME subtask (e.g. `existence`), else empty |
| `task` | how a prediction is scored: `gqa`, `vqa`, `scienceqa` or `mme` (see :data:`TASK_METRICS`) |

Adapters read the benchmarks' published files, so a user who has them locally points a script at them:

- GQA: a questions json keyed by question id with `imageId`, `question`, `answer` (`testdev_balanced_questions.json`)
  and the image folder (`<imageId>.jpg`).
- OK-VQA: VQA-v2 style `OpenEnded_mscoco_val2014_questions.json` + `mscoco_val2014_annotations.json` (ten answers per
  question) and the COCO image folder (`COCO_val2014_<id:012d>.jpg` or `<id:012d>.jpg`).
- ScienceQA: `problems.json` keyed by problem id with `question`, `choices`, `answer` (index), `hint`, `image`, `split`;
  only problems with an image are kept; images at `<image_dir>/<split>/<pid>/image.png` (or `<image_dir>/<pid>/...`).
- MME: the `lmms-lab/MME` parquet layout (`question_id` = image path shared by the image's two questions, `image`,
  `question`, `answer` yes/no, `category`).
- Any other records: local JSON / JSONL or a `datasets` name with `image`, `question`, `answers` (or `answer`),
  optional `choices`, `category`, `question_id`, `image_id`, `task` (:func:`load_vqa_records`).

The embedded default, :func:`make_shapes_vqa_dataset`, asks questions about the synthetic shapes of
`hive_hf.data.make_shapes_dataset` in all four scoring styles, so the whole pipeline runs with no download.
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers.utils import logging

from ..data.synthetic import COLORS, NUMBER_WORDS, POSITIONS, SHAPES, make_shapes_dataset

logger = logging.get_logger(__name__)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_PROMPT_TEMPLATE",
    "MULTIPLE_CHOICE_INSTRUCTION",
    "OPTION_LETTERS",
    "TASK_METRICS",
    "VQA_FEATURES",
    "build_prompt",
    "format_question",
    "load_gqa",
    "load_mme",
    "load_okvqa",
    "load_scienceqa",
    "load_vqa_benchmark",
    "load_vqa_records",
    "make_shapes_vqa_dataset",
    "training_answer",
    "training_texts",
]

VQA_FEATURES = datasets.Features({
    "question_id": datasets.Value("string"),
    "image": datasets.Image(decode=False),
    "image_id": datasets.Value("string"),
    "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")),
    "choices": datasets.List(datasets.Value("string")),
    "answer_index": datasets.Value("int64"),
    "category": datasets.Value("string"),
    "task": datasets.Value("string"),
})

# Scoring of each task: the `hive_hf.metrics` module that computes it and the result key the tables report.
TASK_METRICS: dict[str, tuple[str, str]] = {
    "mme": ("mme_score", "total"),
    "gqa": ("gqa_accuracy", "gqa_accuracy"),
    "vqa": ("vqa_accuracy", "vqa_accuracy"),
    "scienceqa": ("scienceqa_accuracy", "scienceqa_accuracy"),
}
BENCHMARKS = ("shapes", "gqa", "okvqa", "scienceqa", "mme", "records")

# LLaVA's chat-free short-answer format; the image token is expanded to one token per patch by the processor.
DEFAULT_PROMPT_TEMPLATE = "<image>\nQuestion: {question}\nAnswer:"
# LLaVA's ScienceQA instruction (llava/eval/model_vqa_science.py).
MULTIPLE_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MME_SUFFIX = " Please answer yes or no."
OPTION_LETTERS = "ABCDEFGHIJ"


# -- prompts and targets ----------------------------------------------------------------------------------------------
def format_question(record: dict[str, Any]) -> str:
    """The question as the model sees it; multiple choice appends `A. ...` lines and the letter instruction."""
    choices = record.get("choices") or []
    if not choices:
        return record["question"]
    options = "\n".join(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{record['question']}\n{options}\n{MULTIPLE_CHOICE_INSTRUCTION}"


def build_prompt(record: dict[str, Any], template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """`template` filled with :func:`format_question`; it must hold one `{question}` and one image token."""
    return template.format(question=format_question(record))


def training_answer(record: dict[str, Any]) -> str:
    """The short answer trained on: the option letter for multiple choice, else the most frequent reference (ties go
    to the first given, so OK-VQA's ten answers yield their majority and GQA its single answer)."""
    if record.get("choices"):
        return OPTION_LETTERS[record["answer_index"]]
    answers = [a for a in record["answers"] if a and a.strip()]
    if not answers:
        raise ValueError(f"Question {record.get('question_id')!r} has no non-empty reference answer to train on.")
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


def training_texts(dataset: datasets.Dataset, template: str = DEFAULT_PROMPT_TEMPLATE,
                   image_token: str = "<image>") -> list[str]:
    """`prompt answer` for every record, without the image token: the text a word-level tokenizer for a tiny LLM
    (`hive_hf.tiny_backbones.write_tiny_backbones`) is built and pre-trained on."""
    return [f"{build_prompt(r, template).replace(image_token, ' ').strip()} {training_answer(r)}"
            for r in dataset.remove_columns("image")]


# -- building the dataset ---------------------------------------------------------------------------------------------
def _record(question_id: Any, image: Any, question: str, answers: Iterable[str], image_id: Any = None,
            choices: Iterable[str] = (), answer_index: int = -1, category: str = "", task: str | None = None
            ) -> dict[str, Any]:
    answers, choices = [str(a) for a in answers], [str(c) for c in choices]
    if task is None:  # generic records: multiple choice, several human answers, or exact match
        task = "scienceqa" if choices else "vqa" if len(answers) >= 2 else "gqa"
    if task not in TASK_METRICS:
        raise ValueError(f"Unknown task {task!r} for question {question_id!r}; use one of {sorted(TASK_METRICS)}.")
    if choices and not 0 <= answer_index < len(choices):
        raise ValueError(f"Question {question_id!r}: answer index {answer_index} is not one of its {len(choices)} "
                         "choices (0-based).")
    if len(choices) > len(OPTION_LETTERS):
        raise ValueError(f"Question {question_id!r} has {len(choices)} choices; at most {len(OPTION_LETTERS)}.")
    if isinstance(image, (str, os.PathLike)):
        image = {"bytes": None, "path": os.fspath(image)}
    if image_id is None:
        image_id = image.get("path") if isinstance(image, dict) and image.get("path") else question_id
    return {
        "question_id": str(question_id), "image": image, "image_id": str(image_id), "question": str(question),
        "answers": answers, "choices": choices, "answer_index": int(answer_index), "category": str(category or ""),
        "task": task,
    }


def _to_dataset(records: list[dict[str, Any]], source: str) -> datasets.Dataset:
    if not records:
        raise ValueError(f"{source} holds no usable question.")
    columns = {name: [r[name] for r in records] for name in VQA_FEATURES}
    return datasets.Dataset.from_dict(columns, features=VQA_FEATURES)


def _check_images_exist(paths: list[str], flag: str) -> None:
    missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) not found, e.g. {missing[0]!r}; check {flag} (an evaluation with missing "
            "images would score a different question set)."
        )


def _read_json(path: str | os.PathLike, flag: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r} is not a file.")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


# -- the embedded default ---------------------------------------------------------------------------------------------
_MME_QUESTIONS = {
    "existence": "Is there a {} in the image?",
    "count": "Is the number of shapes {}?",
    "position": "Are the shapes in the {}?",
    "color": "Are the shapes {}?",
}
_MME_CATEGORIES = tuple(_MME_QUESTIONS)


def _other(options: Iterable[str], true: str, rng: np.random.Generator) -> str:
    others = [o for o in options if o != true]
    return others[int(rng.integers(len(others)))]


def _shapes_questions(row: dict[str, Any], i: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The five questions about picture `i` of the shapes set: `{"kind", "question", "answers", ...}`."""
    shape, color, count, position = row["shape"], row["color"], row["count"], row["position"]
    kind, question, answer = [
        ("color", "What color are the shapes?", color),
        ("shape", "What shape is in the image?", shape),
        ("position", "Where are the shapes?", position),
    ][i % 3]
    questions = [
        {"kind": kind, "question": question, "answers": [answer], "task": "gqa"},
        {"kind": "count", "question": "How many shapes are there?",
         "answers": [NUMBER_WORDS[count]] * 6 + [str(count)] * 4, "task": "vqa"},
    ]
    category = _MME_CATEGORIES[i % len(_MME_CATEGORIES)]
    truth, vocabulary = {
        "existence": (shape, SHAPES), "count": (NUMBER_WORDS[count], tuple(NUMBER_WORDS.values())),
        "position": (position, tuple(POSITIONS)), "color": (color, tuple(COLORS)),
    }[category]
    pair = [("yes", truth), ("no", _other(vocabulary, truth, rng))]
    for k in rng.permutation(2):  # which of the pair comes first is random too
        answer, subject = pair[k]
        questions.append({"kind": f"mme-{answer}", "question": _MME_QUESTIONS[category].format(subject) + MME_SUFFIX,
                          "answers": [answer], "category": category, "task": "mme"})
    vocabulary, truth, question = (
        (SHAPES, shape, "Which shape is in the image?") if i % 2 == 0
        else (tuple(COLORS), color, "Which color are the shapes?")
    )
    options = [truth] + [str(o) for o in rng.choice([o for o in vocabulary if o != truth], size=2, replace=False)]
    choices = [options[j] for j in rng.permutation(len(options))]
    questions.append({"kind": "choice", "question": question, "answers": [truth], "choices": choices,
                      "answer_index": choices.index(truth), "task": "scienceqa"})
    return questions


def make_shapes_vqa_dataset(
    num_images: int = 400, image_size: int = 32, seed: int = 0, split: str = "train"
) -> datasets.Dataset:
    """VQA on the synthetic shapes, five questions per image, one scoring style each (no download):

    - `gqa` (exact match), cycling over "What color are the shapes?" -> "red", "What shape is in the image?" ->
      "circle", "Where are the shapes?" -> "top left";
    - `vqa` (soft accuracy over ten answers): "How many shapes are there?" -> six "two" and four "2";
    - `mme`: a yes/no pair about the image, the subtask cycling over existence, count, position and color;
    - `scienceqa` (multiple choice, three options): the shape or the colour.

    Deterministic in `(num_images, image_size, seed, split)`; rows of a smaller set are a prefix of a larger one.
    """
    pictures = make_shapes_dataset(num_images, image_size=image_size, seed=seed, split=split)
    pictures = pictures.cast_column("image", datasets.Image(decode=False))
    records = []
    for i, row in enumerate(pictures):
        # Its own stream per picture, separate from the one that drew it.
        rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8")), i, 1]))
        image_id = f"shapes-{split}-{i}"
        for q in _shapes_questions(row, i, rng):
            kind = q.pop("kind")
            records.append(_record(f"{image_id}-{kind}", row["image"], image_id=image_id, **q))
    return _to_dataset(records, "the synthetic shapes")


# -- published benchmark layouts --------------------------------------------------------------------------------------
def load_gqa(questions_file: str | os.PathLike, image_dir: str | os.PathLike) -> datasets.Dataset:
    """GQA: `{question_id: {"imageId", "question", "answer", ...}}` and `<image_dir>/<imageId>.jpg`; exact match."""
    questions = _read_json(questions_file, "--questions_file")
    if not isinstance(questions, dict):
        raise ValueError(f"GQA questions file {questions_file} must map question ids to questions.")
    records, paths = [], []
    for qid, q in questions.items():
        missing = [k for k in ("imageId", "question", "answer") if k not in q]
        if missing:
            raise ValueError(f"GQA question {qid!r} lacks {missing}; is {questions_file} a GQA questions file?")
        path = os.path.join(image_dir, f"{q['imageId']}.jpg")
        paths.append(path)
        records.append(_record(qid, path, q["question"], [q["answer"]], image_id=q["imageId"], task="gqa"))
    _check_images_exist(paths, "--image_dir")
    return _to_dataset(records, str(questions_file))


def _coco_image(image_dir: str | os.PathLike, image_id: int, subtype: str | None) -> str:
    names = [f"COCO_{subtype}_{image_id:012d}.jpg"] if subtype else []
    names.append(f"{image_id:012d}.jpg")  # COCO 2017 naming
    candidates = [os.path.join(image_dir, n) for n in names]
    if subtype:
        candidates += [os.path.join(image_dir, subtype, n) for n in names]
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


def load_okvqa(
    questions_file: str | os.PathLike, annotations_file: str | os.PathLike, image_dir: str | os.PathLike
) -> datasets.Dataset:
    """OK-VQA (VQA-v2 layout): `{"questions": [{"question_id", "image_id", "question"}], "data_subtype"}` and
    `{"annotations": [{"question_id", "answers": [{"answer"}, ...]}]}`; scored with VQA soft accuracy."""
    questions = _read_json(questions_file, "--questions_file")
    annotations = _read_json(annotations_file, "--annotations_file")
    if "questions" not in questions or "annotations" not in annotations:
        raise ValueError("OK-VQA needs the VQA-v2 style questions json ({'questions': [...]}) as --questions_file and "
                         "the annotations json ({'annotations': [...]}) as --annotations_file.")
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations["annotations"]}
    subtype = questions.get("data_subtype")
    records, paths = [], []
    for q in questions["questions"]:
        if q["question_id"] not in answers:
            raise ValueError(f"OK-VQA question {q['question_id']} has no entry in {annotations_file}.")
        path = _coco_image(image_dir, int(q["image_id"]), subtype)
        paths.append(path)
        records.append(_record(q["question_id"], path, q["question"], answers[q["question_id"]],
                               image_id=q["image_id"], task="vqa"))
    _check_images_exist(paths, "--image_dir")
    return _to_dataset(records, str(questions_file))


def load_scienceqa(
    problems_file: str | os.PathLike, image_dir: str | os.PathLike, split: str = "test"
) -> datasets.Dataset:
    """ScienceQA `problems.json`: the problems of `split` that have an image (the IMG subset the VLM papers report),
    with the hint as "Context:" (LLaVA's format); multiple choice scored by option letter."""
    problems = _read_json(problems_file, "--questions_file")
    if not isinstance(problems, dict):
        raise ValueError(f"ScienceQA problems file {problems_file} must map problem ids to problems.")
    records, paths = [], []
    for pid, p in problems.items():
        if p.get("split", split) != split or not p.get("image"):
            continue
        candidates = [os.path.join(image_dir, split, pid, p["image"]), os.path.join(image_dir, pid, p["image"])]
        path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        paths.append(path)
        hint = (p.get("hint") or "").strip()
        question = f"Context: {hint}\n{p['question']}" if hint else p["question"]
        records.append(_record(pid, path, question, [p["choices"][p["answer"]]], image_id=pid,
                               choices=p["choices"], answer_index=p["answer"], task="scienceqa"))
    _check_images_exist(paths, "--image_dir")
    return _to_dataset(records, f"{problems_file} (split {split!r}, problems with an image)")


def _load_parquet_or_dataset(source: str, split: str) -> datasets.Dataset:
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "dataset_info.json")):
        files = sorted(glob.glob(os.path.join(source, "**", "*.parquet"), recursive=True))
    elif source.endswith(".parquet") or any(c in source for c in "*?["):  # a file or a glob of them
        files = sorted(glob.glob(source))
    else:
        return datasets.load_dataset(source, split=split)  # a Hub id (lmms-lab/MME) or a datasets folder
    if not files:
        raise FileNotFoundError(f"No parquet file found at {source!r}.")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def load_mme(source: str, split: str = "test") -> datasets.Dataset:
    """MME in the `lmms-lab/MME` layout (parquet files, a folder of them, or the dataset id): columns `question_id`
    (the image path, shared by the image's two yes/no questions), `image`, `question`, `answer`, `category`."""
    table = _load_parquet_or_dataset(source, split)
    missing = {"question_id", "image", "question", "answer", "category"} - set(table.column_names)
    if missing:
        raise ValueError(f"MME source {source!r} lacks columns {sorted(missing)} (expected the lmms-lab/MME layout).")
    table = table.cast_column("image", datasets.Image(decode=False))
    seen: Counter[str] = Counter()
    records = []
    for row in table:
        seen[row["question_id"]] += 1
        qid = f"{row['question_id']}#{seen[row['question_id']]}"
        records.append(_record(qid, row["image"], row["question"], [row["answer"]], image_id=row["question_id"],
                               category=row["category"], task="mme"))
    return _to_dataset(records, source)


def _generic_answers(row: dict[str, Any], question_id: Any) -> tuple[list[str], int]:
    """(reference answers, option index or -1) of a generic record; a multiple-choice answer may be given as the
    option's index, its text or its letter, and is stored as the option's text."""
    choices = list(row.get("choices") or row.get("options") or [])
    raw = row.get("answers", row.get("answer"))
    answers = raw if isinstance(raw, list) else [raw]
    answers = [str(a["answer"] if isinstance(a, dict) else a) for a in answers if a is not None]
    if not choices:
        return answers, -1
    index = row.get("answer_index")
    if index is None or index < 0:
        first = raw if isinstance(raw, int) else (answers[0].strip() if answers else "")
        if isinstance(first, int):
            index = first
        elif first in choices:
            index = choices.index(first)
        elif len(first) == 1 and first.upper() in OPTION_LETTERS[: len(choices)]:
            index = OPTION_LETTERS.index(first.upper())
        else:
            raise ValueError(f"Question {question_id!r}: answer {first!r} is neither an option index, one of its "
                             f"choices {choices} nor an option letter.")
    if not 0 <= index < len(choices):
        raise ValueError(f"Question {question_id!r}: answer index {index} is not one of its {len(choices)} choices.")
    return [choices[index]], int(index)


def load_vqa_records(source: str, image_dir: str | os.PathLike | None = None, split: str = "train"
                     ) -> datasets.Dataset:
    """Generic VQA records from a local JSON (a list, or a dict keyed by question id) / JSONL file, or any
    `datasets.load_dataset` source. Fields: `image` (path, relative to `image_dir` if given, or an image),
    `question`, `answers` (strings or `{"answer": ...}`) or `answer` (a string, or an option index with `choices`),
    optional `choices`/`options`, `answer_index`, `category`, `question_id`/`id`, `image_id`, `task`."""
    if os.path.isfile(source):
        rows = _read_json(source, "--questions_file")
        if isinstance(rows, dict):
            rows = [{"question_id": k, **v} for k, v in rows.items()]
    else:
        table = datasets.load_dataset(source, split=split)
        if isinstance(table.features.get("image"), datasets.Image):
            table = table.cast_column("image", datasets.Image(decode=False))
        rows = list(table)
    records, paths = [], []
    for i, row in enumerate(rows):
        image = row.get("image")
        if isinstance(image, str) and image_dir is not None:
            image = os.path.join(image_dir, image)
        if isinstance(image, str):
            paths.append(image)
        question_id = row.get("question_id", row.get("id", i))
        answers, index = _generic_answers(row, question_id)
        records.append(_record(
            question_id, image, row["question"], answers, image_id=row.get("image_id"),
            choices=row.get("choices") or row.get("options") or [], answer_index=index,
            category=row.get("category", ""), task=row.get("task"),
        ))
    _check_images_exist(paths, "--image_dir")
    return _to_dataset(records, source)


def load_vqa_benchmark(
    benchmark: str,
    questions_file: str | None = None,
    annotations_file: str | None = None,
    image_dir: str | None = None,
    split: str | None = None,
    num_images: int = 400,
    image_size: int = 32,
    seed: int = 0,
) -> datasets.Dataset:
    """One of :data:`BENCHMARKS` in the :data:`VQA_FEATURES` layout. `shapes` is generated (`num_images`,
    `image_size`, `seed`, `split`); the others read `questions_file` (MME: its parquet source) and the files beside."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"--benchmark must be one of {BENCHMARKS}, got {benchmark!r}.")
    if benchmark == "shapes":
        return make_shapes_vqa_dataset(num_images, image_size=image_size, seed=seed, split=split or "validation")
    if questions_file is None:
        raise ValueError(f"--benchmark {benchmark} reads --questions_file; give its path.")
    needs_images = benchmark in ("gqa", "okvqa", "scienceqa")
    if needs_images and image_dir is None:
        raise ValueError(f"--benchmark {benchmark} needs --image_dir (the folder holding its images).")
    if benchmark == "okvqa" and annotations_file is None:
        raise ValueError("--benchmark okvqa needs --annotations_file (the VQA-v2 style annotations json).")
    if benchmark == "gqa":
        return load_gqa(questions_file, image_dir)
    if benchmark == "okvqa":
        return load_okvqa(questions_file, annotations_file, image_dir)
    if benchmark == "scienceqa":
        return load_scienceqa(questions_file, image_dir, split=split or "test")
    if benchmark == "mme":
        return load_mme(questions_file, split=split or "test")
    return load_vqa_records(questions_file, image_dir=image_dir, split=split or "train")
