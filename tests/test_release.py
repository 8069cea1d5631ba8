"""Hub releases against the LocalHub double (tests/hub_double.py): `push_to_hub`, `python -m hive_hf.release` and
pushes during training with `HiveHubCallback`.

Pushes go through this process' real `huggingface_hub` client; loading runs in a fresh interpreter that can reach the
double only through its environment and cannot import `hive_hf` (as a user without the package), so every HIVE class
there comes from the repository's remote code.
"""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import pytest
import torch
from hub_double import LocalHub
from huggingface_hub import HfApi, ModelCard, ModelCardData
from PIL import Image
from safetensors.torch import load_file
from tiny import tiny_model
from transformers import AutoProcessor, AutoTokenizer, SiglipImageProcessorPil, TrainingArguments

from hive_hf import HiveForConditionalGeneration, HiveProcessor, HiveVisionEncoderModel
from hive_hf.cli.release import main
from hive_hf.compat import AutoImageProcessor
from hive_hf.data import make_shapes_dataset
from hive_hf.modeling_hive import STAGE_COMPONENTS, parameter_component
from hive_hf.release import (
    CardOptions,
    HiveHubCallback,
    StageRecord,
    as_hub_id,
    render_model_card,
    results_markdown,
    stage_record_from_folder,
)
from hive_hf.runs.layout import write_training_args
from hive_hf.runs.pickles import load_training_args
from hive_hf.runs.tables import results_table
from hive_hf.tiny_backbones import build_word_tokenizer, write_tiny_backbones
from hive_hf.training import HiveCaptionCollator, HiveTrainer, apply_lora, merge_lora

VISION_ID, TEXT_ID = "hive-test/tiny-siglip", "hive-test/tiny-llama"  # the backbones, as if taken from the Hub
CAPTION = "two red circles."
PROBE_RESULTS = {"cifar10": {"top1": 91.25, "top5": 99.5}, "food101": {"top1": 80.125}}
LR = {1: 3e-3, 2: 1e-3, 3: 3e-4}
CODE = {"configuration_hive.py", "modeling_hive.py"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run_pretrain-shaped output folder: tiny stock backbones, and three finished stages whose weights differ in
    what each stage trains (1: connector, 2: + LLM, 3: + vision encoder), with the Trainer's records."""
    out = tmp_path_factory.mktemp("run")
    captions = [CAPTION, "a blue square.", "one green triangle on the left."]
    vision, text = write_tiny_backbones(out / "backbones", captions, image_size=16, patch_size=4, hidden_size=32)
    model = HiveForConditionalGeneration.from_vision_text_pretrained(vision, text, connection_density=0.5)
    model.config.vision_config._name_or_path = VISION_ID
    model.config.text_config._name_or_path = TEXT_ID
    processor = HiveProcessor.for_model_config(
        model.config, AutoImageProcessor.from_pretrained(vision), AutoTokenizer.from_pretrained(text))
    generator = torch.Generator().manual_seed(0)
    for stage in (1, 2, 3):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if parameter_component(name) in STAGE_COMPONENTS[stage]:
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
        model.config.training_stage = stage
        folder = out / f"stage{stage}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        args = TrainingArguments(output_dir=str(folder), learning_rate=LR[stage], warmup_steps=5, max_grad_norm=1.0,
                                 per_device_train_batch_size=8, report_to="none", use_cpu=True)
        write_training_args(args, folder)
        history = [{"loss": 2.5 - stage / 10, "step": 5}, {"loss": 2.0 - stage / 10, "step": 10}]
        metrics = {"train_runtime": 2.0, "train_samples_per_second": 40.0, "epoch": 0.5, "train_loss": 2.2,
                   "stage": stage, "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"]}
        (folder / "hive_stage.json").write_text(json.dumps({**metrics, "log_history": history}))
        (folder / "all_results.json").write_text(json.dumps(metrics))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10, "epoch": 0.5, "log_history": history}))
    (out / "probe_results.json").write_text(json.dumps(PROBE_RESULTS))
    return out


def expected_outputs(run_dir, stage):
    """What the loaders must reproduce, computed here with hive_hf from the run folder."""
    folder = run_dir / f"stage{stage}"
    model = HiveForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=[Image.new("RGB", (20, 20), (200, 30, 30))], text=[CAPTION], add_eos=True,
                       return_labels=True)
    with torch.no_grad():
        return {
            "inputs": dict(inputs),
            "logits": model(**inputs).logits,
            "features": model.vision_model(inputs["pixel_values"]).hierarchical_features,
            "stock": model.vision_model.to_base_model()(inputs["pixel_values"]).last_hidden_state,
        }


LOADER = textwrap.dedent(
    """
    import json, sys

    class BlockHive:
        # A meta-path finder that refuses `hive_hf`: what a user without the package has.
        def find_spec(self, name, path=None, target=None):
            if name == "hive_hf" or name.startswith("hive_hf."):
                raise ImportError("hive_hf is blocked in this process")

    sys.meta_path.insert(0, BlockHive())
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.image_processing_auto import AutoImageProcessor  # the class, on every release

    jobs, inputs_file, out_file, caption = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    all_inputs = torch.load(inputs_file)
    image = Image.new("RGB", (20, 20), (200, 30, 30))
    results = {}
    for job in jobs:
        kwargs = {"revision": job["revision"], **({"trust_remote_code": True} if job["remote"] else {})}
        kind, repo = job["kind"], job["repo"]
        inputs = {k: v for k, v in all_inputs[job["inputs"]].items() if k != "labels"}
        with torch.no_grad():
            if kind == "full":
                obj = AutoModelForImageTextToText.from_pretrained(repo, **kwargs).eval()
                value = obj(**inputs).logits
            elif kind == "encoder":
                obj = AutoModel.from_pretrained(repo, **kwargs).eval()
                value = obj(inputs["pixel_values"]).hierarchical_features
            elif kind == "stock":
                obj = AutoModel.from_pretrained(repo, **kwargs).eval()
                value = obj(inputs["pixel_values"]).last_hidden_state
            elif kind == "processor":
                obj = AutoProcessor.from_pretrained(repo, **kwargs)
                value = dict(obj(images=[image], text=[caption], add_eos=True, return_labels=True))
            else:
                obj = AutoImageProcessor.from_pretrained(repo, **kwargs)
                value = obj(images=[image], return_tensors="pt")["pixel_values"]
        results[job["name"]] = {"value": value, "class": f"{type(obj).__module__}.{type(obj).__name__}"}
    assert "hive_hf" not in sys.modules
    torch.save(results, out_file)
    """
)


def load_in_fresh_process(hub, tmp_path, jobs, inputs):
    """Run loader jobs `(name, kind, repo, revision, remote, inputs key)` in one new interpreter that cannot import
    hive_hf and reaches the double only through its environment."""
    torch.save(inputs, tmp_path / "inputs.pt")
    specs = [dict(zip(("name", "kind", "repo", "revision", "remote", "inputs"), job)) for job in jobs]
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(specs), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt"), CAPTION],
        env=hub.env(hf_home=tmp_path / "fresh_hf_home"), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(tmp_path / "out.pt")


def assert_same(actual, expected):
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected)
        for a, b in zip(actual, expected):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    else:
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def pushed_text(hub, repo_id, revision="main"):
    """Every text file of a pushed revision, concatenated (weights left out)."""
    return "".join(hub.read_file(repo_id, path, revision).decode(errors="replace")
                   for path in hub.list_files(repo_id, revision) if not path.endswith((".safetensors", ".png")))


RELEASE_ARGS = ["hive-tiny", "--stock_encoder_repo", "hive-tiny-siglip", "--license", "apache-2.0", "--dataset",
                "hive-test/shapes"]
REPOS = {"full": "user/hive-tiny", "encoder": "user/hive-tiny-encoder", "stock": "user/hive-tiny-siglip"}
TRAINER_REPO = "user/hive-run-stage1"


def push_with_trainer(tmp_path):
    """One tiny stage-1 run pushed by `HiveHubCallback` (the Trainer's own pushes off), as run_pretrain does."""
    shapes = make_shapes_dataset(16, image_size=16, seed=0)
    model = tiny_model()
    processor = HiveProcessor.for_model_config(
        model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}), build_word_tokenizer(shapes["caption"]))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run" / "stage1"), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-2,
        save_strategy="steps", save_steps=1, logging_steps=1, hub_model_id="hive-run-stage1",
        use_cpu=True, report_to="none", remove_unused_columns=False, disable_tqdm=True, seed=0,
    )
    callback = HiveHubCallback(CardOptions(license="apache-2.0"))
    trainer = HiveTrainer(model=model, args=args, train_dataset=shapes, data_collator=HiveCaptionCollator(processor),
                          processing_class=processor, stage=1, callbacks=[callback])
    trainer.train()
    trainer.save_model()
    callback.push_final(trainer)
    return trainer, callback, processor


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub() as hub, hub.patch_client(hf_home=tmp_path_factory.mktemp("hf_home")):
        yield hub


@pytest.fixture(scope="module")
def published(hub, run_dir, tmp_path_factory):
    """Everything this module publishes, published once: `push_to_hub` of the stage-3 model, the release command
    (`--private`), a Trainer run with `HiveHubCallback`; then one fresh interpreter without hive_hf loads it all."""
    tmp = tmp_path_factory.mktemp("published")
    folder = run_dir / "stage3"
    processor = AutoProcessor.from_pretrained(folder)
    HiveForConditionalGeneration.from_pretrained(folder).push_to_hub("user/pushed")
    processor.push_to_hub("user/pushed")
    HiveVisionEncoderModel.from_pretrained(folder).push_to_hub("user/pushed-encoder")
    processor.image_processor.push_to_hub("user/pushed-encoder")

    output, logs = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger("hive_hf").addHandler(handler)
    try:
        with redirect_stdout(output), redirect_stderr(output):
            code = main([str(run_dir), *RELEASE_ARGS, "--private", "--commit-message", "First release"])
    finally:
        logging.getLogger("hive_hf").removeHandler(handler)
    assert code == 0, output.getvalue()[-3000:]

    trainer, callback, trainer_processor = push_with_trainer(tmp)
    pushes = [c for c in HfApi().list_repo_commits(TRAINER_REPO) if c.title.startswith("Training in progress")]
    assert pushes
    first_push = HiveForConditionalGeneration.from_pretrained(tmp / "run" / "stage1" / "checkpoint-1").eval()
    trainer_inputs = dict(trainer_processor(images=[Image.new("RGB", (20, 20), (200, 30, 30))],
                                            text=["two red circles ."], add_eos=True))
    with torch.no_grad():
        trainer_expected = {"first_push": first_push(**trainer_inputs).logits,
                            "final": trainer.model.eval()(**trainer_inputs).logits}

    final, first = expected_outputs(run_dir, 3), expected_outputs(run_dir, 1)
    loaded = load_in_fresh_process(hub, tmp, [
        ("pushed_full", "full", "user/pushed", None, True, "run"),
        ("pushed_encoder", "encoder", "user/pushed-encoder", None, True, "run"),
        ("pushed_processor", "processor", "user/pushed", None, True, "run"),
        ("pushed_image_processor", "image_processor", "user/pushed-encoder", None, False, "run"),
        ("full", "full", REPOS["full"], None, True, "run"),
        ("processor", "processor", REPOS["full"], "stage3", True, "run"),
        ("encoder", "encoder", REPOS["encoder"], "stage3", True, "run"),
        ("encoder_stage1", "encoder", REPOS["encoder"], "stage1", True, "run"),
        ("stock", "stock", REPOS["stock"], None, False, "run"),  # trust_remote_code not passed
        ("stock_image_processor", "image_processor", REPOS["stock"], None, False, "run"),
        ("trainer_first_push", "full", TRAINER_REPO, "checkpoint-1", True, "trainer"),
        ("trainer_final", "full", TRAINER_REPO, None, True, "trainer"),
    ], {"run": final["inputs"], "trainer": trainer_inputs})
    return SimpleNamespace(release_output=output.getvalue() + logs.getvalue(), loaded=loaded, final=final,
                           first=first, trainer_pushes=pushes,
                           trainer_expected=trainer_expected)


# -- push_to_hub ------------------------------------------------------------------------------------------------------
def test_push_to_hub_full_model_encoder_and_processor_load_with_remote_code(hub, published):
    files = set(hub.list_files("user/pushed"))
    assert {"model.safetensors", "config.json", "README.md", "processing_hive.py", "processor_config.json",
            "tokenizer.json", *CODE} <= files
    assert set(json.loads(hub.read_file("user/pushed", "config.json"))["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert ModelCard(hub.read_file("user/pushed", "README.md").decode()).data.library_name == "transformers"
    encoder_files = set(hub.list_files("user/pushed-encoder"))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", *CODE} <= encoder_files
    assert "processing_hive.py" not in encoder_files

    loaded, expected = published.loaded, published.final
    assert loaded["pushed_full"]["class"].startswith("transformers_modules.")
    assert loaded["pushed_encoder"]["class"].endswith(".HiveVisionEncoderModel")
    assert_same(loaded["pushed_full"]["value"], expected["logits"])
    assert_same(loaded["pushed_encoder"]["value"], expected["features"])
    for key, value in expected["inputs"].items():
        assert torch.equal(loaded["pushed_processor"]["value"][key], value), key
    assert_same(loaded["pushed_image_processor"]["value"], expected["inputs"]["pixel_values"])


# -- the release command ----------------------------------------------------------------------------------------------
def test_release_pushes_three_repos_with_stage_tags_and_private(hub, published, run_dir):
    api = HfApi()
    output = published.release_output
    for repo in REPOS.values():  # ids without a namespace went to the token's user
        assert api.model_info(repo).private is True
        tags = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}
        assert set(tags) == {"stage1", "stage2", "stage3"}
        assert tags["stage3"] == hub.head(repo)
        commits = api.list_repo_commits(repo)
        assert [c.title for c in commits] == [f"First release (stage{k})" for k in (3, 2, 1)] + ["initial commit"]
        assert [c.commit_id for c in commits][:3] == [tags[f"stage{k}"] for k in (3, 2, 1)]
        assert hub.token not in pushed_text(hub, repo) + output
        assert repo in output and tags["stage1"] in output
    for k in (1, 2, 3):  # each tag holds its stage
        assert json.loads(hub.read_file(REPOS["full"], "config.json", revision=f"stage{k}"))["training_stage"] == k

    assert set(hub.list_files(REPOS["full"])) == {
        ".gitattributes", "README.md", "all_results.json", "config.json", "generation_config.json",
        "model.safetensors", "processing_hive.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
        "trainer_state.json", *CODE}
    assert set(hub.list_files(REPOS["encoder"])) == {
        ".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json", *CODE}
    assert set(hub.list_files(REPOS["stock"])) == {
        ".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
    encoder_config = json.loads(hub.read_file(REPOS["encoder"], "config.json"))
    assert set(encoder_config["auto_map"]) == {"AutoConfig", "AutoModel"}  # no LLM in an encoder repo
    assert encoder_config["vision_config"]["_name_or_path"] == VISION_ID
    assert "auto_map" not in json.loads(hub.read_file(REPOS["stock"], "config.json"))
    assert "auto_map" not in json.loads(hub.read_file(REPOS["stock"], "preprocessor_config.json"))
    card = ModelCard(hub.read_file(REPOS["encoder"], "README.md", revision="stage1").decode())
    assert 'revision = "user/hive-tiny-encoder", "stage1"' in card.text

    loaded, final, first = published.loaded, published.final, published.first
    assert_same(loaded["full"]["value"], final["logits"])
    assert_same(loaded["encoder"]["value"], final["features"])
    assert_same(loaded["encoder_stage1"]["value"], first["features"])
    assert not torch.equal(loaded["encoder_stage1"]["value"][-1], loaded["encoder"]["value"][-1])
    assert loaded["stock"]["class"] == "transformers.models.siglip.modeling_siglip.SiglipVisionModel"
    assert_same(loaded["stock"]["value"], final["stock"])
    assert_same(loaded["stock_image_processor"]["value"], final["inputs"]["pixel_values"])
    for key, value in final["inputs"].items():
        assert torch.equal(loaded["processor"]["value"][key], value), key

    # Run again (e.g. after an interruption): every stage is already released, no commit is added.
    heads = {repo: hub.head(repo) for repo in REPOS.values()}
    assert main([str(run_dir), *RELEASE_ARGS]) == 0
    assert {repo: hub.head(repo) for repo in REPOS.values()} == heads
    assert len(api.list_repo_commits(REPOS["full"])) == 4
    assert hub.unhandled == []


# -- Trainer(push_to_hub=True) ----------------------------------------------------------------------------------------
def test_trainer_pushes_carry_model_code_and_card(hub, published):
    api = HfApi()
    tags = {t.name: t.target_commit for t in api.list_repo_refs(TRAINER_REPO).tags}
    assert "checkpoint-1" in tags and tags["stage1"] == hub.head(TRAINER_REPO)  # output_dir is named stage1
    for commit in api.list_repo_commits(TRAINER_REPO):
        files = set(hub.list_files(TRAINER_REPO, commit.commit_id))
        if "config.json" in files:  # every commit with a model carries the code its auto_map names, and no pickle
            assert CODE | {"processing_hive.py", "README.md", "training_args.json"} <= files, (commit.title, files)
            assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files), files
    assert tags["checkpoint-1"] == published.trainer_pushes[-1].commit_id  # the first push
    checkpoint_card = ModelCard(hub.read_file(TRAINER_REPO, "README.md", "checkpoint-1").decode())
    assert "pre-training stage 1, at step 1" in checkpoint_card.text
    assert f'"{TRAINER_REPO}", "checkpoint-1"' in checkpoint_card.text  # the snippet pins this push's tag
    assert checkpoint_card.data.license == "apache-2.0"
    final_card = ModelCard(hub.read_file(TRAINER_REPO, "README.md").decode())
    assert "generated_from_trainer" not in str(final_card) and "# hive-run-stage1" in final_card.text
    assert f'"{TRAINER_REPO}", "stage1"' in final_card.text and "| 1 | connector | 2 |" in final_card.text
    pushed_args = json.loads(hub.read_file(TRAINER_REPO, "training_args.json"))
    assert pushed_args["max_steps"] == 2 and pushed_args["hub_model_id"] == "hive-run-stage1"

    loaded, expected = published.loaded, published.trainer_expected
    assert_same(loaded["trainer_first_push"]["value"], expected["first_push"])
    assert_same(loaded["trainer_final"]["value"], expected["final"])
    assert not torch.equal(expected["first_push"], expected["final"])


def test_a_lora_stage_pushes_the_plain_model_at_every_checkpoint(hub, tmp_path):
    """Stage 2 with LoRA saves adapters apart from the weights in its checkpoints; each mid-stage push holds the plain
    model they make (what peft's merge gives), so the tagged revision loads as any other."""
    shapes = make_shapes_dataset(16, image_size=16, seed=0)
    model = tiny_model()
    processor = HiveProcessor.for_model_config(
        model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}), build_word_tokenizer(shapes["caption"]))
    initial = {name: param.clone() for name, param in model.language_model.state_dict().items()}
    apply_lora(model, r=2, alpha=4, dropout=0.0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "stage2"), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-2,
        save_strategy="steps", save_steps=1, hub_model_id="lora-stage2", use_cpu=True, report_to="none",
        remove_unused_columns=False, disable_tqdm=True, seed=0,
    )
    callback = HiveHubCallback()
    trainer = HiveTrainer(model=model, args=args, train_dataset=shapes, data_collator=HiveCaptionCollator(processor),
                          processing_class=processor, stage=2, callbacks=[callback])
    trainer.train()
    merge_lora(model)
    trainer.save_model()
    callback.push_final(trainer)

    # the reference: checkpoint-1's adapters merged by peft
    reference = tiny_model()
    apply_lora(reference, r=2, alpha=4, dropout=0.0)
    reference.load_state_dict(load_file(tmp_path / "stage2" / "checkpoint-1" / "model.safetensors"), strict=False)
    merge_lora(reference)
    pushed = HiveForConditionalGeneration.from_pretrained("user/lora-stage2", revision="checkpoint-1")
    assert pushed.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(pushed.state_dict()[name], value, atol=0, rtol=0, msg=name)
    moved = [n for n, v in pushed.language_model.state_dict().items() if not torch.equal(v, initial[n])]
    assert any(".self_attn.q_proj." in n for n in moved)  # the adapters did change the LLM
    final = HiveForConditionalGeneration.from_pretrained("user/lora-stage2", revision="stage2")  # a stage folder
    for name, value in model.state_dict().items():
        assert torch.equal(final.state_dict()[name], value), name


# -- no push ----------------------------------------------------------------------------------------------------------
def test_release_dry_run_writes_the_exact_folders_and_valid_cards(run_dir, tmp_path, capsys, monkeypatch):
    secret = "hf_dry_run_secret_token_must_not_leak"
    monkeypatch.setenv("HF_TOKEN", secret)

    class NoHub:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a dry run must not talk to the Hub")

    monkeypatch.setattr("hive_hf.release.hub.HfApi", NoHub)
    out_dir = tmp_path / "dry"
    code = main([str(run_dir), "me/hive-tiny", "--stock_encoder_repo", "me/hive-tiny-siglip", "--dry-run",
                 "--dry_run_dir", str(out_dir), "--license", "apache-2.0", "--dataset", "hive-test/shapes"])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    listing = {str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()}
    full = {"README.md", "all_results.json", "config.json", "generation_config.json", "model.safetensors",
            "processing_hive.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
            "trainer_state.json", *CODE}
    encoder = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", *CODE}
    stock = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
    assert listing == {f"{repo}/stage{k}/{name}" for k in (1, 2, 3) for repo, names in [
        ("me/hive-tiny", full), ("me/hive-tiny-encoder", encoder), ("me/hive-tiny-siglip", stock)] for name in names}
    assert "Dry run: nothing was pushed" in captured.out
    for k in (1, 2, 3):
        assert str(out_dir / "me/hive-tiny-siglip" / f"stage{k}") in captured.out
    assert "modeling_hive.py" in captured.out

    for path in out_dir.rglob("README.md"):
        text = path.read_text()
        card = ModelCard(text)
        data = ModelCardData(**card.data.to_dict())  # the YAML validates as card data
        assert data.base_model == [VISION_ID, TEXT_ID]
        assert data.library_name == "transformers" and data.license == "apache-2.0"
        assert data.datasets == ["hive-test/shapes"]
        assert data.pipeline_tag == ("image-text-to-text" if "hive-tiny/" in str(path) else "image-feature-extraction")
        stage = path.parent.name
        assert f'"{stage}"' in card.text  # the loading snippet pins this revision
        assert ("trust_remote_code=True" in card.text) == ("siglip" not in str(path))
        assert "2604.00086" in card.text
        assert ("| cifar10 | 91.25 | 99.5 |" in card.text) == (stage == "stage3")  # results: the final card only
    stage2_card = (out_dir / "me/hive-tiny/stage2/README.md").read_text()
    assert "| 2 | connector + LLM | 10 | 0.5 | 80 | 8 | 0.001 | 5 | 1 | 2.300 → 1.800 |" in stage2_card
    assert "| 3 |" not in stage2_card
    written = "".join(p.read_text(errors="replace") for p in out_dir.rglob("*") if p.suffix in {".md", ".json", ".py"})
    assert secret not in written + captured.out + captured.err


def test_release_without_token_prints_the_client_error(monkeypatch, run_dir, tmp_path, capsys):
    with LocalHub() as hub:
        hub.install(monkeypatch, hf_home=tmp_path / "hf_home", token=False)
        code = main([str(run_dir), "user/hive-tiny"])
        captured = capsys.readouterr()
        assert code == 1
        assert "Token is required" in captured.err and "hf auth login" in captured.err
        assert "Traceback" not in captured.err
        assert hub.repos == {}


def test_release_rejects_a_folder_without_finished_stages(tmp_path, capsys):
    (tmp_path / "stage1").mkdir()  # started, never finished: no hive_stage.json
    assert main([str(tmp_path), "user/x", "--dry-run"]) == 2
    assert "holds no finished stage" in capsys.readouterr().err


# -- cards and run records --------------------------------------------------------------------------------------------
def test_results_tables_and_card_without_hub_base_models(tmp_path):
    assert results_table(PROBE_RESULTS).splitlines() == [
        "| | top1 | top5 |", "|---|---|---|", "| cifar10 | 91.25 | 99.5 |", "| food101 | 80.125 | – |"]
    assert results_table([{"task": "GQA", "acc": 58.05}]).splitlines()[2] == "| GQA | 58.05 |"
    assert results_table({"MME": 1298, "note": "a|b"}).splitlines()[2:] == ["| MME | 1298 |", "| note | a\\|b |"]
    report = {"dataset": "cifar10", "num_test": 100, "encoders": {"hive": {"mean": 91.5, "std": 0.25}},
              "arguments": {"argv": ["--dataset", "/home/me/data"]}}  # as run_probe.py writes it
    markdown = results_table(report)
    assert "| dataset | cifar10 |" in markdown and "**encoders**" in markdown and "| hive | 91.5 | 0.25 |" in markdown
    assert "/home/me" not in markdown  # run provenance stays out of the card
    (tmp_path / "probe_results.json").write_text(json.dumps(report))
    assert results_markdown(tmp_path / "probe_results.json") == markdown
    (tmp_path / "probe_results.md").write_text("# Probe\n\n| Encoder | cifar10 |\n|---|---:|\n| hive | 91.50 |\n")
    assert results_markdown(tmp_path / "probe_results.json").splitlines()[:3] == ["### Probe", "", "| Encoder | cifar10 |"]
    assert as_hub_id("google/siglip-base-patch16-224") == "google/siglip-base-patch16-224"
    assert as_hub_id("/home/me/backbones/vision") is None and as_hub_id("runs/demo/backbones/text") is None

    config = tiny_model(fusion="gated").config
    card = render_model_card("encoder", config, [StageRecord(stage=1, steps=3)], repo_id="me/enc", revision="stage1",
                             options=CardOptions(results=[("results.json", {"acc": 0.5})]))
    assert card.data.base_model is None and card.data.license == "other"
    assert "a local `siglip_vision_model` checkpoint" in card.text and "| acc | 0.5 |" in card.text
    assert "`gated`" in card.text and "2 → 1, 4 → 3" in card.text
    concat = render_model_card("full", tiny_model(fusion="concat").config, [], repo_id="me/sa", revision="main",
                               options=CardOptions())
    assert "4 → the LLM input sequence" in concat.text and "self-attention (SA) baseline" in concat.text


def test_training_args_of_runs_before_json_are_read_without_running_pickled_code(run_dir, tmp_path):
    legacy = tmp_path / "stage2"  # a stage folder from before training_args.json: the Trainer's pickle only
    legacy.mkdir()
    for name in ("hive_stage.json", "trainer_state.json", "config.json"):
        (legacy / name).write_bytes((run_dir / "stage2" / name).read_bytes())
    torch.save(TrainingArguments(output_dir=str(legacy), learning_rate=LR[2], warmup_steps=5, report_to="none",
                                 use_cpu=True), legacy / "training_args.bin")
    args = load_training_args(legacy / "training_args.bin")
    assert args.learning_rate == LR[2] and args.warmup_steps == 5
    assert stage_record_from_folder(legacy).hyperparameters == stage_record_from_folder(
        run_dir / "stage2").hyperparameters  # the same numbers as from training_args.json

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save(Payload(), tmp_path / "training_args.bin")
    assert load_training_args(tmp_path / "training_args.bin") is None
    assert not marker.exists()
