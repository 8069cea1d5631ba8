"""No secret and no pickle reaches the Hub, and no secret reaches the disk.

A recognisable fake token is given each way a user can give one (`--hub_token` / `--token`, `HF_TOKEN`,
`hf auth login`) to each push path (the training scripts' pushes, `HiveHubCallback`, `hive-release`,
`push_to_hub`); then every request body the LocalHub double (tests/hub_double.py) received, every file it stores and
every file written to the run folders is searched for it (zip archives, which `torch.save` writes, member by member),
and every stored file for a pickle. The pushes must still authenticate: the fake token is the only one there is.
"""

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hub_double import LocalHub
from huggingface_hub import HfApi
from scripts import user_error
from tiny import tiny_model
from transformers import SiglipImageProcessorPil, TrainerControl, TrainerState, TrainingArguments

import hive_hf.cli.probe as probe_cli
from hive_hf import HiveForConditionalGeneration, HiveProcessor
from hive_hf.cli.parsing import take_hub_token
from hive_hf.cli.release import main as release_main
from hive_hf.data import make_shapes_dataset
from hive_hf.release import HiveHubCallback, HubPushCallback
from hive_hf.runs.layout import write_training_args
from hive_hf.tiny_backbones import build_word_tokenizer, write_tiny_backbones
from hive_hf.training import HiveCaptionCollator, HiveTrainer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "configs" / "demo.json"
CANARY = "hf_CANARYnotARealToken0123456789abcdefXYZ"
CODE = {"configuration_hive.py", "modeling_hive.py"}
FULL_CODE = CODE | {"processing_hive.py"}
# What each push path uploads (the union over its commits): weights as safetensors, records as JSON, no pickle.
TRAINER_FILES = {".gitattributes", "README.md", "config.json", "generation_config.json", "model.safetensors",
                 "processor_config.json", "tokenizer.json", "tokenizer_config.json", "training_args.json", *FULL_CODE}
VLM_FILES = (TRAINER_FILES - FULL_CODE) | {"chat_template.jinja"}  # the VLM processor carries its chat template
RELEASE_FILES = {
    "full": {".gitattributes", "README.md", "all_results.json", "config.json", "generation_config.json",
             "loss_curves.png", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
             "trainer_state.json", *FULL_CODE},
    "encoder": {".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json", *CODE},
    "stock": {".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json"},
}


def _contents(data: bytes):
    """`data`, and each member of it if it is a zip archive (what `torch.save` writes)."""
    yield data
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                yield archive.read(name)


def holds(data: bytes, secret: str) -> bool:
    return any(secret.encode() in part for part in _contents(data))


def is_pickle(path: str, data: bytes) -> bool:
    """Named like one, a pickle stream (protocol 2 or newer starts with 0x80), or a torch.save archive (data.pkl)."""
    if path.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")) or data[:1] == b"\x80":
        return True
    return data[:4] == b"PK\x03\x04" and any(
        name.endswith(".pkl") for name in zipfile.ZipFile(io.BytesIO(data)).namelist())


def stored_files(hub: LocalHub):
    """(repo, path, content) of every file of every commit the double stores."""
    for repo in hub.repos.values():
        for commit in repo.commits.values():
            for path, entry in commit.tree.items():
                yield repo.repo_id, path, hub.blobs[entry.oid]


def hub_leaks(hub: LocalHub, secret: str) -> list[str]:
    """Every request (its path, query string and body as sent) and every stored file that holds `secret`."""
    leaks = [f"{method} {target}" for method, target, body in hub.bodies if secret in target or holds(body, secret)]
    return leaks + sorted({f"{repo}:{path}" for repo, path, data in stored_files(hub) if holds(data, secret)})


def hub_pickles(hub: LocalHub) -> list[str]:
    return sorted({f"{repo}:{path}" for repo, path, data in stored_files(hub) if is_pickle(path, data)})


def folder_leaks(folder: Path, secret: str, skip: tuple[Path, ...] = ()) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and p not in skip and holds(p.read_bytes(), secret)]


def uploaded(hub: LocalHub, repo_id: str) -> set[str]:
    """Every path any commit of `repo_id` holds."""
    return {path for repo, path, _ in stored_files(hub) if repo == repo_id}


def shipped_code(hub: LocalHub, repo_id: str) -> set[str]:
    return {path for path in uploaded(hub, repo_id) if path.endswith(".py")}


def tags(hub: LocalHub, repo_id: str) -> set[str]:
    return set(hub.repos[repo_id].tags)


def test_the_search_finds_the_leak_it_guards_against(tmp_path, monkeypatch):
    """What the Trainer wrote and pushed before: `training_args.bin`, a torch.save pickle holding `hub_token`."""
    torch.save(TrainingArguments(output_dir=str(tmp_path), hub_token=CANARY, report_to="none"), tmp_path / "args.bin")
    data = (tmp_path / "args.bin").read_bytes()
    assert holds(data, CANARY) and is_pickle("training_args.bin", data) and is_pickle("a", data)
    assert not holds(base64.b64encode(data), CANARY)  # the commit payload encodes files: search what is stored too
    with LocalHub(keep_bodies=True) as hub:
        hub.install(monkeypatch, tmp_path / "hf_home")
        HfApi().create_repo("user/leaky")
        HfApi().upload_file(path_or_fileobj=data, path_in_repo="training_args.bin", repo_id="user/leaky",
                            commit_message=f"token {CANARY}")
        assert hub_leaks(hub, CANARY) == ["POST /api/models/user/leaky/commit/main", "user/leaky:training_args.bin"]
        assert hub_pickles(hub) == ["user/leaky:training_args.bin"]
    assert folder_leaks(tmp_path, CANARY) == [str(tmp_path / "args.bin")]


@pytest.mark.slow
def test_training_scripts_and_release_with_the_token_on_the_command_line(tmp_path):
    """`run_pretrain.py --push_to_hub --hub_token`, `run_vlm_finetune.py --push_to_hub --hub_token` and
    `hive-release --token`, with no other token anywhere: they push, tag, ship only the model code, and neither the
    token nor a pickle is sent or written; the pushed repository loads, at its tag, where hive_hf cannot be imported."""
    fast = ["--per_device_train_batch_size", "8", "--logging_steps", "1", "--disable_tqdm", "True", "--save_steps",
            "1", "--push_to_hub", "True", "--hub_token", CANARY]
    with LocalHub(keep_bodies=True) as hub:
        env = {**hub.env(hf_home=tmp_path / "hf_home", token=False), "OMP_NUM_THREADS": "1"}

        def run(*argv):
            proc = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-4000:]
            assert CANARY not in proc.stdout + proc.stderr
            return proc

        run(ROOT / "examples" / "run_pretrain.py", DEMO, "--output_dir", tmp_path / "run", *fast, "--stages", "1",
            "--max_train_samples", "96", "--stage_batch_sizes", "8", "8", "8", "--stage_max_steps", "2", "2", "2",
            "--tiny_text_pretrain_steps", "5", "--tiny_vision_pretrain_steps", "3", "--hub_model_id", "user/demo")
        run(ROOT / "examples" / "run_vlm_finetune.py", "--vision_model_name_or_path", tmp_path / "run" / "stage1",
            "--tiny_text_backbone", "--tiny_text_pretrain_steps", "2", "--do_train", "--do_eval", "--output_dir",
            tmp_path / "vlm", *fast, "--shapes_train_images", "8", "--shapes_eval_images", "2", "--stage_batch_sizes",
            "8", "8", "--stage_max_steps", "1", "1", "--stages", "1", "--use_cpu", "--report_to", "none",
            "--hub_model_id", "user/vlm")
        run("-m", "hive_hf.cli.release", tmp_path / "run", "user/rel", "--stock_encoder_repo", "user/rel-stock",
            "--token", CANARY)

        assert hub_leaks(hub, CANARY) == [] and hub_pickles(hub) == []
        assert folder_leaks(tmp_path, CANARY) == []  # the run folders, checkpoints' training_args.bin included
        assert set(hub.repos) == {"user/demo-stage1", "user/vlm-stage1", "user/rel", "user/rel-encoder",
                                  "user/rel-stock"}  # evaluating the VLM pushes nothing
        assert uploaded(hub, "user/demo-stage1") == TRAINER_FILES
        assert uploaded(hub, "user/vlm-stage1") == VLM_FILES
        for kind, repo in (("full", "user/rel"), ("encoder", "user/rel-encoder"), ("stock", "user/rel-stock")):
            assert uploaded(hub, repo) == RELEASE_FILES[kind], repo
            assert tags(hub, repo) == {"stage1"}
        assert {"checkpoint-1", "stage1"} <= tags(hub, "user/demo-stage1") and "stage1" in tags(hub, "user/vlm-stage1")
        assert shipped_code(hub, "user/demo-stage1") == shipped_code(hub, "user/rel") == FULL_CODE
        assert shipped_code(hub, "user/rel-encoder") == CODE
        assert shipped_code(hub, "user/vlm-stage1") == shipped_code(hub, "user/rel-stock") == set()
        card = hub.read_file("user/demo-stage1", "README.md").decode()
        assert 'repo, revision = "user/demo-stage1", "stage1"' in card and "trust_remote_code=True" in card
        assert "`modeling_hive.py`, `configuration_hive.py`, `processing_hive.py`" in card
        stage_args = json.loads((tmp_path / "run" / "stage1" / "training_args.json").read_text())
        assert stage_args["hub_token"] == "<HUB_TOKEN>" and stage_args["hub_model_id"] == "user/demo-stage1"

        loader = ("import sys; sys.meta_path.insert(0, type('B', (), {'find_spec': lambda self, n, *a: "
                  "(_ for _ in ()).throw(ImportError(n)) if n.split('.')[0] == 'hive_hf' else None})())\n"
                  "from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor\n"
                  "kwargs = dict(trust_remote_code=True, revision='stage1')\n"
                  "print(type(AutoModel.from_pretrained('user/demo-stage1', **kwargs)).__name__)\n"
                  "AutoModelForImageTextToText.from_pretrained('user/demo-stage1', **kwargs)\n"
                  "AutoProcessor.from_pretrained('user/demo-stage1', **kwargs)\n")
        load = subprocess.run([sys.executable, "-c", loader], cwd=tmp_path,
                              env={**hub.env(hf_home=tmp_path / "fresh"), "PYTHONPATH": ""}, capture_output=True,
                              text=True, timeout=300)
        assert load.returncode == 0, load.stderr[-3000:]
        assert "HiveVisionEncoderModel" in load.stdout


@pytest.mark.parametrize("source", ["HF_TOKEN", "hf auth login"])
def test_callback_release_and_push_to_hub_with_the_token_from_the_environment(source, tmp_path, monkeypatch,
                                                                             capsys):
    """The token in `HF_TOKEN`, or stored by `hf auth login` (the only one there is): `HiveHubCallback` pushes of a
    `HiveTrainer` run, `hive-release` of it and `push_to_hub` (also given `token=`) authenticate with it and never
    send or write it."""
    with LocalHub(keep_bodies=True) as hub:
        hub.install(monkeypatch, tmp_path / "hf_home", token=False)
        login = tmp_path / "hf_home" / "token"
        if source == "HF_TOKEN":
            monkeypatch.setenv("HF_TOKEN", CANARY)
        else:
            login.parent.mkdir(parents=True)
            login.write_text(CANARY)  # where `hf auth login` keeps it
        shapes = make_shapes_dataset(8, image_size=16, seed=0)
        model = tiny_model()
        processor = HiveProcessor.for_model_config(model.config, SiglipImageProcessorPil(
            size={"height": 16, "width": 16}), build_word_tokenizer(shapes["caption"]))
        args = TrainingArguments(output_dir=str(tmp_path / "run" / "stage1"), per_device_train_batch_size=8,
                                 max_steps=1, save_steps=1, hub_model_id="trained", use_cpu=True, report_to="none",
                                 remove_unused_columns=False, disable_tqdm=True)
        callback = HiveHubCallback()
        trainer = HiveTrainer(model=model, args=args, train_dataset=shapes, processing_class=processor, stage=1,
                              data_collator=HiveCaptionCollator(processor), callbacks=[callback])
        trainer.train()
        trainer.save_model()
        callback.push_final(trainer)
        (tmp_path / "run" / "stage1" / "hive_stage.json").write_text(json.dumps({"stage": 1}))  # a finished stage
        assert release_main([str(tmp_path / "run"), "released"]) == 0
        model.push_to_hub("pushed", token=CANARY)  # and handed over explicitly
        processor.push_to_hub("pushed", token=CANARY)

        assert uploaded(hub, "user/trained") == TRAINER_FILES
        assert tags(hub, "user/trained") == {"checkpoint-1", "stage1"}
        assert uploaded(hub, "user/released") == RELEASE_FILES["full"] - {"all_results.json", "loss_curves.png",
                                                                     "trainer_state.json"}  # not written here
        assert shipped_code(hub, "user/pushed") == FULL_CODE and hub_pickles(hub) == []
        assert hub_leaks(hub, CANARY) == []
        assert folder_leaks(tmp_path, CANARY, skip=(login,)) == []
        captured = capsys.readouterr()
        assert CANARY not in captured.out + captured.err


def test_probe_script_never_writes_the_token(tmp_path, monkeypatch, capsys):
    """run_probe.py takes no token; one in `HF_TOKEN` and one stored by `hf auth login` stay out of its results."""
    vision, _ = write_tiny_backbones(tmp_path / "backbones", ["a red circle."], image_size=16, patch_size=4,
                                     hidden_size=32, num_layers=2)
    login, env_token = tmp_path / "hf_home" / "token", CANARY + "_env"
    login.parent.mkdir(parents=True)
    login.write_text(CANARY)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", env_token)
    monkeypatch.setattr(sys, "argv", [
        "run_probe.py", "--encoders", vision, "--max_train_samples", "20", "--max_test_samples", "10", "--epochs", "2",
        "--warmup_epochs", "0.5", "--batch_size", "10", "--seeds", "0", "--learning_rates", "0.01", "--output_dir",
        str(tmp_path / "probe")])
    probe_cli.main()
    assert (tmp_path / "probe" / "probe_results.json").is_file()
    captured = capsys.readouterr()
    for secret in (CANARY, env_token):
        assert folder_leaks(tmp_path, secret, skip=(login,)) == []
        assert secret not in captured.out + captured.err


def test_the_token_is_taken_out_of_the_arguments_before_anything_is_saved(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), hub_token=CANARY, report_to="none")
    assert take_hub_token(args) == CANARY and args.hub_token is None
    torch.save(args, tmp_path / "training_args.bin")  # what the Trainer writes into every checkpoint
    write_training_args(args, tmp_path)
    assert folder_leaks(tmp_path, CANARY) == []


def test_push_settings_that_would_leak_are_refused(tmp_path, monkeypatch, capsys):
    message = user_error("run_pretrain", ["--tiny_backbones", "True", "--output_dir", tmp_path / "x", "--push_to_hub",
                                          "True", "--hub_strategy", "checkpoint"], monkeypatch, capsys)
    assert "--hub_strategy must be 'every_save' or 'end', got 'checkpoint'" in message and "pickles" in message
    state, control = TrainerState(), TrainerControl()
    for bad, field in (({"push_to_hub": True}, "push_to_hub"), ({"hub_token": CANARY}, "hub_token"),
                       ({"hub_strategy": "all_checkpoints"}, "hub_strategy")):
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **bad)
        with pytest.raises(ValueError, match=field) as error:
            HubPushCallback().on_init_end(args, state, control)
        assert CANARY not in str(error.value)


def test_composing_with_a_token_keeps_it_out_of_the_config(tmp_path):
    vision, text = write_tiny_backbones(tmp_path / "backbones", ["a red circle."], image_size=16, patch_size=4,
                                        hidden_size=32, num_layers=2)
    model = HiveForConditionalGeneration.from_vision_text_pretrained(vision, text, token=CANARY,
                                                                     connection_density=0.5)
    assert "token" not in model.config.to_dict() and model.config.connection_density == 0.5
    model.save_pretrained(tmp_path / "hive")
    assert folder_leaks(tmp_path / "hive", CANARY) == []
