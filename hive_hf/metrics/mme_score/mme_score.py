"""MME benchmark score as an ``evaluate`` metric.

Official definition (Fu et al., 2023, "MME: A Comprehensive Evaluation Benchmark for Multimodal Large Language
Models"; ``eval_tool/calculation.py`` of https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models):
every image comes with two yes/no questions. For each subtask,

* ``acc``  = percentage of questions answered correctly;
* ``acc+`` = percentage of images whose *both* questions are answered correctly;
* subtask score = ``acc + acc+`` (maximum 200).

``perception`` is the sum over the ten perception subtasks (existence, count, position, color, posters, celebrity,
scene, landmark, artwork, OCR; maximum 2000), ``cognition`` the sum over the four cognition subtasks
(commonsense_reasoning, numerical_calculation, text_translation, code_reasoning; maximum 800), and ``total`` =
perception + cognition. Subtasks absent from the input contribute 0 to the sums and are not reported.

Prediction parsing (``parsing``). ``"official"`` (the default) is ``parse_pred_ans`` of the official tool, which
lmms-eval's ``mme`` task (the authors' evaluation) runs verbatim: lower-case, strip and delete every ``.``; then an
exact ``yes``/``no``; a single character ``y``/``n``; else the substring ``yes`` (then ``no``) in the first four
characters (so ``"not sure"``, ``"none"`` and ``"nope"`` are "no"); anything else is "other" and counts as wrong.
``"strict"`` needs the answer to *start* with the word ``yes`` or ``no`` (after leading whitespace/quotes/brackets),
e.g. ``"Yes."``, ``"yes, it is"``, ``"No, there is not."``; ``"not sure"``, ``"None"`` and ``"y"`` are "other".

Grouping: questions are grouped by ``(category, image_id)``. MME has exactly two questions per image and the official
tool asserts it, so a group of any other size raises a ``ValueError`` unless ``require_pairs=False`` (then ``acc+``
counts images whose questions are all correct). ``question_ids`` is accepted as an alias of ``image_ids``: in the
``lmms-lab/MME`` dataset the ``question_id`` column is the image path shared by the two questions of an image.

Category names are matched case-insensitively with spaces, hyphens or underscores (``"Commonsense Reasoning"``,
``"ocr"``) and reported under the official names. References must be "yes"/"no" (any case, optional trailing
period). An empty input list raises a ``ValueError``.

The script is self-contained (only the standard library, ``datasets`` and ``evaluate``) because ``evaluate.load``
copies this single file into its module cache.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

_DESCRIPTION = """
MME score: per subtask, acc (% of questions correct) + acc+ (% of images with both questions correct), maximum 200;
`perception` sums the 10 perception subtasks, `cognition` the 4 cognition subtasks and `total` both.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): model answers, parsed to yes/no (see `parsing`; "" = wrong).
    references (`list` of `str`): ground truth, "Yes" or "No" (case-insensitive).
    image_ids (`list` of `str`): identifier of the image each question is about; the two questions of an image share
        it. `question_ids=` is accepted as an alias (lmms-lab/MME's `question_id` column is the image path).
    categories (`list` of `str`): MME subtask of each question, e.g. "existence", "OCR", "commonsense reasoning"
        (case-insensitive; spaces, hyphens and underscores are interchangeable).
    parsing (`str`, defaults to `"official"`): `"official"`, the official tool's `parse_pred_ans` (as lmms-eval runs
        it: "yes"/"no" exactly, "y"/"n", else as a substring of the first 4 characters), or `"strict"` (the answer
        must start with the word yes or no).
    require_pairs (`bool`, defaults to `True`): raise unless every (category, image) has exactly 2 questions.
    return_details (`bool`, defaults to `False`): also return `details`, a dict per subtask with `acc`, `acc_plus`,
        `score`, `num_questions`, `num_images` and `num_other` (unparseable predictions).

Returns:
    `dict` with one score per subtask present (official names: existence, count, position, color, posters,
    celebrity, scene, landmark, artwork, OCR, commonsense_reasoning, numerical_calculation, text_translation,
    code_reasoning), plus `perception`, `cognition` and `total` (all `float`), and `details` if requested.

Raises:
    ValueError: on an empty input list, mismatched lengths, an unknown category, a reference that is not yes/no, or
        (with `require_pairs=True`) an image without exactly two questions.

Examples:
    >>> mme = evaluate.load(metric_path("mme_score"))
    >>> mme.compute(
    ...     predictions=["Yes.", "No", "yes", "yes"],
    ...     references=["Yes", "No", "Yes", "No"],
    ...     image_ids=["1.png", "1.png", "2.png", "2.png"],
    ...     categories=["existence"] * 4,
    ... )
    {'existence': 125.0, 'perception': 125.0, 'cognition': 0.0, 'total': 125.0}
"""

_CITATION = """
@article{fu2023mme,
  title={{MME}: A Comprehensive Evaluation Benchmark for Multimodal Large Language Models},
  author={Fu, Chaoyou and Chen, Peixian and Shen, Yunhang and Qin, Yulei and Zhang, Mengdan and Lin, Xu and
          Yang, Jinrui and Zheng, Xiawu and Li, Ke and Sun, Xing and Wu, Yunsheng and Ji, Rongrong},
  journal={arXiv preprint arXiv:2306.13394},
  year={2023}
}
"""

PERCEPTION_SUBTASKS: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION_SUBTASKS: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)  # fmt: skip
ALL_SUBTASKS: tuple[str, ...] = PERCEPTION_SUBTASKS + COGNITION_SUBTASKS

_SUBTASK_BY_KEY: dict[str, str] = {name.lower(): name for name in ALL_SUBTASKS}
_SEPARATORS_RE = re.compile(r"[\s\-_]+")
_YES_NO_RE = re.compile(r"^[\s\"'`*([{]*(yes|no)\b")

YES, NO, OTHER = "yes", "no", "other"
PARSINGS: tuple[str, ...] = ("official", "strict")


def canonical_subtask(name: str) -> str:
    """Map a category name given in any case / with spaces, hyphens or underscores to its official MME name."""
    key = _SEPARATORS_RE.sub("_", str(name).strip().lower())
    try:
        return _SUBTASK_BY_KEY[key]
    except KeyError:
        raise ValueError(
            f"mme_score: unknown MME category {name!r}. Valid categories (case-insensitive, spaces or underscores): "
            f"{', '.join(ALL_SUBTASKS)}."
        ) from None


def parse_answer(text: str | None, parsing: str = "official") -> str:
    """Map a free-form answer to ``"yes"``, ``"no"`` or ``"other"``.

    ``parsing="official"`` is ``parse_pred_ans`` of the official MME tool (and of lmms-eval's ``mme`` task);
    ``"strict"`` needs the answer to start with the word yes or no.
    """
    if parsing not in PARSINGS:
        raise ValueError(f"mme_score: `parsing` must be one of {PARSINGS}, got {parsing!r}.")
    if text is None:
        return OTHER
    if parsing == "official":
        text = text.lower().strip().replace(".", "")
        if text in (YES, NO):
            return text
        if len(text) == 1:
            return {"y": YES, "n": NO}.get(text, OTHER)
        prefix = text[:4]
        if YES in prefix:
            return YES
        if NO in prefix:
            return NO
        return OTHER
    match = _YES_NO_RE.match(text.lower())
    return match.group(1) if match else OTHER


def _parse_reference(text: str, index: int) -> str:
    label = str(text).strip().lower().rstrip(".")
    if label not in (YES, NO):
        raise ValueError(f"mme_score: reference {index} is {text!r}; MME references must be 'Yes' or 'No'.")
    return label


def _check_inputs(metric: str, **columns: Sequence) -> int:
    """Validate that the input columns are non-empty and of equal length; return that length."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{metric}: all inputs must have the same length, got {lengths}.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(
            f"{metric}: got 0 examples. Pass at least one prediction/reference pair (an empty evaluation has no "
            "meaningful score, so this metric refuses to return one)."
        )
    return n


def _rename_question_ids(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Accept ``question_ids`` as an alias of the ``image_ids`` input."""
    if "question_ids" in kwargs:
        if kwargs.get("image_ids") is not None:
            raise ValueError("mme_score: pass either `image_ids` or its alias `question_ids`, not both.")
        kwargs["image_ids"] = kwargs.pop("question_ids")
    return kwargs


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MmeScore(evaluate.Metric):
    """MME perception / cognition scores (acc + acc+ per subtask)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "image_ids": datasets.Value("string"),
                    "categories": datasets.Value("string"),
                }
            ),
            codebase_urls=["https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"],
            reference_urls=["https://arxiv.org/abs/2306.13394"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs) -> dict[str, Any] | None:
        """Compute the MME scores (``question_ids`` is accepted as an alias of ``image_ids``).

        Inputs and options:
        """
        # ``evaluate.EvaluationModule.__init__`` appends ``inputs_description`` to this docstring, so it must exist.
        return super().compute(predictions=predictions, references=references, **_rename_question_ids(kwargs))

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of questions (``question_ids`` is accepted as an alias of ``image_ids``)."""
        super().add_batch(predictions=predictions, references=references, **_rename_question_ids(kwargs))

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Add one question (``question_ids`` is accepted as an alias of ``image_ids``)."""
        super().add(prediction=prediction, reference=reference, **_rename_question_ids(kwargs))

    def _compute(
        self,
        predictions: Sequence[str | None],
        references: Sequence[str],
        image_ids: Sequence[str],
        categories: Sequence[str],
        parsing: str = "official",
        require_pairs: bool = True,
        return_details: bool = False,
    ) -> dict[str, Any]:
        if parsing not in PARSINGS:
            raise ValueError(f"mme_score: `parsing` must be one of {PARSINGS}, got {parsing!r}.")
        _check_inputs(
            "mme_score", predictions=predictions, references=references, image_ids=image_ids, categories=categories
        )
        # subtask -> image id -> list of (parsed prediction, reference)
        groups: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
        for i, (prediction, reference, image_id, category) in enumerate(
            zip(predictions, references, image_ids, categories)
        ):
            if image_id is None:
                raise ValueError(f"mme_score: image id of question {i} is missing.")
            subtask = canonical_subtask(category)
            groups[subtask][image_id].append(
                (parse_answer(prediction, parsing), _parse_reference(reference, i))
            )

        result: dict[str, Any] = {}
        details: dict[str, dict[str, float | int]] = {}
        for subtask in ALL_SUBTASKS:
            if subtask not in groups:
                continue
            images = groups[subtask]
            if require_pairs:
                bad = {image: len(items) for image, items in images.items() if len(items) != 2}
                if bad:
                    example = dict(list(bad.items())[:5])
                    raise ValueError(
                        f"mme_score: MME has exactly 2 questions per image, but in subtask {subtask!r} "
                        f"{len(bad)} image(s) have another count (e.g. {example}). Check that `image_ids` identify "
                        "images rather than questions, or pass require_pairs=False to score a partial run."
                    )
            num_questions = sum(len(items) for items in images.values())
            num_correct = sum(pred == ref for items in images.values() for pred, ref in items)
            num_images_correct = sum(all(pred == ref for pred, ref in items) for items in images.values())
            num_other = sum(pred == OTHER for items in images.values() for pred, _ in items)
            acc = 100.0 * num_correct / num_questions
            acc_plus = 100.0 * num_images_correct / len(images)
            result[subtask] = acc + acc_plus
            details[subtask] = {
                "acc": acc,
                "acc_plus": acc_plus,
                "score": acc + acc_plus,
                "num_questions": num_questions,
                "num_images": len(images),
                "num_other": num_other,
            }

        result["perception"] = float(sum(result.get(name, 0.0) for name in PERCEPTION_SUBTASKS))
        result["cognition"] = float(sum(result.get(name, 0.0) for name in COGNITION_SUBTASKS))
        result["total"] = result["perception"] + result["cognition"]
        if return_details:
            result["details"] = details
        return result
