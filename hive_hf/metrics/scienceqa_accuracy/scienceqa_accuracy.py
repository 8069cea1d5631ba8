"""ScienceQA multiple-choice accuracy as an ``evaluate`` metric.

Official definition (Lu et al., 2022, https://scienceqa.github.io): the percentage of questions whose predicted
option is the correct one. ``parsing`` names how a generated answer is read:

``"strict"`` (the default) is lmms-eval's ``scienceqa`` task (``sqa_process_results``), which the HIVE authors ran:
after stripping surrounding whitespace, a prediction is correct when it *is* the correct option letter in either case
(``"B"``, ``"b"``; lmms-eval 0.7 compares it lower-cased), or starts with an upper-case letter followed by a period
and that letter is the correct one (``"B. a mammal"``). Everything else is wrong: ``"b. a mammal"``, ``"(B)"``,
``"B)"``, ``"The answer is B."``, the option text.

``"lenient"`` extends the rule of the LLaVA ScienceQA evaluation (``llava/eval/eval_science_qa.py``, which accepts
``"B"``, ``"B. ..."`` and ``"The answer is B."``): a prediction is **correct** when (1) the option letter parsed
from it maps to the correct choice index, **or** (2) its normalised text -- or the text after an "answer is" /
"answer:" phrase -- equals the correct option's normalised text. The two tests are OR-ed as specified, so a
self-contradictory answer (the letter of one option with the text of another) is counted correct if either part is
right.

Letter formats recognised by ``"lenient"`` (``_parse_letter``), letters map ``A`` -> 0, ``B`` -> 1, ...; a letter
beyond the number of choices is ignored:

* the whole answer is one letter, optionally bracketed and/or followed by ``. : ,`` -- case-insensitive:
  ``"B"``, ``"b"``, ``"(B)"``, ``"[b]"``, ``"B."``, ``"B)"``;
* the answer starts with an upper-case option marker followed by text: ``"(B) mammal"``, ``"B. mammal"``,
  ``"B) mammal"``, ``"B: mammal"``;
* an upper-case letter after "answer is" or "answer:" (or, failing that, after "option"; the phrase is
  case-insensitive), optionally bracketed and not followed by another letter/digit: ``"The answer is B."``,
  ``"Answer: (C)"``, ``"I pick option A"``.

Text normalisation (:func:`normalize_text`, identical to ``gqa_accuracy``'s): lower-case, strip, strip trailing
punctuation, drop the articles a/an/the, collapse whitespace.

Edge cases: an empty prediction is wrong; an empty input list, an empty ``choices`` list, or a reference
index outside ``range(len(choices))`` raise a ``ValueError``.

The script is self-contained (only the standard library, ``datasets`` and ``evaluate``) because ``evaluate.load``
copies this single file into its module cache. :func:`normalize_text` is duplicated verbatim from
``gqa_accuracy.py``; ``tests/test_metrics.py`` checks that the two copies agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets
import evaluate

_DESCRIPTION = """
ScienceQA accuracy: percentage of multiple-choice questions answered correctly. By default (lmms-eval's parsing) the
prediction must be the option letter ("B", or "B. ..."); `parsing="lenient"` also accepts "(B)", "The answer is B."
and the option text. `choices` (the option texts) is a required input.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): model outputs, one per question; pass "" for a failed generation (wrong).
    references (`list` of `int`): index of the correct option in `choices` (0 = "A").
    choices (`list` of `list` of `str`): the option texts of each question, in the order the letters were assigned.
    parsing (`str`, defaults to `"strict"`): `"strict"` (lmms-eval: the letter in either case, or an upper-case
        letter and a period first) or
        `"lenient"` (letters in many formats, or the option text).
    return_per_question (`bool`, defaults to `False`): also return a 0/1 correctness flag per question.

Returns:
    `dict` with `"scienceqa_accuracy"` (`float`, percentage) and, if `return_per_question=True`,
    `"scienceqa_accuracy_per_question"` (`list` of `int`).

Raises:
    ValueError: on an empty input list, mismatched lengths, empty `choices`, or a reference index out of range.

Examples:
    >>> sqa = evaluate.load(metric_path("scienceqa_accuracy"))
    >>> sqa.compute(predictions=["B", "A. fish", "(B)"], references=[1, 0, 1], choices=[["bird", "mammal"]] * 3)
    {'scienceqa_accuracy': 66.66666666666667}
    >>> sqa.compute(
    ...     predictions=["The answer is B.", "a fish"],
    ...     references=[1, 0],
    ...     choices=[["a bird", "a mammal"], ["fish", "frog"]],
    ...     parsing="lenient",
    ... )
    {'scienceqa_accuracy': 100.0}
"""

_CITATION = """
@inproceedings{lu2022learn,
  title={Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question Answering},
  author={Lu, Pan and Mishra, Swaroop and Xia, Tony and Qiu, Liang and Chang, Kai-Wei and Zhu, Song-Chun and
          Tafjord, Oyvind and Clark, Peter and Kalyan, Ashwin},
  booktitle={NeurIPS},
  year={2022}
}
"""

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PARSINGS: tuple[str, ...] = ("strict", "lenient")

_TRAILING_PUNCTUATION = ".,!?;:'\""
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_WHITESPACE_RE = re.compile(r"\s+")

# Whole answer is a single (possibly bracketed / punctuated) letter, any case.
_BARE_LETTER_RE = re.compile(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:,]?")
# Answer starts with an upper-case option marker followed by whitespace: "(B) text", "B. text", "B) text".
_LEADING_LETTER_RE = re.compile(r"(?:[(\[]([A-Z])[)\]]|([A-Z])[.):])(?=\s)")
# Upper-case letter after "answer is" / "answer:" (then after "option"), not followed by another letter or digit.
_ANSWER_LETTER_RES = tuple(
    re.compile(prefix + r"\s*[(\[]?([A-Z])(?![A-Za-z0-9'])")
    for prefix in (r"(?i:\banswer\s*(?:is\s*:?|:))", r"(?i:\boption)")
)
# Free text after "answer is" / "answer:" for the text fallback.
_ANSWER_TAIL_RE = re.compile(r"\banswer\s*(?:is\s*:?|:)\s*(.+)$", re.IGNORECASE | re.DOTALL)


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


def _parse_letter(prediction: str) -> str | None:
    """Return the upper-case option letter a prediction names, or ``None`` if it names none."""
    text = prediction.strip()
    match = _BARE_LETTER_RE.fullmatch(text)
    if match:
        return match.group(1).upper()
    match = _LEADING_LETTER_RE.match(text)
    if match:
        return match.group(1) or match.group(2)
    for pattern in _ANSWER_LETTER_RES:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def is_correct_strict(prediction: str | None, reference: int) -> bool:
    """lmms-eval's ``sqa_process_results``: the stripped prediction is the letter (either case), or an upper-case
    letter and a period first."""
    prediction = (prediction or "").strip()
    target = OPTION_LETTERS[reference]
    if prediction.lower() == target.lower():
        return True
    return len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == "." and prediction[0] == target


def is_correct(prediction: str | None, reference: int, choices: Sequence[str]) -> bool:
    """``parsing="lenient"``: whether ``prediction`` selects option ``reference`` of ``choices`` by letter or text."""
    if not prediction or not prediction.strip():
        return False
    letter = _parse_letter(prediction)
    if letter is not None and OPTION_LETTERS.index(letter) == reference:
        return True
    gold = normalize_text(choices[reference])
    candidates = [prediction]
    tail = _ANSWER_TAIL_RE.search(prediction)
    if tail:
        candidates.append(tail.group(1))
    return bool(gold) and any(normalize_text(candidate) == gold for candidate in candidates)


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
class ScienceqaAccuracy(evaluate.Metric):
    """ScienceQA accuracy: lmms-eval's strict option-letter parsing, or lenient letter / option-text parsing."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("int64"),
                    "choices": datasets.Sequence(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/lupantech/ScienceQA"],
            reference_urls=["https://scienceqa.github.io"],
        )

    def _compute(
        self,
        predictions: Sequence[str | None],
        references: Sequence[int],
        choices: Sequence[Sequence[str]],
        parsing: str = "strict",
        return_per_question: bool = False,
    ) -> dict[str, float | list[int]]:
        if parsing not in PARSINGS:
            raise ValueError(f"scienceqa_accuracy: `parsing` must be one of {PARSINGS}, got {parsing!r}.")
        n = _check_inputs("scienceqa_accuracy", predictions=predictions, references=references, choices=choices)
        flags = []
        for i, (prediction, reference, options) in enumerate(zip(predictions, references, choices)):
            if not options:
                raise ValueError(f"scienceqa_accuracy: question {i} has an empty `choices` list.")
            if len(options) > len(OPTION_LETTERS):
                raise ValueError(
                    f"scienceqa_accuracy: question {i} has {len(options)} choices; at most {len(OPTION_LETTERS)} "
                    "can be addressed by a letter."
                )
            if not 0 <= reference < len(options):
                raise ValueError(
                    f"scienceqa_accuracy: reference {reference} of question {i} is not a valid index into its "
                    f"{len(options)} choices; references must be 0-based option indices (0 = 'A')."
                )
            strict = parsing == "strict"
            flags.append(int(is_correct_strict(prediction, reference) if strict else
                             is_correct(prediction, reference, options)))
        result: dict[str, float | list[int]] = {"scienceqa_accuracy": 100.0 * sum(flags) / n}
        if return_per_question:
            result["scienceqa_accuracy_per_question"] = flags
        return result
