"""Tests for the ``evaluate`` metric scripts in ``hive_hf/metrics``.

Every metric is loaded offline with ``evaluate.load(metric_path(name))``, exactly as users will load it, and checked
against expected values worked out by hand in the comments next to each fixture.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from types import ModuleType

import evaluate
import pytest

from hive_hf.metrics import AVAILABLE_METRICS, load_metric, metric_path


@pytest.fixture(scope="module")
def metrics() -> dict[str, evaluate.EvaluationModule]:
    # keep_in_memory avoids the shared on-disk cache files (and their locks) of concurrent test runs.
    return {name: evaluate.load(metric_path(name), keep_in_memory=True) for name in AVAILABLE_METRICS}


def _module(metric: evaluate.EvaluationModule) -> ModuleType:
    """The Python module evaluate imported the metric script as (its cached copy)."""
    return sys.modules[type(metric).__module__]


# --- packaging --------------------------------------------------------------------------------------------------


def test_metric_path_points_at_the_script_folder():
    for name in AVAILABLE_METRICS:
        path = Path(metric_path(name))
        assert path.is_absolute() and path.name == name
        assert (path / f"{name}.py").is_file()
    assert metric_path("vqa-accuracy") == metric_path("vqa_accuracy")
    with pytest.raises(ValueError, match="Unknown metric 'bleu'.*vqa_accuracy"):
        metric_path("bleu")


def test_every_metric_loads_with_info(metrics):
    for name, metric in metrics.items():
        assert metric.name == name
        assert metric.description.strip() and metric.citation.strip() and metric.inputs_description.strip()
        assert "predictions" in metric.features and "references" in metric.features
    assert load_metric("gqa_accuracy", keep_in_memory=True).compute(predictions=["x"], references=["x"]) == {
        "gqa_accuracy": 100.0
    }


@pytest.mark.parametrize("name", AVAILABLE_METRICS)
def test_scripts_are_standalone(name):
    # evaluate.load copies only the script into its cache, so it may import nothing from hive_hf (or any sibling).
    tree = ast.parse(Path(metric_path(name), f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not copied along with the script"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "re", "string", "collections", "functools", "typing", "datasets", "evaluate"}, \
        imported


def test_duplicated_helpers_stay_identical(metrics):
    # The scripts cannot share a module (see hive_hf/metrics/__init__.py), so the copies must not drift apart.
    modules = {name: _module(metric) for name, metric in metrics.items()}
    check_sources = {inspect.getsource(module._check_inputs) for module in modules.values()}
    assert len(check_sources) == 1
    gqa, sqa = modules["gqa_accuracy"], modules["scienceqa_accuracy"]
    assert inspect.getsource(gqa.normalize_text) == inspect.getsource(sqa.normalize_text)
    for text in ["The Cat.", "  an APPLE!! ", "theater", "a", "left of the table?", ""]:
        assert gqa.normalize_text(text) == sqa.normalize_text(text)


_EMPTY_INPUTS = {
    "accuracy": {},
    "vqa_accuracy": {},
    "gqa_accuracy": {},
    "scienceqa_accuracy": {"choices": []},
    "mme_score": {"image_ids": [], "categories": []},
}


@pytest.mark.parametrize("name", AVAILABLE_METRICS)
def test_empty_input_raises(metrics, name):
    with pytest.raises(ValueError, match="got 0 examples"):
        metrics[name].compute(predictions=[], references=[], **_EMPTY_INPUTS[name])


# --- accuracy ---------------------------------------------------------------------------------------------------


def test_accuracy(metrics):
    acc = metrics["accuracy"]
    preds, refs = [0, 1, 1, 0], [0, 1, 0, 0]  # items 0, 1 and 3 are right
    assert acc.compute(predictions=preds, references=refs) == {"accuracy": 0.75}  # 3 / 4
    assert acc.compute(predictions=preds, references=refs, normalize=False) == {"accuracy": 3.0}
    # weights of the right items: 1 + 2 + 4 = 7, of all items: 1 + 2 + 3 + 4 = 10 -> 0.7
    weighted = acc.compute(predictions=preds, references=refs, sample_weight=[1, 2, 3, 4])
    assert weighted["accuracy"] == pytest.approx(0.7)
    assert acc.compute(predictions=preds, references=refs, sample_weight=[1, 2, 3, 4], normalize=False) == {
        "accuracy": 7.0
    }
    with pytest.raises(ValueError, match="one weight per example"):
        acc.compute(predictions=preds, references=refs, sample_weight=[1, 2])


# --- VQA --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_matching", "expected"),
    [
        (0, 0.0),
        # 1 match: the 9 subsets that keep it have 1/3, the one that drops it 0 -> 9 * (1/3) / 10 = 0.3
        (1, 0.3),
        # 2 matches: 8 subsets keep both -> 2/3, 2 subsets keep one -> 1/3: (8 * 2/3 + 2 * 1/3) / 10 = 0.6
        (2, 0.6),
        # 3 matches: 7 subsets keep 3 -> min(1, 1) = 1, 3 subsets keep 2 -> 2/3: (7 + 3 * 2/3) / 10 = 0.9
        (3, 0.9),
        # 4 matches: every subset keeps >= 3 -> 1 each -> 1.0
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_leave_one_out(metrics, num_matching, expected):
    answers = ["2"] * num_matching + ["3"] * (10 - num_matching)
    result = metrics["vqa_accuracy"].compute(predictions=["2"], references=[answers], return_per_question=True)
    assert result["vqa_accuracy_per_question"] == [pytest.approx(expected)]
    assert result["vqa_accuracy"] == pytest.approx(100 * expected)


def test_vqa_fewer_than_ten_answers(metrics):
    # 5 answers, 2 match: dropping a match (2 subsets) leaves 1 -> 1/3, dropping a non-match (3 subsets) leaves
    # 2 -> 2/3: (2 * 1/3 + 3 * 2/3) / 5 = (8/3) / 5 = 8/15
    result = metrics["vqa_accuracy"].compute(predictions=["dog"], references=[["dog", "dog", "cat", "cat", "cow"]])
    assert result["vqa_accuracy"] == pytest.approx(100 * 8 / 15)


def test_vqa_normalisation_in_compute(metrics):
    predictions = ["2", "two", "Dog.", "yes", "blue", ""]
    references = [
        ["2"] * 2 + ["3"] * 8,  # 2 matches -> 0.6
        ["2"] * 3 + ["4"] * 7,  # "two" -> "2": 3 matches -> 0.9
        ["a dog"] * 4 + ["cat"] * 6,  # "Dog." -> "dog" and "a dog" -> "dog": 4 matches -> 1.0
        ["Yes"] + ["no"] * 9,  # 1 match -> 0.3
        ["red"] * 10,  # 0 matches -> 0.0
        [""] * 5 + ["yes"] * 5,  # official: an empty prediction is 0.0 even against empty human answers
    ]
    result = metrics["vqa_accuracy"].compute(predictions=predictions, references=references, return_per_question=True,
                                             normalization="official")
    assert result["vqa_accuracy_per_question"] == pytest.approx([0.6, 0.9, 1.0, 0.3, 0.0, 0.0])
    # mean = (0.6 + 0.9 + 1.0 + 0.3 + 0 + 0) / 6 = 2.8 / 6 -> 46.67 %
    assert result["vqa_accuracy"] == pytest.approx(100 * 2.8 / 6)
    # lmms-eval (the default) matches the empty prediction with the 5 empty answers -> 1.0
    result = metrics["vqa_accuracy"].compute(predictions=predictions, references=references, return_per_question=True)
    assert result["vqa_accuracy_per_question"] == pytest.approx([0.6, 0.9, 1.0, 0.3, 0.0, 1.0])
    assert set(metrics["vqa_accuracy"].compute(predictions=["2"], references=[["2"] * 10])) == {"vqa_accuracy"}


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),  # manualMap number word
        ("none", "0"),
        ("ten", "10"),
        ("a dog", "dog"),  # articles removed
        ("The Dog.", "dog"),  # lower-case, trailing period removed
        ("yes.", "yes"),
        ("Yes!", "yes"),  # "!" not next to a space -> replaced by a space, then split away
        ("1,000", "1000"),  # comma between digits -> all punctuation deleted
        ("10,000 dollars, maybe", "10000 dollars maybe"),
        ("red, white", "red white"),  # ", " touches a space -> deleted
        ("hot-dog", "hot dog"),  # "-" touches no space -> replaced by a space
        ("hot - dog", "hot dog"),
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("dont", "don't"),  # contractions table
        ("  black\tand white\n", "black and white"),
        ("", ""),
    ],
)
def test_vqa_answer_normalisation(metrics, raw, normalised):
    assert _module(metrics["vqa_accuracy"]).normalize_answer(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "lmms_eval", "official"),
    [
        ("Yes.", "yes", "yes"),
        ("yes,no", "yesno", "yes no"),  # lmms-eval deletes every "," and "?" first
        ("red?blue", "redblue", "red blue"),
        ("1,000-2", "1000 2", "10002"),  # so its comma-in-number rule never fires
        ("the dog's bone", "dog 's bone", "dog's bone"),  # and it writes "'s" as " 's"
        ("xxx" + "." * 40, "xxx" + "." * 8, "xxx"),  # vqaEval's 32-period cap, which lmms-eval keeps
        ("Two", "2", "2"),
        ("", "", ""),
    ],
)
def test_vqa_the_two_normalisations(metrics, raw, lmms_eval, official):
    module = _module(metrics["vqa_accuracy"])
    assert module.normalize_answer_lmms_eval(raw) == lmms_eval
    assert module.normalize_answer(raw) == official


def test_vqa_invalid_inputs(metrics):
    with pytest.raises(ValueError, match="question 1: .*at least 2 human answers"):
        metrics["vqa_accuracy"].compute(predictions=["a", "b"], references=[["a", "a"], ["b"]])
    with pytest.raises(ValueError, match="Mismatch in the number of predictions"):
        metrics["vqa_accuracy"].compute(predictions=["a", "b"], references=[["a", "a"]])
    with pytest.raises(ValueError, match="`normalization` must be one of .*'official'.*got 'vqaeval'"):
        metrics["vqa_accuracy"].compute(predictions=["a"], references=[["a", "a"]], normalization="vqaeval")


# --- GQA --------------------------------------------------------------------------------------------------------


def test_gqa_accuracy(metrics):
    predictions = ["Table.", "YES", "left side", "", "  Blue!! ", "t-shirt", "the table"]
    references = ["table", "yes", "left", "yes", "blue", "t-shirt", "table"]
    # lmms-eval (default): lower-case, punctuation deleted on both sides, no article removal.
    # right: table, yes, blue, t-shirt (5: "tshirt" both sides) -> 4; wrong: "left side", "", "the table" -> 4 / 7
    result = metrics["gqa_accuracy"].compute(predictions=predictions, references=references, return_per_question=True)
    assert result["gqa_accuracy_per_question"] == [1, 1, 0, 0, 1, 1, 0]
    assert result["gqa_accuracy"] == pytest.approx(100 * 4 / 7)


@pytest.mark.parametrize(("prediction", "reference", "lmms_eval", "llava", "lenient"), [
    ("Table.", "table", 1, 1, 1),
    ("Blue!!", "blue", 1, 0, 1),  # llava strips only periods
    ("the table", "table", 0, 0, 1),  # only lenient drops articles
    ("t-shirt", "t-shirt", 1, 1, 1),
    ("tshirt", "t-shirt", 1, 0, 0),  # lmms-eval deletes the hyphen on both sides
    ("left  side", "left side", 0, 0, 1),  # only lenient collapses whitespace
    (" Yes ", "yes", 1, 1, 1),
])
def test_gqa_normalizations(metrics, prediction, reference, lmms_eval, llava, lenient):
    for normalization, expected in (("lmms_eval", lmms_eval), ("llava", llava), ("lenient", lenient)):
        result = metrics["gqa_accuracy"].compute(predictions=[prediction], references=[reference],
                                                 normalization=normalization)
        assert result["gqa_accuracy"] == 100.0 * expected, normalization


def test_gqa_normalisation_and_errors(metrics):
    normalize = _module(metrics["gqa_accuracy"]).normalize_text
    assert normalize("The  Cat ?") == "cat"
    assert normalize("theater") == "theater"  # articles only as whole words
    assert normalize("left of the table.") == "left of table"
    with pytest.raises(ValueError, match="reference 0 .*empty after normalisation"):
        metrics["gqa_accuracy"].compute(predictions=["the"], references=["The"], normalization="lenient")
    with pytest.raises(ValueError, match="reference 0 .*empty after normalisation"):
        metrics["gqa_accuracy"].compute(predictions=["x"], references=["?"])
    with pytest.raises(ValueError, match="`normalization` must be one of .*'lmms_eval'.*got 'official'"):
        metrics["gqa_accuracy"].compute(predictions=["x"], references=["x"], normalization="official")


# --- ScienceQA --------------------------------------------------------------------------------------------------

_SQA_CHOICES = ["bird", "a mammal", "fish"]  # correct answer: index 1 = "B"
_SQA_RIGHT = [
    "B", "(B)", "B.", "b", "B)", "[B]", "The answer is B.", "Answer: (B)", "answer is B", "I choose option B",
    "B. mammal", "(B) a mammal",  # letter formats
    "mammal", "A mammal.", "Mammal", "The answer is a mammal.",  # option text ("A mammal" is text, not letter A)
]  # fmt: skip
_SQA_WRONG = [
    "A", "(C)", "C.", "The answer is A.", "fish", "", "   ", "D", "mammals", "B or C", "The answer is C, a mammal",
]  # fmt: skip


def test_scienceqa_lenient_letter_and_text_formats(metrics):
    sqa = metrics["scienceqa_accuracy"]
    for predictions, expected in [(_SQA_RIGHT, 1), (_SQA_WRONG, 0)]:
        n = len(predictions)
        result = sqa.compute(predictions=predictions, references=[1] * n, choices=[_SQA_CHOICES] * n,
                             parsing="lenient", return_per_question=True)
        # keyed by prediction so a failure names the offending format
        assert dict(zip(predictions, result["scienceqa_accuracy_per_question"])) == dict.fromkeys(
            predictions, expected
        )
        assert result["scienceqa_accuracy"] == 100.0 * expected


# lmms-eval's sqa_process_results: the (stripped) letter, or an upper-case letter and a period first.
_SQA_STRICT_RIGHT = ["B", " B ", "B.", "B. a mammal", "B.mammal", "b"]  # lmms-eval 0.7 compares the letter lower-cased
_SQA_STRICT_WRONG = ["(B)", "B)", "[B]", "The answer is B.", "a mammal", "B a mammal", "b. a mammal", "A. a mammal",
                     ""]  # fmt: skip


def test_scienceqa_strict_is_the_default_and_wants_the_letter(metrics):
    sqa = metrics["scienceqa_accuracy"]
    predictions = _SQA_STRICT_RIGHT + _SQA_STRICT_WRONG
    n = len(predictions)
    result = sqa.compute(predictions=predictions, references=[1] * n, choices=[_SQA_CHOICES] * n,
                         return_per_question=True)
    expected = [1] * len(_SQA_STRICT_RIGHT) + [0] * len(_SQA_STRICT_WRONG)
    assert dict(zip(predictions, result["scienceqa_accuracy_per_question"])) == dict(zip(predictions, expected))
    assert sqa.compute(predictions=predictions, references=[1] * n, choices=[_SQA_CHOICES] * n,
                       parsing="strict") == {"scienceqa_accuracy": 100.0 * len(_SQA_STRICT_RIGHT) / n}
    with pytest.raises(ValueError, match="`parsing` must be one of .*'lenient'.*got 'loose'"):
        sqa.compute(predictions=["B"], references=[1], choices=[_SQA_CHOICES], parsing="loose")


def test_scienceqa_accuracy_value(metrics):
    inputs = dict(
        predictions=["(A)", "The answer is B.", "frog", "C", "A"],
        references=[0, 1, 0, 1, 0],
        choices=[["cat", "dog"], ["yes", "no"], ["fish", "frog", "toad"], ["x", "y"], ["x", "y"]],
    )
    # lenient: right "(A)" -> 0, "B" -> 1, "A"; wrong: "frog" is option 1 not 0, "C" is out of range -> 3 / 5
    assert metrics["scienceqa_accuracy"].compute(**inputs, parsing="lenient") == {"scienceqa_accuracy": 60.0}
    # strict: only the bare "A" -> 1 / 5
    assert metrics["scienceqa_accuracy"].compute(**inputs) == {"scienceqa_accuracy": 20.0}


def test_scienceqa_invalid_inputs(metrics):
    sqa = metrics["scienceqa_accuracy"]
    with pytest.raises(ValueError, match="reference 2 of question 0 is not a valid index"):
        sqa.compute(predictions=["A"], references=[2], choices=[["x", "y"]])
    with pytest.raises(ValueError, match="empty `choices`"):
        sqa.compute(predictions=["A", "A"], references=[0, 0], choices=[["x"], []])


# --- MME --------------------------------------------------------------------------------------------------------

# (prediction, reference, image id, category). The same image id in two subtasks must not be merged.
_MME_ROWS = [
    # existence: image 1 both right; image 2 only the first right.
    # acc = 3/4 = 75, acc+ = 1/2 = 50 -> 125
    ("Yes.", "Yes", "1.jpg", "existence"),
    ("No", "No", "1.jpg", "existence"),
    ("yes, it is", "Yes", "2.jpg", "existence"),
    ("Yes", "No", "2.jpg", "existence"),
    # OCR (given as "ocr"): image 1 both right; image 2 both wrong ("" and "I think not" are "other").
    # acc = 2/4 = 50, acc+ = 1/2 = 50 -> 100
    ("NO", "No", "1.jpg", "ocr"),
    ("yes", "Yes", "1.jpg", "ocr"),
    ("", "Yes", "2.jpg", "ocr"),
    ("I think not", "No", "2.jpg", "ocr"),
    # commonsense reasoning: one image, both right -> 100 + 100 = 200
    ("Yes", "yes", "c.png", "Commonsense Reasoning"),
    ("No.", "NO", "c.png", "Commonsense Reasoning"),
    # code reasoning: one image, one right ("not sure" is "other") -> acc 50, acc+ 0 -> 50
    ("No, it is not", "No", "k.png", "code-reasoning"),
    ("not sure", "Yes", "k.png", "code-reasoning"),
]


def _mme_inputs(rows):
    predictions, references, image_ids, categories = (list(column) for column in zip(*rows))
    return {"predictions": predictions, "references": references, "image_ids": image_ids, "categories": categories}


def test_mme_scores(metrics):
    result = metrics["mme_score"].compute(**_mme_inputs(_MME_ROWS), return_details=True)
    details = result.pop("details")
    # perception = 125 + 100 = 225, cognition = 200 + 50 = 250, total = 475
    assert result == pytest.approx(
        {
            "existence": 125.0,
            "OCR": 100.0,
            "commonsense_reasoning": 200.0,
            "code_reasoning": 50.0,
            "perception": 225.0,
            "cognition": 250.0,
            "total": 475.0,
        }
    )
    assert details["existence"] == pytest.approx(
        {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "num_questions": 4, "num_images": 2, "num_other": 0}
    )
    # official parsing: "" and "I think not" are "other"; "not sure" is "no" ("no" in its first four characters)
    assert details["OCR"]["num_other"] == 2 and details["code_reasoning"]["num_other"] == 0
    strict = metrics["mme_score"].compute(**_mme_inputs(_MME_ROWS), parsing="strict", return_details=True)
    assert strict["total"] == pytest.approx(475.0) and strict["details"]["code_reasoning"]["num_other"] == 1


def test_mme_grouping_ignores_row_order(metrics):
    # Questions are paired by (category, image id), not by position: interleaving the rows changes nothing.
    shuffled = _MME_ROWS[::2] + _MME_ROWS[1::2]
    assert metrics["mme_score"].compute(**_mme_inputs(shuffled))["total"] == pytest.approx(475.0)


def test_mme_question_ids_alias_and_add_batch(metrics):
    mme = metrics["mme_score"]
    inputs = _mme_inputs(_MME_ROWS)
    inputs["question_ids"] = inputs.pop("image_ids")
    assert mme.compute(**inputs)["total"] == pytest.approx(475.0)
    for start in range(0, len(_MME_ROWS), 4):
        batch = _mme_inputs(_MME_ROWS[start : start + 4])
        batch["question_ids"] = batch.pop("image_ids")
        mme.add_batch(**batch)
    assert mme.compute()["total"] == pytest.approx(475.0)


@pytest.mark.parametrize(
    ("text", "official", "strict"),
    [
        ("Yes.", "yes", "yes"),
        ("yes, it is", "yes", "yes"),
        ("NO", "no", "no"),
        (" no ", "no", "no"),
        ('"No", there is none', "no", "no"),  # strict skips the quote; official: "no" in '"no"' (first 4 characters)
        ("Nope", "no", "other"),  # official: substring "no" in "nope"; strict needs the whole word
        ("not sure", "no", "other"),  # official: substring "no" in "not "
        ("None", "no", "other"),
        ("y", "yes", "other"),  # official: one character y / n
        ("N.", "no", "other"),  # official deletes periods first: "n"
        ("x", "other", "other"),
        ("Yes.No", "yes", "yes"),  # official: "yesno" starts with "yes"
        ("I think yes", "other", "other"),
        ("", "other", "other"),
    ],
)
def test_mme_answer_parsing(metrics, text, official, strict):
    parse = _module(metrics["mme_score"]).parse_answer
    assert parse(text) == official  # the official tool's parse_pred_ans is the default
    assert parse(text, "strict") == strict


def test_mme_parsing_changes_score(metrics):
    rows = [("No", "No", "i.png", "count"), ("not really", "No", "i.png", "count")]
    # official (default): "not really" is "no" -> 100 + 100 = 200; strict: "other" -> acc 1/2 = 50, acc+ 0 -> 50
    assert metrics["mme_score"].compute(**_mme_inputs(rows))["count"] == pytest.approx(200.0)
    assert metrics["mme_score"].compute(**_mme_inputs(rows), parsing="strict")["count"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="`parsing` must be one of .*'strict'.*got 'lenient'"):
        metrics["mme_score"].compute(**_mme_inputs(rows), parsing="lenient")


def test_mme_invalid_inputs(metrics):
    mme = metrics["mme_score"]
    three = [("yes", "Yes", "i.png", "scene")] * 3
    with pytest.raises(ValueError, match="exactly 2 questions per image.*'scene'"):
        mme.compute(**_mme_inputs(three))
    # require_pairs=False: 3/3 right -> acc 100, the image is all right -> acc+ 100
    assert mme.compute(**_mme_inputs(three), require_pairs=False)["scene"] == pytest.approx(200.0)
    with pytest.raises(ValueError, match="unknown MME category 'existance'"):
        mme.compute(**_mme_inputs([("yes", "Yes", "i.png", "existance")] * 2))
    with pytest.raises(ValueError, match="must be 'Yes' or 'No'"):
        mme.compute(**_mme_inputs([("yes", "maybe", "i.png", "color")] * 2))
