"""VQA soft accuracy (VQAv2, OK-VQA) as an ``evaluate`` metric.

Official definition (Antol et al., 2015; Goyal et al., 2017; evaluation code ``vqaEval.py`` in
https://github.com/GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation``): every question has (usually) ten
human answers. The accuracy of a predicted answer is averaged over the ten leave-one-out subsets of nine
annotators::

    acc(pred) = 1/N * sum_{j=1..N} min(#{k != j : answer_k == pred} / 3, 1)

so 1 matching human answer scores 0.3, 2 score 0.6, 3 score 0.9 and 4 or more score 1.0 (with N = 10). The
benchmark number is the mean over questions, reported as a percentage.

Answer normalisation follows ``vqaEval.py`` (``processPunctuation`` then ``processDigitArticle``):

* newlines/tabs become spaces and the answer is stripped;
* punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space or when the answer
  contains a comma between two digits (the "comma-in-number" rule, so ``"1,000"`` -> ``"1000"``), and otherwise
  replaced by a space;
* a period not followed by a digit is deleted (the official regex is ``(?!<=\\d)(\\.)(?!\\d)`` -- a mistyped
  look-behind that in effect only checks the following character; we keep that behaviour, so ``"3.5"`` keeps its
  period and ``"2."`` becomes ``"2"``);
* the answer is lower-cased and split into words; number words are mapped with ``manualMap``
  (``none``/``zero`` -> ``0``, ``one`` -> ``1`` ... ``ten`` -> ``10``); the articles ``a``, ``an``, ``the`` are
  dropped; and missing apostrophes are restored with the official ``contractions`` table (copied in full below,
  including its oddities such as ``"somebody'd" -> "somebodyd"``; the capitalised keys such as ``"Im"`` can never
  match lower-cased words, exactly as in the official script).

Two normalisations (``normalization``), which agree on plain answers and differ on a few edge cases:

``"lmms_eval"`` (the default) is lmms-eval's ``ok_vqa`` task (``ok_vqa_process_results``), which the HIVE authors
ran: its ``EvalAIAnswerProcessor`` (MMF's copy of the EvalAI scorer) on the prediction and on every human answer, then
the leave-one-out average. It runs the steps above after a tokenising step of its own: lower-case, delete every
``,`` and ``?`` (so ``"yes,no"`` -> ``"yesno"`` where vqaEval gives ``"yes no"``, and the comma-in-number rule never
fires: ``"1,000-2"`` -> ``"1000 2"``, vqaEval ``"10002"``) and write ``'s`` as `` 's`` (``"dog's"`` -> ``"dog 's"``);
it keeps vqaEval's 32-period cap; and an empty prediction matches human answers that normalise to empty.

``"official"`` is ``vqaEval.py`` with these deliberate deviations (documented so numbers can be compared):

1. The official script normalises the prediction and the human answers only when the human answers are *not*
   unanimous, so e.g. ``"Yes"`` scores 0 against ten ``"yes"``. Here both sides are always normalised (VLM
   evaluation harnesses likewise normalise every prediction before scoring), which makes ``"Yes."`` and ``"yes"``
   equal. For the released annotation files, whose answers are already normalised, this only changes the score of
   predictions that are not themselves normalised. On non-unanimous questions the scores are identical.
2. The official period removal passes ``re.UNICODE`` as the ``count`` argument of ``re.sub``, which caps it at 32
   periods; we remove all of them.
3. An empty (or whitespace/punctuation-only) prediction always scores 0, even if a human answer is also empty.

With either normalisation, questions with fewer than two human answers raise a ``ValueError`` (leave-one-out over a
single annotator would silently score 0), and an empty input list too rather than returning a score.

The script is self-contained (only the standard library, ``datasets`` and ``evaluate``) because ``evaluate.load``
copies this single file into its module cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import datasets
import evaluate

_DESCRIPTION = """
VQA soft accuracy (VQAv2 / OK-VQA): for each question, the average over the leave-one-out subsets of the human
answers of min(#matching answers / 3, 1), after the official VQA answer normalisation (punctuation, number words,
articles, contractions). Returns the mean over questions as a percentage.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one free-form answer per question; pass "" for a failed generation (scores 0).
    references (`list` of `list` of `str`): the human answers of each question (usually 10; at least 2).
    normalization (`str`, defaults to `"lmms_eval"`): `"lmms_eval"` (lmms-eval's EvalAI answer processor) or
        `"official"` (vqaEval.py's, periods all removed, an empty prediction always 0).
    return_per_question (`bool`, defaults to `False`): also return the score of every question, as fractions in
        [0, 1] (0, 0.3, 0.6, 0.9 or 1.0 with ten answers), in input order.

Returns:
    `dict` with `"vqa_accuracy"` (`float`, mean per-question accuracy x 100) and, if `return_per_question=True`,
    `"vqa_accuracy_per_question"` (`list` of `float`).

Raises:
    ValueError: on an empty input list, mismatched lengths, or a question with fewer than two human answers.

Examples:
    >>> vqa = evaluate.load(metric_path("vqa_accuracy"))
    >>> vqa.compute(predictions=["Two."], references=[["2"] * 3 + ["3"] * 7])
    {'vqa_accuracy': 90.0}
"""

_CITATION = """
@inproceedings{antol2015vqa,
  title={{VQA}: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and
          Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={ICCV},
  year={2015}
}
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
@inproceedings{marino2019okvqa,
  title={{OK-VQA}: A Visual Question Answering Benchmark Requiring External Knowledge},
  author={Marino, Kenneth and Rastegari, Mohammad and Farhadi, Ali and Mottaghi, Roozbeh},
  booktitle={CVPR},
  year={2019}
}
"""

# --- Official normalisation tables (vqaEval.py, GT-Vision-Lab/VQA) -----------------------------------------------

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# Verbatim from vqaEval.py. "(?!<=\d)" is a (mistyped) negative look-ahead that always succeeds before a ".", so the
# pattern deletes every period that is not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# vqaEval.py passes re.UNICODE (32) as `count`: at most 32 periods go; lmms-eval keeps that, "official" here does not.
_PERIOD_CAP = 32
NORMALIZATIONS: tuple[str, ...] = ("lmms_eval", "official")

NUM_MATCHES_FOR_FULL_CREDIT = 3


def process_punctuation(text: str, period_cap: int = 0) -> str:
    """``VQAEval.processPunctuation``: delete or space out punctuation, honouring the comma-in-number rule; at most
    `period_cap` periods are deleted (0: all)."""
    out = text
    number_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # The official script tests the *input* text, not the partially processed one.
        if (p + " " in text or " " + p in text) or number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=period_cap)


def process_digit_article(text: str) -> str:
    """``VQAEval.processDigitArticle``: lower-case, map number words, drop articles, restore contractions."""
    words = []
    for word in text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


@lru_cache(maxsize=1 << 16)  # human answers repeat a lot ("yes", "2", ...) across the ~10 per question
def normalize_answer(text: str | None) -> str:
    """Normalise one answer the way ``vqaEval.py`` does (``None`` is treated as the empty answer)."""
    if text is None:
        return ""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


@lru_cache(maxsize=1 << 16)
def normalize_answer_lmms_eval(text: str | None) -> str:
    """lmms-eval's ``EvalAIAnswerProcessor``: lower-case, delete ``,`` and ``?``, ``'s`` -> `` 's``, then the steps
    of :func:`normalize_answer` with vqaEval's 32-period cap."""
    if text is None:
        return ""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, period_cap=_PERIOD_CAP))


def question_accuracy(prediction: str | None, answers: Sequence[str], normalization: str = "lmms_eval") -> float:
    """Leave-one-out VQA accuracy of one prediction against its human answers, in ``[0, 1]``."""
    if len(answers) < 2:
        raise ValueError(
            f"vqa_accuracy needs at least 2 human answers per question for the leave-one-out average, got "
            f"{len(answers)}: {list(answers)!r}. Use gqa_accuracy (exact match) for single-answer datasets."
        )
    if normalization == "official":
        normalize = normalize_answer
        pred = normalize(prediction)
        if not pred:
            return 0.0
    else:  # lmms-eval scores an empty prediction like any other
        normalize = normalize_answer_lmms_eval
        pred = normalize(prediction or "")
    hits = [normalize(answer) == pred for answer in answers]
    total = sum(hits)
    # Leaving annotator j out removes one match exactly when annotator j's answer matched.
    return sum(min((total - hit) / NUM_MATCHES_FOR_FULL_CREDIT, 1.0) for hit in hits) / len(hits)


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
class VqaAccuracy(evaluate.Metric):
    """Official VQA soft accuracy (leave-one-out over human answers, min(#matches / 3, 1))."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/GT-Vision-Lab/VQA"],
            reference_urls=["https://visualqa.org/evaluation.html", "https://okvqa.allenai.org/"],
        )

    def _compute(
        self,
        predictions: Sequence[str | None],
        references: Sequence[Sequence[str]],
        normalization: str = "lmms_eval",
        return_per_question: bool = False,
    ) -> dict[str, float | list[float]]:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"vqa_accuracy: `normalization` must be one of {NORMALIZATIONS}, got {normalization!r}.")
        n = _check_inputs("vqa_accuracy", predictions=predictions, references=references)
        scores = []
        for i, (prediction, answers) in enumerate(zip(predictions, references)):
            try:
                scores.append(question_accuracy(prediction, answers, normalization))
            except ValueError as err:
                raise ValueError(f"question {i}: {err}") from None
        result: dict[str, float | list[float]] = {"vqa_accuracy": 100.0 * sum(scores) / n}
        if return_per_question:
            result["vqa_accuracy_per_question"] = scores
        return result
