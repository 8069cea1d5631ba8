"""VQA-style data for LLaVA fine-tuning and the paper's VLM benchmarks (HIVE, arXiv 2604.00086, Table 2).

Every loader returns one `datasets.Dataset` layout, :data:`VQA_FEATURES`:

| column | meaning |
|---|---|
| `question_id` | unique id of the question |
| `image` | `Image(decode=False)`: `{"bytes", "path"}`, decoded (and skipped if bad) by `hive_hf.data.decode_image`; None for a text-only question (ScienceQA-FULL has them) |
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
- ScienceQA: `problems.json` keyed by problem id with `question`, `choices`, `answer` (index), `hint`, `image`, `split`,
  images at `<image_dir>/<split>/<pid>/image.png` (or `<image_dir>/<pid>/...`); or the `lmms-lab/ScienceQA` parquet
  layout. By default every problem of the split (ScienceQA-FULL, text-only ones included: what lmms-eval's `scienceqa`
  task, and so the paper, scores); `subset="img"` keeps the problems with an image (ScienceQA-IMG).
- MME: the `lmms-lab/MME` parquet layout (`question_id` = image path shared by the image's two questions, `image`,
  `question`, `answer` yes/no, `category`).
- Any other records: local JSON / JSONL or a `datasets` name with `image`, `question`, `answers` (or `answer`),
  optional `choices`, `category`, `question_id`, `image_id`, `task` (:func:`load_vqa_records`).

The embedded default, :func:`make_shapes_vqa_dataset`, asks questions about the synthetic shapes of
`hive_hf.data.make_shapes_dataset` in all four scoring styles, so the whole pipeline runs with no download.

Prompts are lmms-eval's (its tasks' `default` prompt kwargs, which the HIVE authors' evaluation used):
:func:`task_prompt` adds the benchmark's post-prompt to the question, :func:`user_message` puts `<image>\n` first when
there is an image, and the LLM's chat template wraps it as the user turn.

Conversation data for fine-tuning (:data:`CONVERSATION_FEATURES`: `id`, `image`, `messages` with `role`/`content`
turns) comes from LLaVA-style JSON (`conversations` with `from`/`value` turns) or any dataset with a `messages` column
(:func:`load_conversations`); VQA records become one-question conversations with :func:`vqa_conversations`.
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
    "CONVERSATION_FEATURES",
    "IMAGE_TOKEN",
    "OPTION_LETTERS",
    "POST_PROMPTS",
    "SCIENCEQA_SUBSETS",
    "TASK_METRICS",
    "TRAIN_SOURCES",
    "VQA_FEATURES",
    "load_conversations",
    "load_gqa",
    "load_mme",
    "load_okvqa",
    "load_scienceqa",
    "load_vqa_benchmark",
    "load_vqa_records",
    "make_shapes_vqa_dataset",
    "task_prompt",
    "training_answer",
    "training_texts",
    "user_message",
    "vqa_conversations",
    "write_shapes_conversations",
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
# What a VLM can train on: any benchmark layout, or conversations (`load_conversations`).
TRAIN_SOURCES = (*BENCHMARKS, "conversations")
SCIENCEQA_SUBSETS = ("full", "img")

IMAGE_TOKEN = "<image>"
MME_SUFFIX = " Please answer yes or no."
OPTION_LETTERS = "ABCDEFGHIJ"
# lmms-eval's post-prompts per task (`lmms_eval/tasks/{mme,gqa,ok_vqa,scienceqa}/*.yaml`, `default` prompt kwargs).
# `vqa` (soft accuracy) is OK-VQA's: the paper's only benchmark scored that way.
SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
POST_PROMPTS: dict[str, str] = {
    "mme": SHORT_ANSWER_PROMPT,
    "gqa": SHORT_ANSWER_PROMPT,
    "vqa": "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT_ANSWER_PROMPT,
    "scienceqa": "\nAnswer with the option's letter from the given choices directly.",
}

CONVERSATION_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(decode=False),
    "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
})
# LLaVA's `from` names and the chat roles, as chat templates name them.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# -- prompts and targets ----------------------------------------------------------------------------------------------
def task_prompt(record: dict[str, Any]) -> str:
    """The question as lmms-eval asks it: MME without its " Please answer yes or no.", multiple choice with `A. ...`
    lines (after ScienceQA's "Context:" hint, which the loader puts in the question), then the task's post-prompt."""
    question = record["question"]
    if record["task"] == "mme":
        question = question.strip().replace(MME_SUFFIX, "")
    choices = record.get("choices") or []
    if choices:
        question += "\n" + "\n".join(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return question + POST_PROMPTS[record["task"]]


def user_message(record: dict[str, Any], image_token: str = IMAGE_TOKEN) -> str:
    """The user turn: `<image>\n` and :func:`task_prompt`, or the prompt alone for a text-only question."""
    prompt = task_prompt(record)
    return prompt if record.get("image") is None else f"{image_token}\n{prompt}"


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


def vqa_conversations(dataset: datasets.Dataset, image_token: str = IMAGE_TOKEN) -> datasets.Dataset:
    """VQA records (:data:`VQA_FEATURES`) as one-question conversations (:data:`CONVERSATION_FEATURES`): the user asks
    :func:`user_message`, the assistant answers :func:`training_answer`."""

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        return {"id": record["question_id"], "image": record["image"], "messages": [
            {"role": "user", "content": user_message(record, image_token)},
            {"role": "assistant", "content": training_answer(record)},
        ]}

    return dataset.map(convert, remove_columns=dataset.column_names, features=CONVERSATION_FEATURES)


def training_texts(dataset: datasets.Dataset, image_token: str = IMAGE_TOKEN) -> list[str]:
    """The text of every training example without the image token (VQA records: prompt and answer; conversations:
    every turn), and the benchmarks' post-prompts: what a word-level tokenizer for a tiny LLM
    (`hive_hf.tiny_backbones.write_tiny_backbones`) is built and pre-trained on."""
    rows = dataset.remove_columns("image")
    if "messages" in rows.column_names:
        texts = [" ".join(turn["content"] for turn in row["messages"]) for row in rows]
    else:
        texts = [f"{task_prompt(r)} {training_answer(r)}" for r in rows]
    return [text.replace(image_token, " ").strip() for text in texts] + list(dict.fromkeys(POST_PROMPTS.values()))


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


def _check_images_exist(paths: list[str], parameter: str) -> None:
    missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) not found, e.g. {missing[0]!r}; check `{parameter}` (an evaluation with "
            "missing images would score a different question set)."
        )


def _read_json(path: str | os.PathLike, parameter: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`{parameter}` {str(path)!r} is not a file.")
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


def write_shapes_conversations(folder: str | os.PathLike, num_images: int = 1000, image_size: int = 32, seed: int = 0,
                               split: str = "train") -> Path:
    """Write the shapes VQA (:func:`make_shapes_vqa_dataset`) as LLaVA fine-tuning data: `folder/images/<id>.png` and
    `folder/conversations.json`, one multi-turn conversation per picture, `from`/`value` turns: its five questions in
    a random order (seeded; so that a turn's position does not give its kind away), the first with `<image>`, as in
    LLaVA-1.5's mixture. Returns the JSON file's path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    questions = make_shapes_vqa_dataset(num_images, image_size=image_size, seed=seed, split=split)
    by_picture: dict[str, list[dict[str, Any]]] = {}
    for record in questions:
        by_picture.setdefault(record["image_id"], []).append(record)
    conversations = []
    for i, (image_id, records) in enumerate(by_picture.items()):
        (folder / "images" / f"{image_id}.png").write_bytes(records[0]["image"]["bytes"])
        order = np.random.default_rng([seed, i, 2]).permutation(len(records))
        turns = []
        for k, j in enumerate(order):
            asked = user_message(records[j]) if k == 0 else task_prompt(records[j])
            turns += [{"from": "human", "value": asked}, {"from": "gpt", "value": training_answer(records[j])}]
        conversations.append({"id": image_id, "image": f"{image_id}.png", "conversations": turns})
    path = folder / "conversations.json"
    path.write_text(json.dumps(conversations, indent=1))
    return path


# -- published benchmark layouts --------------------------------------------------------------------------------------
def load_gqa(questions_file: str | os.PathLike, image_dir: str | os.PathLike) -> datasets.Dataset:
    """GQA: `{question_id: {"imageId", "question", "answer", ...}}` and `<image_dir>/<imageId>.jpg`; exact match."""
    questions = _read_json(questions_file, "questions_file")
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
    _check_images_exist(paths, "image_dir")
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
    questions = _read_json(questions_file, "questions_file")
    annotations = _read_json(annotations_file, "annotations_file")
    if "questions" not in questions or "annotations" not in annotations:
        raise ValueError("OK-VQA needs the VQA-v2 style questions json ({'questions': [...]}) as `questions_file` and "
                         "the annotations json ({'annotations': [...]}) as `annotations_file`.")
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
    _check_images_exist(paths, "image_dir")
    return _to_dataset(records, str(questions_file))


def _scienceqa_question(hint: str | None, question: str) -> str:
    # lmms-eval's `sqa_doc_to_text`: a "Context:" line only for a non-empty hint
    return f"Context: {hint}\n{question}" if hint else question


def load_scienceqa(
    source: str | os.PathLike, image_dir: str | os.PathLike | None = None, split: str = "test", subset: str = "full"
) -> datasets.Dataset:
    """ScienceQA: `problems.json` (with `image_dir`) or the `lmms-lab/ScienceQA` parquet layout (files, a folder of
    them, or the dataset id), multiple choice scored by option letter, the hint as "Context:" (lmms-eval's format).

    `subset="full"` (the default) keeps every problem of `split`, text-only ones included (ScienceQA-FULL: what
    lmms-eval's `scienceqa` task scores, and so the paper's number); `"img"` only those with an image
    (ScienceQA-IMG, lmms-eval's `scienceqa_img`, what LLaVA papers usually report)."""
    if subset not in SCIENCEQA_SUBSETS:
        raise ValueError(f"`scienceqa_subset` must be one of {SCIENCEQA_SUBSETS}, got {subset!r}.")
    if str(source).endswith(".json"):
        if image_dir is None:
            raise ValueError("ScienceQA's problems.json needs `image_dir` (the folder holding its images).")
        return _scienceqa_problems(source, image_dir, split, subset)
    name = {"full": "ScienceQA-FULL", "img": "ScienceQA-IMG"}[subset]  # the Hub dataset's configurations
    table = _load_parquet_or_dataset(str(source), split, name=name)
    missing = {"image", "question", "choices", "answer", "hint"} - set(table.column_names)
    if missing:
        raise ValueError(f"ScienceQA source {source!r} lacks columns {sorted(missing)} (expected problems.json or the "
                         "lmms-lab/ScienceQA layout).")
    table = table.cast_column("image", datasets.Image(decode=False))
    records = [
        _record(f"{split}-{i}", row["image"], _scienceqa_question(row["hint"], row["question"]),
                [row["choices"][row["answer"]]], image_id=f"{split}-{i}", choices=row["choices"],
                answer_index=row["answer"], task="scienceqa")
        for i, row in enumerate(table) if subset == "full" or row["image"] is not None
    ]
    return _to_dataset(records, f"{source} ({subset} subset)")


def _scienceqa_problems(problems_file: str | os.PathLike, image_dir: str | os.PathLike, split: str, subset: str
                        ) -> datasets.Dataset:
    problems = _read_json(problems_file, "questions_file")
    if not isinstance(problems, dict):
        raise ValueError(f"ScienceQA problems file {problems_file} must map problem ids to problems.")
    records, paths = [], []
    for pid, p in problems.items():
        if p.get("split", split) != split or (subset == "img" and not p.get("image")):
            continue
        path = None
        if p.get("image"):
            candidates = [os.path.join(image_dir, split, pid, p["image"]), os.path.join(image_dir, pid, p["image"])]
            path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
            paths.append(path)
        records.append(_record(pid, path, _scienceqa_question(p.get("hint"), p["question"]),
                               [p["choices"][p["answer"]]], image_id=pid, choices=p["choices"],
                               answer_index=p["answer"], task="scienceqa"))
    _check_images_exist(paths, "image_dir")
    return _to_dataset(records, f"{problems_file} (split {split!r}, {subset} subset)")


def _load_parquet_or_dataset(source: str, split: str, name: str | None = None) -> datasets.Dataset:
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "dataset_info.json")):
        files = sorted(glob.glob(os.path.join(source, "**", "*.parquet"), recursive=True))
    elif source.endswith(".parquet") or any(c in source for c in "*?["):  # a file or a glob of them
        files = sorted(glob.glob(source))
    else:
        return datasets.load_dataset(source, name, split=split)  # a Hub id (lmms-lab/MME) or a datasets folder
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
        rows = _read_json(source, "questions_file")
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
    _check_images_exist(paths, "image_dir")
    return _to_dataset(records, source)


# -- conversations ----------------------------------------------------------------------------------------------------
def _turn_text(content: Any, image_token: str) -> str:
    """A turn's text: a string, or a list of typed parts (`{"type": "image"}`, `{"type": "text", "text": ...}`)."""
    if isinstance(content, str):
        return content
    parts = [image_token if part.get("type") == "image" else part.get("text", "") for part in content or []]
    return "\n".join(parts)


def _conversation_turns(row: dict[str, Any], has_image: bool, row_id: str, image_token: str) -> list[dict[str, str]]:
    """The `role`/`content` turns of a LLaVA (`conversations`: `from`/`value`) or chat (`messages`) row, with the image
    token where LLaVA puts it: at the start of the user turn holding it (of the first user turn if none does)."""
    raw = row.get("conversations") if row.get("conversations") is not None else row.get("messages")
    if not raw:
        raise ValueError(f"Conversation {row_id!r} has no `conversations` (LLaVA: from/value turns) or `messages` "
                         "(role/content turns).")
    turns = []
    for turn in raw:
        role = turn.get("from", turn.get("role"))
        if role not in _ROLES:
            raise ValueError(f"Conversation {row_id!r}: unknown speaker {role!r}; use one of {sorted(_ROLES)}.")
        turns.append({"role": _ROLES[role], "content": _turn_text(turn.get("value", turn.get("content")), image_token)})
    spoken = [t["role"] for t in turns if t["role"] != "system"]
    if not spoken or spoken[0] != "user" or "assistant" not in spoken:
        raise ValueError(f"Conversation {row_id!r} must start with a user turn and hold an assistant turn to learn "
                         f"from; its speakers are {spoken}.")
    holding = [i for i, t in enumerate(turns) if image_token in t["content"]]
    count = sum(t["content"].count(image_token) for t in turns)
    if count > 1 or (count and not has_image):
        raise ValueError(f"Conversation {row_id!r} holds {count} {image_token} placeholders for "
                         f"{int(has_image)} image; LLaVA fine-tuning takes at most one image per conversation.")
    if has_image:
        index = holding[0] if holding else next(i for i, t in enumerate(turns) if t["role"] == "user")
        if turns[index]["role"] != "user":
            raise ValueError(f"Conversation {row_id!r}: the image placeholder is in a {turns[index]['role']} turn; "
                             "it belongs to a user turn.")
        text = turns[index]["content"].replace(image_token, "").strip()
        turns[index]["content"] = f"{image_token}\n{text}"
    return turns


def _conversation_image(row: dict[str, Any], image_dir: str | os.PathLike | None, row_id: str) -> Any:
    image = row.get("image", row.get("images"))
    if isinstance(image, (list, tuple)):
        if len(image) > 1:
            raise ValueError(f"Conversation {row_id!r} has {len(image)} images; LLaVA fine-tuning takes one.")
        image = image[0] if image else None
    if isinstance(image, str):
        return {"bytes": None, "path": os.path.join(image_dir, image) if image_dir is not None else image}
    return image


def load_conversations(source: str, image_dir: str | os.PathLike | None = None, split: str = "train",
                       image_token: str = IMAGE_TOKEN) -> datasets.Dataset:
    """Conversations for VLM fine-tuning, in the :data:`CONVERSATION_FEATURES` layout.

    `source` is a LLaVA-style JSON / JSONL file (a list of `{"id", "image", "conversations": [{"from": "human" |
    "gpt" | "system", "value"}, ...]}`, image paths relative to `image_dir`), or a `datasets` source with a `messages`
    column (`{"role", "content"}` turns, content a string or a list of `{"type": "image" | "text"}` parts) and an
    `image` or `images` column. A row without an image is a text-only conversation. One `<image>` per conversation at
    most; without one, it goes before the first user turn's text, as LLaVA does.
    """
    if os.path.isfile(source):
        rows = _read_json(source, "source")
        if not isinstance(rows, list):
            raise ValueError(f"{source} must hold a list of conversations (LLaVA's format).")
    else:
        table = datasets.load_dataset(source, split=split)
        for column in ("image", "images"):
            feature = table.features.get(column)
            if isinstance(feature, datasets.Image):
                table = table.cast_column(column, datasets.Image(decode=False))
            elif isinstance(getattr(feature, "feature", None), datasets.Image):
                table = table.cast_column(column, datasets.List(datasets.Image(decode=False)))
        rows = list(table)
    records, paths = [], []
    for i, row in enumerate(rows):
        row_id = str(row.get("id", i))
        image = _conversation_image(row, image_dir, row_id)
        if isinstance(image, dict) and image.get("bytes") is None and image.get("path"):
            paths.append(image["path"])
        messages = _conversation_turns(row, image is not None, row_id, image_token)
        records.append({"id": row_id, "image": image, "messages": messages})
    _check_images_exist(paths, "image_dir")
    if not records:
        raise ValueError(f"{source} holds no conversation.")
    columns = {name: [r[name] for r in records] for name in CONVERSATION_FEATURES}
    return datasets.Dataset.from_dict(columns, features=CONVERSATION_FEATURES)


def check_benchmark_files(benchmark: str, questions_file: str | None = None, annotations_file: str | None = None,
                          image_dir: str | None = None, choices: tuple[str, ...] = BENCHMARKS) -> None:
    """The one rule of which files a benchmark (one of `choices`; conversations for training) reads: `ValueError`
    naming the parameter a benchmark needs and lacks. Nothing is opened."""
    if benchmark not in choices:
        raise ValueError(f"`benchmark` must be one of {choices}, got {benchmark!r}.")
    if benchmark == "shapes":
        return
    if questions_file is None:
        raise ValueError(f"`benchmark` {benchmark} reads `questions_file`; give its path.")
    needs_images = benchmark in ("gqa", "okvqa") or (benchmark == "scienceqa" and questions_file.endswith(".json"))
    if needs_images and image_dir is None:
        raise ValueError(f"`benchmark` {benchmark} needs `image_dir` (the folder holding its images).")
    if benchmark == "okvqa" and annotations_file is None:
        raise ValueError("`benchmark` okvqa needs `annotations_file` (the VQA-v2 style annotations json).")


def load_vqa_benchmark(
    benchmark: str,
    questions_file: str | None = None,
    annotations_file: str | None = None,
    image_dir: str | None = None,
    split: str | None = None,
    num_images: int = 400,
    image_size: int = 32,
    seed: int = 0,
    scienceqa_subset: str = "full",
) -> datasets.Dataset:
    """One of :data:`BENCHMARKS` in the :data:`VQA_FEATURES` layout. `shapes` is generated (`num_images`,
    `image_size`, `seed`, `split`); the others read `questions_file` (MME and ScienceQA: also their lmms-lab parquet
    source) and the files beside; ScienceQA keeps `scienceqa_subset` ("full" or "img")."""
    check_benchmark_files(benchmark, questions_file, annotations_file, image_dir)
    if benchmark == "shapes":
        return make_shapes_vqa_dataset(num_images, image_size=image_size, seed=seed, split=split or "validation")
    if benchmark == "gqa":
        return load_gqa(questions_file, image_dir)
    if benchmark == "okvqa":
        return load_okvqa(questions_file, annotations_file, image_dir)
    if benchmark == "scienceqa":
        return load_scienceqa(questions_file, image_dir, split=split or "test", subset=scienceqa_subset)
    if benchmark == "mme":
        return load_mme(questions_file, split=split or "test")
    return load_vqa_records(questions_file, image_dir=image_dir, split=split or "train")
