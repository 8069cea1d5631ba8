"""The classification probe (hive_hf.evaluation.probe, examples/run_probe.py): encoders of every kind, learning on
a separable toy problem with the encoder untouched, feature caching, seed statistics, the table, bad flags, the
script end to end."""

import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from scripts import user_error
from tiny import VISION, tiny_config
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipVisionModel,
)

import hive_hf.cli.probe as probe_cli
from hive_hf import HiveForConditionalGeneration, HiveProcessor
from hive_hf.evaluation import (
    LAST_HIDDEN_STATE,
    PROBE_RECIPES,
    AttentiveProbeHead,
    ProbeAugmentation,
    ProbeSettings,
    default_feature_layer,
    format_table,
    load_encoder,
    load_probe_datasets,
    probe_encoder,
    run_probe,
    summarize_seeds,
)
from hive_hf.evaluation import probe as probe_module
from hive_hf.evaluation.probe import encoders as probe_encoders
from hive_hf.evaluation.probe import features as probe_features
from hive_hf.evaluation.probe import heads as probe_heads
from hive_hf.tiny_backbones import build_word_tokenizer, write_tiny_backbones

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_probe.py"
SIZE = 16



@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """One folder per encoder kind, with the model each one came from."""
    root = tmp_path_factory.mktemp("encoders")
    vision_path, _ = write_tiny_backbones(root / "stock", ["a red circle."], image_size=SIZE, patch_size=4,
                                          hidden_size=32, num_layers=2)
    torch.manual_seed(0)
    config = tiny_config()
    hive = HiveForConditionalGeneration(config).eval()
    processor = HiveProcessor.for_model_config(
        config, SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE}), build_word_tokenizer(["a red circle."])
    )
    hive.save_pretrained(root / "hive_full")
    processor.save_pretrained(root / "hive_full")
    hive.vision_model.save_pretrained(root / "hive_encoder")  # an encoder-only release
    processor.image_processor.save_pretrained(root / "hive_encoder")

    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 50, "max_position_embeddings": 16}
    siglip = SiglipModel(SiglipConfig(vision_config=dict(VISION["siglip"]), text_config=text)).eval()
    siglip.save_pretrained(root / "siglip_two_tower")
    SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(root / "siglip_two_tower")
    clip = CLIPModel(CLIPConfig(vision_config=dict(VISION["clip"]), text_config=text, projection_dim=16)).eval()
    clip.save_pretrained(root / "clip_two_tower")
    CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(
        root / "clip_two_tower"
    )
    return {
        "stock": (vision_path, SiglipVisionModel.from_pretrained(vision_path).eval()),
        "hive_full": (str(root / "hive_full"), hive.vision_model.vision_tower),
        "hive_encoder": (str(root / "hive_encoder"), hive.vision_model.vision_tower),
        "siglip_two_tower": (str(root / "siglip_two_tower"), siglip.vision_model),
        "clip_two_tower": (str(root / "clip_two_tower"), clip.vision_model),
    }


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


COLOURS = {"red": (200, 40, 40), "green": (40, 180, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}


def toy_split(n: int, seed: int, corrupt: int = 0) -> datasets.Dataset:
    """Four classes anyone can tell apart: noisy 16-px pictures of one colour each; `corrupt` unreadable rows first.

    Four classes rather than two: a random head can order two such clusters correctly by luck, not four."""
    rng = np.random.default_rng(seed)
    labels = [i % len(COLOURS) for i in range(n)]
    images = []
    for label in labels:
        base = np.array(list(COLOURS.values())[label], dtype=float)
        images.append(_png(np.clip(base + rng.normal(0, 30, (SIZE, SIZE, 3)), 0, 255)))
    for i in range(corrupt):
        images[i] = {"bytes": b"not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(COLOURS))})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


FAST = {"epochs": 8, "batch_size": 16, "learning_rates": [3e-2], "seeds": [0], "warmup_epochs": 1.0}


@pytest.mark.parametrize("kind", ["stock", "hive_full", "hive_encoder", "siglip_two_tower", "clip_two_tower"])
def test_every_encoder_kind_loads_with_the_features_of_its_source(encoders, kind):
    path, source = encoders[kind]
    model, image_processor = load_encoder(path)
    assert type(model).__name__ == ("CLIPVisionModel" if kind == "clip_two_tower" else "SiglipVisionModel")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert type(image_processor).__name__ in ("SiglipImageProcessorPil", "CLIPImageProcessorPil")
    pixel_values = image_processor(images=[Image.new("RGB", (20, 18), (200, 30, 30))], return_tensors="pt")[
        "pixel_values"
    ]
    assert pixel_values.shape == (1, 3, SIZE, SIZE)
    pixel_values = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    # Frozen like the probe's encoder: torch's attention-pooling fast path runs only when no weight requires grad,
    # and its result differs from the slow path in the last bit.
    source.requires_grad_(False)
    with torch.no_grad():
        ours, theirs = model(pixel_values=pixel_values), source(pixel_values=pixel_values)
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
    assert torch.equal(ours.pooler_output, theirs.pooler_output)


@pytest.mark.parametrize("kind", ["stock", "clip_two_tower"])
def test_features_are_a_blocks_raw_output_without_post_norm_or_class_token(encoders, kind):
    model, _ = load_encoder(encoders[kind][0])
    pixel_values = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)
    blocks = model.config.num_hidden_layers
    first = 1 if kind == "clip_two_tower" else 0  # CLIP's class token comes first and is dropped
    for layer in [*range(blocks + 1), -1, -2, -blocks - 1]:
        tokens = probe_encoders._FrozenEncoder(model, "tokens", layer, SIZE, torch.device("cpu"))(pixel_values)
        expected = out.hidden_states[layer][:, first:]
        assert tokens.shape == (2, (SIZE // 4) ** 2, 32) and torch.equal(tokens, expected), layer
        mean = probe_encoders._FrozenEncoder(model, "mean", layer, SIZE, torch.device("cpu"))(pixel_values)
        assert torch.allclose(mean, expected.mean(dim=1))
    # The default for a stock tower, hidden_states[-2], is not what the tower outputs (SigLIP: its post-norm on top
    # of the last block); the old choice stays available by name, class token included.
    default = probe_encoders._FrozenEncoder(model, "tokens", -2, SIZE, torch.device("cpu"))(pixel_values)
    assert not torch.allclose(default, out.last_hidden_state[:, first:])
    last = probe_encoders._FrozenEncoder(model, "tokens", LAST_HIDDEN_STATE, SIZE, torch.device("cpu"))(pixel_values)
    assert torch.equal(last, out.last_hidden_state)
    if kind == "stock":  # SigLIP: last_hidden_state = post_layernorm(output of the last block)
        assert torch.allclose(last, model.post_layernorm(out.hidden_states[-1]))
    with pytest.raises(ValueError, match=f"--feature_layer {blocks + 1} is not a hidden_states index of a {blocks}"):
        probe_encoders._FrozenEncoder(model, "tokens", blocks + 1, SIZE, torch.device("cpu"))


def test_hive_checkpoints_are_probed_at_their_deepest_tap_and_stock_towers_at_minus_two(encoders, tmp_path):
    torch.manual_seed(0)
    hive = HiveForConditionalGeneration(tiny_config(vision_feature_layers=[1, 3])).eval()  # 4 blocks, taps 1 and 3
    hive.vision_model.save_pretrained(tmp_path / "taps_1_3")
    SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(tmp_path / "taps_1_3")
    assert default_feature_layer(str(tmp_path / "taps_1_3")) == 3
    assert default_feature_layer(encoders["hive_full"][0]) == default_feature_layer(encoders["hive_encoder"][0]) == 4
    assert default_feature_layer(encoders["stock"][0]) == default_feature_layer(encoders["clip_two_tower"][0]) == -2

    paths = [str(tmp_path / "taps_1_3"), encoders["stock"][0]]
    settings = {**FAST, "epochs": 1, "warmup_epochs": 0.0, "augment": False}
    results = run_probe(paths, toy_split(16, 4), toy_split(8, 5), encoder_names=["hive", "stock"], **settings)
    # hidden_states[-2] of the 2-block stock tower is hidden_states[1]
    assert {n: e["features"] for n, e in results["encoders"].items()} == {"hive": "hidden_states[3]",
                                                                          "stock": "hidden_states[1]"}
    chosen = run_probe(paths, toy_split(16, 4), toy_split(8, 5), encoder_names=["hive", "stock"],
                       feature_layer="last_hidden_state", **settings)
    assert {e["features"] for e in chosen["encoders"].values()} == {"last_hidden_state"}
    pooled = run_probe(paths[:1], toy_split(16, 4), toy_split(8, 5), probe="linear", pooling="pooler", **settings)
    assert pooled["encoders"]["taps_1_3"]["features"] == "pooler_output"
    assert "(`" + paths[0] + "`, hidden_states[3])" in probe_module.format_details(results)


def test_recipes_by_name_and_explicit_flags_win():
    paper = ProbeSettings()
    assert (paper.recipe, paper.learning_rates, paper.epochs, paper.weight_decay) == ("paper", [3e-4, 1e-3, 3e-3,
                                                                                                 1e-2, 3e-2], 30, 0.05)
    assert (paper.warmup_epochs, paper.warmup_ratio, paper.bf16) == (1.5, None, False)
    assert paper.warmup_steps(steps_per_epoch=20) == 30  # 1.5 epochs
    authors = ProbeSettings(recipe="authors")
    assert (authors.learning_rates, authors.epochs, authors.weight_decay) == ([2e-4], 5, 0.01)
    assert (authors.warmup_epochs, authors.warmup_ratio, authors.bf16) == (None, 0.03, True)
    assert authors.warmup_steps(steps_per_epoch=20) == 3  # 3% of 5 x 20 steps
    imagenet = ProbeSettings(recipe="authors_imagenet")
    assert (imagenet.learning_rates, imagenet.epochs, imagenet.weight_decay) == ([1e-3], 1, 0.01)
    mine = ProbeSettings(recipe="authors", epochs=2, learning_rates=[0.1], warmup_epochs=0.5)
    assert (mine.epochs, mine.learning_rates, mine.warmup_epochs, mine.warmup_ratio) == (2, [0.1], 0.5, None)
    assert mine.weight_decay == 0.01 and mine.bf16 is True
    assert set(PROBE_RECIPES) == {"paper", "authors", "authors_imagenet"}
    # bf16 only where the device runs it natively: never on CPU
    assert isinstance(probe_encoders._bf16_autocast(torch.device("cpu"), True), type(contextlib.nullcontext()))


def test_linear_probe_pools_the_feature_layer_by_default():
    settings = ProbeSettings(probe="linear")
    assert settings.pooling is None and settings.feature == "mean"
    assert ProbeSettings(probe="linear", pooling="pooler").feature == "pooler"
    assert ProbeSettings(feature_layer="-2").layer == -2 and ProbeSettings(feature_layer="7").layer == 7
    assert ProbeSettings(feature_layer="last_hidden_state").layer == "last_hidden_state"


def test_attentive_head_is_initialised_as_the_authors_and_uses_the_towers_heads(encoders, monkeypatch):
    torch.manual_seed(0)
    head = AttentiveProbeHead(256, 1000, num_heads=4)
    assert head.attention.num_heads == 4
    assert torch.equal(head.norm.weight, torch.ones(256)) and torch.equal(head.norm.bias, torch.zeros(256))
    assert head.query.abs().max() <= math.sqrt(6 / (2 * 256))  # xavier-uniform bound, fan_in = fan_out = 256
    assert head.query.std().item() == pytest.approx(math.sqrt(2 / (2 * 256)), rel=0.15)
    assert torch.equal(head.attention.in_proj_bias, torch.zeros(3 * 256))
    assert torch.equal(head.attention.out_proj.bias, torch.zeros(256))
    out = head.attention.out_proj.weight
    assert out.std().item() == pytest.approx(math.sqrt(1 / 256), rel=0.05)  # lecun-normal: variance 1 / fan_in
    assert out.abs().max() <= 2 * math.sqrt(1 / 256) / 0.87962566103423978  # truncated at two (raw) std
    assert head.classifier.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)

    built = []
    monkeypatch.setattr(probe_heads, "AttentiveProbeHead",
                        lambda *args: built.append(args) or AttentiveProbeHead(*args))
    model, image_processor = load_encoder(encoders["stock"][0])
    probe_encoder(model, image_processor, toy_split(8, 0), toy_split(4, 1), **{**FAST, "epochs": 1, "warmup_epochs": 0.0})
    assert built[0] == (32, 4, model.config.num_attention_heads) == (32, 4, 4)


@pytest.mark.parametrize("probe, augment, kind", [
    ("linear", False, "stock"), ("attentive", True, "stock"), ("linear", True, "clip_two_tower"),
])
def test_probes_learn_a_separable_problem_and_leave_the_encoder_untouched(encoders, probe, augment, kind):
    model, image_processor = load_encoder(encoders[kind][0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = probe_encoder(
        model, image_processor, toy_split(48, 0, corrupt=2), toy_split(24, 1, corrupt=1), probe=probe,
        augment=augment, **FAST,
    )
    assert result["mean"] >= 90.0, result  # chance is 25%
    assert result["skipped_images"] == {"train": 2, "test": 1}
    assert result["num_test"] == 24 and result["class_names"] == list(COLOURS)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_feature_cache_gives_the_same_accuracy_as_running_the_encoder(encoders, tmp_path, monkeypatch):
    model, image_processor = load_encoder(encoders["hive_full"][0])
    train, test = toy_split(48, 2, corrupt=1), toy_split(24, 3)
    settings = {**FAST, "learning_rates": [1e-3, 3e-2], "seeds": [0, 1], "augment": False, "pooling": "mean"}
    plain = probe_encoder(model, image_processor, train, test, probe="linear", **settings)
    cache = tmp_path / "cache"
    cached = probe_encoder(model, image_processor, train, test, probe="linear", feature_cache_dir=str(cache),
                           **settings)
    for key in ("per_seed", "learning_rate", "validation_accuracy", "skipped_images"):
        assert cached[key] == plain[key], key
    assert len(list(cache.glob("*.pt"))) == 2  # train and test

    def no_encoder(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(probe_features, "_compute_cache", no_encoder)
    again = probe_encoder(model, image_processor, train, test, probe="linear", feature_cache_dir=str(cache),
                          **settings)
    assert again["per_seed"] == plain["per_seed"] and again["skipped_images"] == {"train": 1, "test": 0}


def test_seed_mean_and_standard_deviation():
    assert summarize_seeds([80.0, 82.0, 84.0]) == (82.0, 2.0)  # sample standard deviation (n - 1)
    assert summarize_seeds([71.5]) == (71.5, 0.0)
    mean, std = summarize_seeds([50.0, 75.0])
    assert mean == 62.5 and std == pytest.approx(17.677669529663689)
    with pytest.raises(ValueError, match="at least one"):
        summarize_seeds([])


def test_run_probe_reports_per_seed_numbers_consistently(encoders):
    results = run_probe(
        [encoders["stock"][0]], toy_split(32, 4), toy_split(16, 5), encoder_names=["base"], dataset_name="toy",
        probe="linear", augment=False, **{**FAST, "epochs": 2, "seeds": [3, 7]},
    )
    entry = results["encoders"]["base"]
    assert list(entry["per_seed"]) == [3, 7]
    assert entry["mean"] == statistics.fmean(entry["per_seed"].values())
    assert entry["std"] == statistics.stdev(entry["per_seed"].values())
    assert results["dataset"] == "toy" and results["num_classes"] == 4 and results["settings"]["probe"] == "linear"


def test_table_format():
    def run(dataset, **means):
        return {"dataset": dataset, "encoders": {k: {"mean": m, "std": s} for k, (m, s) in means.items()}}

    runs = [run("CIFAR-10", base=(91.234, 0.5), sa=(90.0, 1.25), hive=(92.5, 0.125)),
            run("Pets", base=(80.0, 0.0), hive=(79.0, 2.0))]
    assert format_table(runs) == "\n".join([
        "| Encoder | CIFAR-10 | Pets |",
        "|---|---:|---:|",
        "| base | 91.23 ± 0.50 | **80.00 ± 0.00** |",
        "| sa | 90.00 ± 1.25 | - |",
        "| hive | **92.50 ± 0.12** | 79.00 ± 2.00 |",
    ])
    assert format_table(runs[1], precision=1).splitlines()[2] == "| base | **80.0 ± 0.0** |"


@pytest.mark.parametrize("kwargs, message", [
    ({"augment": True, "feature_cache_dir": "cache"}, "--feature_cache_dir .* --augment False"),
    ({"probe": "knn"}, "--probe must be one of"),
    ({"probe": "attentive", "pooling": "mean"}, "--pooling applies to --probe linear"),
    ({"probe": "linear", "pooling": "cls"}, "--pooling must be one of"),
    ({"seeds": [0, 0]}, "--seeds takes distinct"),
    ({"learning_rates": []}, "--learning_rates"),
    ({"epochs": 2, "warmup_epochs": 2}, "--warmup_epochs must lie in"),
    ({"validation_fraction": 1.0}, "--validation_fraction"),
    ({"crop_scale": [0.8, 0.4]}, "--crop_scale.*crop_scale"),
    ({"probe": "linear", "attentive_num_heads": 2}, "--attentive_num_heads"),
    ({"feature_layer": "block3"}, "--feature_layer takes a hidden_states index .* got 'block3'"),
    ({"probe": "linear", "pooling": "pooler", "feature_layer": "-2"}, "--pooling pooler reads .* drop --feature_layer"),
    ({"recipe": "timm"}, "--recipe must be one of .*'authors_imagenet'"),
    ({"warmup_epochs": 1.0, "warmup_ratio": 0.1}, "Give the warmup once"),
    ({"warmup_ratio": 1.0}, "--warmup_ratio must lie in"),
])
def test_bad_settings_are_rejected_with_the_flag_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProbeSettings(**kwargs)


@pytest.mark.parametrize("argv, message", [
    ([], "--encoders takes one or more"),
    (["--encoders", "a", "b", "--encoder_names", "x"], "--encoder_names must give one distinct name"),
    (["--encoders", "a", "b", "--encoder_names", "x", "x"], "--encoder_names must give one distinct name"),
    (["--encoders", "a", "--test_fraction", "0.2"], "--dataset synthetic has fixed train and test splits"),
    (["--encoders", "a", "--dataset", "d", "--test_fraction", "1.5"], "--test_fraction must lie in"),
    (["--encoders", "a", "--feature_cache_dir", "c"], "--augment False"),
    (["--encoders", "a", "--max_train_samples", "0"], "--max_train_samples must be positive"),
])
def test_script_rejects_bad_flag_combinations(argv, message):
    with pytest.raises(ValueError, match=message):
        probe_cli.parse_args(argv)


@pytest.mark.parametrize("mistake", ["missing_dataset", "missing_encoder", "label_column", "json"])
def test_script_user_errors_print_one_argparse_line_before_any_work(mistake, encoders, tmp_path, monkeypatch,
                                                                     capsys):
    stock = encoders["stock"][0]
    folder = tmp_path / "pets"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        Image.new("RGB", (12, 12), (200, 0, 0)).save(folder / split / "cat" / "0.png")
    argv, words = {
        "missing_dataset": (["--encoders", stock, "--dataset", tmp_path / "no" / "pets"], ["does not exist", "no/pets"]),
        "missing_encoder": (["--encoders", stock, tmp_path / "no_encoder"], ["no_encoder"]),
        "label_column": (["--encoders", stock, "--dataset", folder, "--label_column", "breed"], ["'breed'",
                                                                                                 "--label_column"]),
        "json": ([tmp_path / "probe.json"], ["probe.json", "not valid JSON"]),
    }[mistake]
    (tmp_path / "probe.json").write_text("encoders: [a]")
    out = tmp_path / "out"
    message = user_error("run_probe", [*argv, "--output_dir", out], monkeypatch, capsys)
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()


def test_script_takes_one_json_file_with_flags_overriding_it(tmp_path):
    config = tmp_path / "probe.json"
    config.write_text(json.dumps({"encoders": ["a", "b"], "probe": "linear", "augment": False, "epochs": 5,
                                  "learning_rates": [0.1, 0.01]}))
    encoder_args, data_args, settings, run_args = probe_cli.parse_args([str(config), "--epochs", "7"])
    assert encoder_args.encoders == ["a", "b"] and data_args.dataset == "synthetic"
    assert (settings.probe, settings.augment, settings.epochs, settings.learning_rates) == ("linear", False, 7,
                                                                                            [0.1, 0.01])
    assert settings.batch_size == 512 and settings.max_grad_norm == 3.0 and settings.warmup_epochs == 1.5
    _, _, authors, _ = probe_cli.parse_args(["--encoders", "a", "--recipe", "authors",
                                                           "--feature_layer", "-2"])
    assert (authors.epochs, authors.learning_rates, authors.warmup_ratio, authors.layer) == (5, [2e-4], 0.03, -2)


def test_imagefolder_with_class_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 12), colour).save(folder / f"{i}.png")
    splits = load_probe_datasets(str(tmp_path))
    assert (len(splits["train"]), len(splits["test"])) == (6, 4)
    assert splits["train"].features["label"].names == ["cat", "dog"]
    carved = load_probe_datasets(str(tmp_path / "train"), test_fraction=0.5)
    assert len(carved["train"]) + len(carved["test"]) == 6
    with pytest.raises(ValueError, match="--test_split 'test' is not in"):
        load_probe_datasets(str(tmp_path / "train"))


def test_augmentation_is_deterministic_per_generator_and_sized():
    augmentation = ProbeAugmentation(size=SIZE)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    a, b = (augmentation(image, np.random.default_rng([1, 2, 3])) for _ in range(2))
    c = augmentation(image, np.random.default_rng([1, 2, 4]))
    assert a.size == (SIZE, SIZE) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    hue = ProbeAugmentation(size=8, color_jitter=(0.2, 0.2, 0.2, 0.1))(image, np.random.default_rng(0))
    assert hue.size == (8, 8) and hue.mode == "RGB"
    with pytest.raises(ValueError, match="crop_ratio"):
        ProbeAugmentation(size=8, crop_ratio=(2.0, 1.0))


@pytest.mark.slow
def test_script_end_to_end_on_the_embedded_default(encoders, tmp_path):
    out = tmp_path / "probe"
    args = ["--encoders", encoders["stock"][0], encoders["hive_full"][0], "--encoder_names", "base", "hive",
            "--max_train_samples", "40", "--max_test_samples", "20", "--epochs", "2", "--batch_size", "16",
            "--learning_rates", "0.01", "0.001", "--seeds", "0", "1", "--warmup_epochs", "0.5",
            "--output_dir", out, "--torch_num_threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| Encoder | synthetic shapes |" in proc.stdout
    results = json.loads((out / "probe_results.json").read_text())
    assert results["num_train"] == 40 and results["num_test"] == 20 and results["num_classes"] == 5
    assert list(results["encoders"]) == ["base", "hive"]
    for entry in results["encoders"].values():
        assert set(entry["per_seed"]) == {"0", "1"}
        assert entry["learning_rate"] in (0.01, 0.001) and set(entry["validation_accuracy"]) == {"0.01", "0.001"}
        assert entry["skipped_images"] == {"train": 0, "test": 0}
        assert 0 <= entry["mean"] <= 100 and entry["std"] >= 0
    table = (out / "probe_results.md").read_text()
    assert "| base |" in table and "| hive |" in table and "seed 1:" in table


def test_string_labels_get_one_class_mapping_for_all_splits(encoders):
    def named(split):
        return split.map(lambda row: {"name": list(COLOURS)[row["label"]]}).remove_columns("label")

    model, image_processor = load_encoder(encoders["stock"][0])
    result = probe_encoder(model, image_processor, named(toy_split(48, 0)), named(toy_split(24, 1)), probe="linear",
                           augment=False, label_column="name", **FAST)
    assert result["class_names"] == sorted(COLOURS) and result["mean"] >= 90.0
