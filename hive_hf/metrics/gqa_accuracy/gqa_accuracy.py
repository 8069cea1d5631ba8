"""GQA accuracy as an ``evaluate`` metric.

Official definition (Hudson & Manning, 2019; ``eval.py`` of the GQA evaluation scripts,
https://cs.stanford.edu/people/dorarad/gqa/evaluate.html): a question is answered correctly when the predicted
answer equals the single ground-truth answer; accuracy is the percentage of correct questions.

The official script compares raw strings because it expects one of GQA's closed-vocabulary answers. Generative
models answer in free text ("Yes.", "The cat"), so the evaluation harnesses normalise first. ``normalization``
names how:

* ``"lmms_eval"`` (the default): lmms-eval's ``gqa`` task, which the HIVE authors ran (its ``exact_match`` with
  ``ignore_case`` and ``ignore_punctuation``): the prediction is stripped of surrounding whitespace, then both sides
  are lower-cased and every ``string.punctuation`` character is deleted wherever it is (``"t-shirt"`` ->
  ``"tshirt"``, ``"Yes."`` -> ``"yes"``). No article removal, no whitespace collapsing.
* ``"llava"``: the LLaVA-1.5 pipeline (``scripts/convert_gqa_for_eval.py`` then GQA's ``eval.py``): the stripped
  prediction loses its trailing periods (``rstrip(".")``) and is lower-cased; the reference is compared raw.
* ``"lenient"``: :func:`normalize_text` on both sides: lower-case, strip, strip trailing punctuation
  (``. , ! ? ; : ' "``) repeatedly, remove the articles ``a``, ``an``, ``the`` as whole words, collapse whitespace.

Edge cases: an empty prediction is always wrong; a reference that normalises to the empty string, and an empty input
list, raise a ``ValueError`` rather than produce a score. lmms-eval reports a fraction; this metric a percentage.

The script is self-contained (only the standard library, ``datasets`` and ``evaluate``) because ``evaluate.load``
copies this single file into its module cache. :func:`normalize_text` is duplicated verbatim in
``scienceqa_accuracy.py``; ``tests/test_metrics.py`` checks that the two copies agree.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

import datasets
import evaluate

_DESCRIPTION = """
GQA accuracy: exact match between the predicted answer and the ground-truth answer after normalisation (by default
lmms-eval's: lower-case, delete punctuation). Returned as a percentage.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one predicted answer per question; pass "" for a failed generation (wrong).
    references (`list` of `str`): the ground-truth answer of each question.
    normalization (`str`, defaults to `"lmms_eval"`): `"lmms_eval"` (lower-case, delete all punctuation),
        `"llava"` (prediction: strip, trailing periods off, lower-case; reference raw) or `"lenient"` (lower-case,
        trailing punctuation and articles off, whitespace collapsed).
    return_per_question (`bool`, defaults to `False`): also return a 0/1 correctness flag per question.

Returns:
    `dict` with `"gqa_accuracy"` (`float`, percentage of correct answers) and, if `return_per_question=True`,
    `"gqa_accuracy_per_question"` (`list` of `int`).

Raises:
    ValueError: on an empty input list, mismatched lengths, or a reference that is empty after normalisation.

Examples:
    >>> gqa = evaluate.load(metric_path("gqa_accuracy"))
    >>> gqa.compute(predictions=["Table.", "left"], references=["table", "right"])
    {'gqa_accuracy': 50.0}
"""

_CITATION = """
@inproceedings{hudson2019gqa,
  title={{GQA}: A New Dataset for Real-World Visual Reasoning and Compositional Question Answering},
  author={Hudson, Drew A. and Manning, Christopher D.},
  booktitle={CVPR},
  year={2019}
}
"""

_TRAILING_PUNCTUATION = ".,!?;:'\""
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_WHITESPACE_RE = re.compile(r"\s+")
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def normalize_text(text: str | None) -> str:
    """Lower-case, strip, strip trailing punctuation, drop articles and collapse whitespace."""
    if text is None:
        return ""
    text = text.lower().strip()
    previous = None
    while previous != text:
        previous = text
        text = text.rstrip(_TRAILING_PUNCTUATION).rstrip()
    text = _ARTICLES_RE.sub(" ", text)
    return _WHITESPACE_RE.sub(" ", text).strip()


def _lmms_eval(text: str) -> str:
    return text.lower().translate(_PUNCTUATION_TABLE)


# normalization -> (prediction normaliser, reference normaliser)
NORMALIZATIONS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "lmms_eval": (lambda p: _lmms_eval(p.strip()), _lmms_eval),
    "llava": (lambda p: p.strip().rstrip(".").lower(), lambda r: r),
    "lenient": (normalize_text, normalize_text),
}


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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GqaAccuracy(evaluate.Metric):
    """GQA exact-match accuracy after normalisation."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://cs.stanford.edu/people/dorarad/gqa/evaluate.html"],
        )

    def _compute(
        self,
        predictions: Sequence[str | None],
        references: Sequence[str],
        normalization: str = "lmms_eval",
        return_per_question: bool = False,
    ) -> dict[str, float | list[int]]:
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"gqa_accuracy: `normalization` must be one of {tuple(NORMALIZATIONS)}, got {normalization!r}."
            )
        normalize_prediction, normalize_reference = NORMALIZATIONS[normalization]
        n = _check_inputs("gqa_accuracy", predictions=predictions, references=references)
        flags = []
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            gold = normalize_reference(reference)
            if not gold:
                raise ValueError(
                    f"gqa_accuracy: reference {i} ({reference!r}) is empty after normalisation; every question "
                    "needs a non-empty ground-truth answer."
                )
            flags.append(int(normalize_prediction(prediction or "") == gold))
        result: dict[str, float | list[int]] = {"gqa_accuracy": 100.0 * sum(flags) / n}
        if return_per_question:
            result["gqa_accuracy_per_question"] = flags
        return result
