"""lmms-eval against our evaluation: its task files pointed at local data, its scorers against our metrics on hard
cases, its prompts against ours, and `llava_hf` run end to end on a tiny VLM (hive_hf.evaluation.lmms).

The tests that need lmms-eval skip with the reason when it is not installed (`pip install -e ".[lmms]"`)."""

import importlib.util
import io
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hive_hf.data.captions import decode_image
from hive_hf.data.vqa import VQA_FEATURES, load_mme, load_scienceqa, make_shapes_vqa_dataset, task_prompt
from hive_hf.evaluation.lmms import LMMS_TASKS, lmms_eval_command, read_lmms_results, write_lmms_tasks
from hive_hf.evaluation.vlm import score_predictions
from hive_hf.metrics import load_metric

# HIVE_REQUIRE_LMMS=1 (the CI step that installs the extra) turns the skips into failures
HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None or bool(os.environ.get("HIVE_REQUIRE_LMMS"))
needs_lmms = pytest.mark.skipif(not HAS_LMMS, reason='lmms-eval is not installed (pip install -e ".[lmms]")')


def png(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def records(rows: list[dict]) -> datasets.Dataset:
    defaults = {"image": None, "image_id": "", "choices": [], "answer_index": -1, "category": ""}
    rows = [{**defaults, **row} for row in rows]
    for row in rows:
        row["image_id"] = row["image_id"] or row["question_id"]
    return datasets.Dataset.from_list(rows, features=VQA_FEATURES)


# Questions whose prompt is easy to get wrong: MME's suffix and surrounding spaces, ScienceQA with a hint folded in,
# without an image, with many options, an OK-VQA question with quotes.
HARD_RECORDS = [
    {"question_id": "m1", "image": {"bytes": png(), "path": None}, "image_id": "mme/1.png",
     "question": "  Is the shape red? Please answer yes or no.  ", "answers": ["Yes"], "category": "color",
     "task": "mme"},
    {"question_id": "m2", "image": {"bytes": png(), "path": None}, "image_id": "mme/1.png",
     "question": "Is the shape blue? Please answer yes or no.", "answers": ["No"], "category": "color", "task": "mme"},
    {"question_id": "g1", "image": {"bytes": png((0, 0, 255), (9, 20)), "path": None}, "question": "What's this?",
     "answers": ["t-shirt"], "task": "gqa"},
    {"question_id": "v1", "image": {"bytes": png(), "path": None}, "question": 'What does "OK" mean here?',
     "answers": ["fine"] * 6 + ["okay"] * 4, "task": "vqa"},
    {"question_id": "s1", "question": "Context: A hint.\nWhich is a mammal?", "answers": ["whale"],
     "choices": ["shark", "whale", "trout", "eel", "ray"], "answer_index": 1, "task": "scienceqa"},
    {"question_id": "s2", "image": {"bytes": png(), "path": None}, "question": "Which colour?", "answers": ["red"],
     "choices": ["red", "blue"], "answer_index": 0, "task": "scienceqa"},
]


# -- the files (no lmms-eval needed) ----------------------------------------------------------------------------------
def test_task_files_hold_the_records_in_lmms_labs_layout(tmp_path):
    data = make_shapes_vqa_dataset(4, image_size=16, seed=0, split="validation")
    written = write_lmms_tasks(data, tmp_path)
    assert written == {task: spec.name for task, spec in LMMS_TASKS.items()}
    for task, name in written.items():
        assert (tmp_path / f"{name}.yaml").read_text().startswith(f"task: {name}\ndataset_path: parquet\n")
        table = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / f"{name}.parquet"), split="train")
        assert len(table) == sum(t == task for t in data["task"])
    # MME and ScienceQA are lmms-lab's own layouts, which our loaders read: the same records come back
    for task, load in (("mme", load_mme), ("scienceqa", load_scienceqa)):
        back = load(str(tmp_path / "data" / f"{written[task]}.parquet"))
        ours = data.filter(lambda r, task=task: r["task"] == task)
        for column in ("question", "answers", "choices", "answer_index", "category"):
            assert back[column] == ours[column], column
        assert [decode_image(i).tobytes() for i in back["image"]] == [decode_image(i).tobytes() for i in ours["image"]]
    with pytest.raises(ValueError, match="no lmms-eval task"):
        write_lmms_tasks(data.map(lambda r: {"task": "caption"}), tmp_path / "bad")


def test_the_command_runs_the_classic_llava_hf_on_cpu(tmp_path):
    command = lmms_eval_command("run/stage2", tmp_path, tmp_path / "out", ["hive_mme", "hive_gqa"], limit=3)
    assert command[1:6] == ["-m", "lmms_eval", "--model", "llava_hf", "--force_simple"]
    assert "pretrained=run/stage2,device=cpu,device_map=cpu" in command
    assert command[command.index("--tasks") + 1] == "hive_mme,hive_gqa" and command[-2:] == ["--limit", "3"]


# -- against lmms-eval: the task files ---------------------------------------------------------------------------------
def _functions_by_name(value):
    """A config with each function as (file, name): ours import lmms-eval's modules, its files load them by path."""
    if callable(value):
        return (Path(value.__code__.co_filename).resolve(), value.__name__)
    if isinstance(value, dict):
        return {k: _functions_by_name(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_functions_by_name(v) for v in value]
    return value


@needs_lmms
def test_task_files_are_lmms_evals_own_but_for_the_data(tmp_path):
    import lmms_eval
    from lmms_eval.utils import load_yaml_config

    write_lmms_tasks(make_shapes_vqa_dataset(2, image_size=16, seed=0, split="validation"), tmp_path)
    tasks_dir = Path(lmms_eval.__file__).parent / "tasks"
    where_the_data_are = {"task", "dataset_path", "dataset_name", "dataset_kwargs", "process_docs", "metadata"}
    for spec in LMMS_TASKS.values():
        ours = load_yaml_config(str(tmp_path / f"{spec.name}.yaml"))
        theirs = load_yaml_config(str(tasks_dir / spec.module / f"{spec.source}.yaml"))
        assert theirs["task"] == spec.source and theirs["test_split"] == spec.split
        assert set(theirs) - set(ours) <= where_the_data_are, spec.name  # GQA's process_docs joins Hub images
        theirs["lmms_eval_specific_kwargs"] = {"default": theirs["lmms_eval_specific_kwargs"]["default"]}
        for key in set(theirs) - where_the_data_are:
            assert _functions_by_name(ours[key]) == _functions_by_name(theirs[key]), (spec.name, key)
        assert ours["dataset_kwargs"] == {"data_files": {spec.split: str(tmp_path / "data" / f"{spec.name}.parquet")}}


# -- against lmms-eval: the prompts -----------------------------------------------------------------------------------
def _lmms_docs(folder: Path, name: str) -> list[dict]:
    table = datasets.load_dataset("parquet", data_files=str(folder / "data" / f"{name}.parquet"), split="train")
    return list(table)


@needs_lmms
@pytest.mark.parametrize("source", ["demo", "hard cases"])
def test_prompts_and_images_are_the_ones_lmms_eval_builds(source, tmp_path):
    from lmms_eval.utils import load_yaml_config

    data = (make_shapes_vqa_dataset(8, image_size=16, seed=3, split="validation") if source == "demo"
            else records(HARD_RECORDS))
    write_lmms_tasks(data, tmp_path)
    for task, spec in LMMS_TASKS.items():
        config = load_yaml_config(str(tmp_path / f"{spec.name}.yaml"))
        ours = data.filter(lambda r, task=task: r["task"] == task).to_list()
        docs = _lmms_docs(tmp_path, spec.name)
        for record, doc in zip(ours, docs, strict=True):
            assert config["doc_to_text"](doc, config["lmms_eval_specific_kwargs"]["default"]) == task_prompt(record)
            visuals = config["doc_to_visual"](doc)
            if record["image"] is None:
                assert visuals == []
            else:
                assert [np.asarray(v).tolist() for v in visuals] == [np.asarray(decode_image(record["image"])).tolist()]


@needs_lmms
def test_our_loaders_ask_lmms_lab_rows_as_lmms_eval_does(tmp_path):
    """The published lmms-lab layouts of MME and ScienceQA (hints separate, MME's suffix in the question) through our
    loaders give the text lmms-eval builds from the same rows."""
    from lmms_eval.tasks.mme.utils import mme_doc_to_text
    from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_text

    image = {"bytes": png(), "path": None}
    mme_rows = [{"question_id": "a.png", "image": image, "question": q, "answer": a, "category": "OCR"}
                for q, a in ((" Is the word 'cat'? Please answer yes or no.", "Yes"), ("Is it 'dog'?", "No"))]
    sqa_rows = [{"image": image if i else None, "question": "Which is hot?", "choices": ["ice", "fire", "snow"],
                 "answer": 1, "hint": hint} for i, hint in enumerate(["", "The sun is up.", "Two\nlines."])]
    for rows, name, load, to_text, kwargs in (
        (mme_rows, "mme.parquet", load_mme, mme_doc_to_text, LMMS_TASKS["mme"].config),
        (sqa_rows, "sqa.parquet", load_scienceqa, sqa_doc_to_text, LMMS_TASKS["scienceqa"].config),
    ):
        datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(tmp_path / name))
        loaded = load(str(tmp_path / name))
        default = kwargs["lmms_eval_specific_kwargs"]["default"]
        assert [task_prompt(r) for r in loaded] == [to_text(row, default) for row in rows]


# -- against lmms-eval: the scorers on hard cases ---------------------------------------------------------------------
MME_CASES = [  # (prediction, reference), two per image
    ("Yes", "Yes"), ("yes.", "No"), ("YES", "Yes"), ("No.", "No"), ("y", "Yes"), ("n", "No"), ("not sure", "No"),
    ("None", "Yes"), ("nope", "No"), ("", "Yes"), ("  yes  ", "Yes"), ("Yes, there is", "No"), ("There is no", "No"),
    ("maybe", "Yes"), ("N.", "No"), ("Y.", "Yes"), ("yes no", "Yes"), ("no yes", "No"), ("Yes.", "Yes"),
    ("yess", "Yes"),
]
GQA_CASES = [
    ("Yes.", "yes"), ("yes", "yes"), ("The table", "table"), ("table", "table"), ("t-shirt", "t-shirt"),
    ("tshirt", "t-shirt"), ("2", "two"), (" left ", "left"), ("", "yes"), ("Red!", "red"), ("red.", "red"),
    ("a", "a"), ("left of", "left"), ("LEFT", "left"), ("black and white", "black and white"), ("it's", "its"),
    ("yes\n", "yes"), ("dog's", "dogs"), ("t - shirt", "t-shirt"),
]
VQA_REFERENCES = ["two"] * 4 + ["2"] * 2 + ["a dog"] * 2 + ["yes,no", ""]
VQA_CASES = [
    "2", "two", "Two.", "Yes", "a dog", "the dog", "Dog.", "dog's", "yes,no", "yes no", "", "  ", "1,000", "3.5",
    "xxx" + "." * 40, "Unanswerable", "dont", "don't", "t-shirt", "yes?", "none", "0",
]
SQA_CHOICES = ["shark", "whale", "trout"]
SQA_CASES = ["B", "b", "B.", "b.", "(B)", "B)", "B. whale", "b. whale", "The answer is B", "", " B ", "C", "Bb",
             "B.C", "whale", "A", "B,", "BB"]


@needs_lmms
def test_mme_score_is_lmms_evals():
    from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_process_results

    categories = ["existence", "OCR", "code_reasoning", "numerical_calculation", "count"]
    docs = [{"question_id": f"{i // 2}.png", "category": categories[(i // 2) % len(categories)], "answer": ref}
            for i, (_, ref) in enumerate(MME_CASES)]
    predictions = [pred for pred, _ in MME_CASES]
    per_key = {"mme_perception_score": [], "mme_cognition_score": []}
    for doc, pred in zip(docs, predictions):
        ((key, value),) = mme_process_results(doc, [pred.strip()]).items()
        per_key[key].append(value)
    ours = load_metric("mme_score").compute(predictions=predictions, references=[d["answer"] for d in docs],
                                            image_ids=[d["question_id"] for d in docs],
                                            categories=[d["category"] for d in docs])
    assert ours["perception"] == pytest.approx(mme_aggregate_results(per_key["mme_perception_score"]), rel=1e-12)
    assert ours["cognition"] == pytest.approx(mme_aggregate_results(per_key["mme_cognition_score"]), rel=1e-12)


@needs_lmms
def test_gqa_accuracy_is_lmms_evals_exact_match():
    from lmms_eval.api.metrics import exact_match_hf_evaluate

    theirs = [exact_match_hf_evaluate([pred.strip()], [ref], ignore_case=True, ignore_punctuation=True)["exact_match"]
              for pred, ref in GQA_CASES]
    ours = load_metric("gqa_accuracy").compute(predictions=[p for p, _ in GQA_CASES],
                                               references=[r for _, r in GQA_CASES], return_per_question=True)
    assert ours["gqa_accuracy_per_question"] == theirs


@needs_lmms
def test_vqa_accuracy_is_lmms_evals_ok_vqa_and_official_differs_where_documented():
    from lmms_eval.tasks.ok_vqa.utils import ok_vqa_process_results

    theirs = [ok_vqa_process_results({"answers": list(VQA_REFERENCES), "question_id": 1}, [pred.strip()])
              ["exact_match"] for pred in VQA_CASES]
    metric = load_metric("vqa_accuracy")
    kwargs = {"predictions": VQA_CASES, "references": [VQA_REFERENCES] * len(VQA_CASES), "return_per_question": True}
    ours = metric.compute(**kwargs)["vqa_accuracy_per_question"]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)
    official = metric.compute(**kwargs, normalization="official")["vqa_accuracy_per_question"]
    differ = {pred for pred, a, b in zip(VQA_CASES, official, theirs) if a != pytest.approx(b)}
    # "yes no" matches the answer "yes,no" under vqaEval only ("yes no" there, "yesno" in lmms-eval), the empty
    # prediction matches the empty answer under lmms-eval only
    assert differ == {"yes no", "", "  "}


@needs_lmms
def test_scienceqa_accuracy_is_lmms_evals():
    from lmms_eval.tasks.scienceqa.utils import sqa_process_results

    theirs = [sqa_process_results({"choices": SQA_CHOICES, "answer": 1}, [pred.strip()])["exact_match"]
              for pred in SQA_CASES]
    ours = load_metric("scienceqa_accuracy").compute(
        predictions=SQA_CASES, references=[1] * len(SQA_CASES), choices=[SQA_CHOICES] * len(SQA_CASES),
        return_per_question=True)
    assert ours["scienceqa_accuracy_per_question"] == theirs


# -- lmms-eval end to end on a tiny VLM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from tiny import tiny_model
    from transformers import SiglipImageProcessorPil

    from hive_hf.data.vqa import training_texts
    from hive_hf.evaluation.vlm import build_llava
    from hive_hf.tiny_backbones import write_tiny_backbones

    root = tmp_path_factory.mktemp("lmms")
    tiny_model(seed=0).save_pretrained(root / "hive")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(root / "hive")
    train = make_shapes_vqa_dataset(16, image_size=16, seed=0, split="train")
    _, text = write_tiny_backbones(root / "tiny", training_texts(train), image_size=16, patch_size=4, hidden_size=32,
                                   num_layers=2, chat_template=True, lowercase=False)
    torch.manual_seed(0)
    model, processor = build_llava(str(root / "hive"), text)
    # An untrained LLM may stop at once; never stopping makes every answer 16 tokens long, a sharper comparison
    model.generation_config.suppress_tokens = [*processor.tokenizer.all_special_ids, processor.image_token_id]
    model.save_pretrained(root / "llava")
    processor.save_pretrained(root / "llava")
    return root / "llava", model, processor


@needs_lmms
def test_lmms_eval_runs_on_a_tiny_vlm_and_agrees_with_our_scores(tiny_llava, tmp_path, monkeypatch):
    """`llava_hf` through lmms-eval's command line, in this process: the token ids it feeds the model are ours with
    the tokenizer's special tokens added, its answers are ours generated so, and our metrics score its answers as it
    does. ScienceQA: images and a text-only question; MME: two yes/no questions per picture."""
    from lmms_eval.__main__ import cli_evaluate
    from transformers import LlavaProcessor

    from hive_hf.evaluation.vlm import generate_answers

    model_dir, model, processor = tiny_llava
    data = make_shapes_vqa_dataset(3, image_size=16, seed=0, split="validation")
    data = datasets.concatenate_datasets([data, records(HARD_RECORDS[4:5])])  # + a text-only ScienceQA question
    data = data.filter(lambda r: r["task"] in ("scienceqa", "mme"))
    written = write_lmms_tasks(data, tmp_path / "tasks")

    fed = []
    call = LlavaProcessor.__call__

    def recording(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        fed.append(out["input_ids"][0].tolist())
        return out

    monkeypatch.setattr(LlavaProcessor, "__call__", recording)
    command = lmms_eval_command(model_dir, tmp_path / "tasks", tmp_path / "out", sorted(written.values()))
    monkeypatch.setattr(sys, "argv", ["lmms-eval", *command[3:]])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cli_evaluate()
    monkeypatch.setattr(LlavaProcessor, "__call__", call)

    theirs = read_lmms_results(tmp_path / "out")
    assert set(theirs) == {"scienceqa", "mme"}
    for task in theirs:
        subset = data.filter(lambda r, task=task: r["task"] == task)
        ours = score_predictions(subset, theirs[task]["predictions"])
        assert ours[task]["score"] == pytest.approx(theirs[task]["score"], rel=1e-12)
        as_llava_hf = generate_answers(model, processor, subset, batch_size=1, image_aspect_ratio="square",
                                       add_special_tokens=True)
        assert all(as_llava_hf)
        # llava_hf 0.7.3 has no path for a question without an image: it logs an error and answers "" (wrong)
        text_only = [r["image"] is None for r in subset]
        assert theirs[task]["predictions"] == ["" if no_image else answer
                                               for answer, no_image in zip(as_llava_hf, text_only)]
    # what llava_hf fed the model: the chat template's text of our prompt, with the tokenizer's BOS first
    tokenizer = processor.tokenizer
    ours = [tokenizer(tokenizer.apply_chat_template(
        [{"role": "user", "content": ("" if r["image"] is None else "<image>\n") + task_prompt(r)}], tokenize=False,
        add_generation_prompt=True), add_special_tokens=False)["input_ids"] for r in data if r["image"] is not None]
    assert sorted(_one_image_token(ids, processor) for ids in fed) == sorted([tokenizer.bos_token_id, *ids] for ids in ours)


def _one_image_token(ids: list[int], processor) -> list[int]:
    """Token ids with the processor's run of image tokens written as the one placeholder of the prompt."""
    image = processor.image_token_id
    return [i for k, i in enumerate(ids) if i != image or k == 0 or ids[k - 1] != image]
