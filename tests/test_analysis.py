"""Gradient flow into the encoder and text-to-image attention maps (hive_hf.analysis), and their commands."""

import json
import math

import pytest
import torch
from PIL import Image
from tiny import set_gates, tiny_config, tiny_inputs, tiny_model
from transformers import SiglipImageProcessorPil

from hive_hf import HiveForConditionalGeneration, HiveProcessor
from hive_hf.analysis import (
    AttentionMaps,
    GradientFlow,
    attention_map_grid,
    attention_summary,
    encoder_gradient_flow,
    find_token_positions,
    gradient_flow_table,
    plot_attention_maps,
    plot_gradient_maps,
    summarize_flows,
    text_to_image_attention,
)
from hive_hf.analysis.attention_maps import _entropy_and_spread
from hive_hf.cli import attention_maps as attention_maps_cli
from hive_hf.cli import gradient_flow as gradient_flow_cli
from hive_hf.data.synthetic import COLORS, NUMBER_WORDS, POSITIONS, SHAPES, shapes_caption
from hive_hf.tiny_backbones import build_word_tokenizer


def eager(**kwargs) -> HiveForConditionalGeneration:
    config = tiny_config(**kwargs)
    config.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    return HiveForConditionalGeneration(config).eval()


# -- gradient flow ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion, taps", [("joint", [1, 2]), ("gated", [2, 3]), ("concat", [4])])
def test_gradient_norms_per_layer(fusion, taps):
    kwargs = {"vision_feature_layers": taps} if fusion != "concat" else {}
    model = tiny_model(fusion=fusion, **kwargs)
    set_gates(model, 0.5)  # a closed gate passes no gradient to the image path
    model.set_training_stage(1)  # the encoder frozen: the analysis must still see its gradients, then restore
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    inputs = tiny_inputs(model.config)
    flow = encoder_gradient_flow(model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])

    assert flow.layers == [1, 2, 3, 4] and flow.tapped_layers == taps
    assert len(flow.hidden_grad_norms) == len(flow.param_grad_norms) == 4
    assert all(math.isfinite(v) for v in flow.hidden_grad_norms + flow.param_grad_norms)
    deepest = max(taps)
    for layer in flow.layers:
        reached = layer <= deepest
        assert (flow.hidden_grad_norms[layer - 1] > 0) == reached, layer
        assert (flow.param_grad_norms[layer - 1] > 0) == reached, layer
    assert flow.patch_maps.shape == (4, 2, 4, 4)  # layers, images, 16 px / 4 px patches
    assert torch.all(flow.patch_maps[deepest:] == 0) and torch.all(flow.patch_maps[:deepest].sum((-1, -2)) > 0)
    # The per-patch maps are the same gradient: their squares add up to the layer's norm.
    squares = flow.patch_maps.pow(2).sum((1, 2, 3)).sqrt()
    torch.testing.assert_close(squares, torch.tensor(flow.hidden_grad_norms), rtol=1e-4, atol=1e-12)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_gradient_maps_drop_the_class_token():
    model = tiny_model(vision="clip")
    inputs = tiny_inputs(model.config)
    flow = encoder_gradient_flow(model, inputs["pixel_values"], inputs["input_ids"])
    assert flow.patch_maps.shape == (4, 2, 4, 4)


def test_gradient_flow_table_is_relative_to_the_deepest_tap():
    model = tiny_model(vision_feature_layers=[1, 3])
    inputs = tiny_inputs(model.config)
    flow = encoder_gradient_flow(model, inputs["pixel_values"], inputs["input_ids"])
    relative = flow.relative(flow.hidden_grad_norms)
    assert relative[2] == 1.0 and relative[3] == 0.0
    table = gradient_flow_table({"hive": flow, "again": flow})
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    assert len(rows) == 4 and rows[0].split(" | ")[0] == "| 1" and "*" in rows[0] and "*" not in rows[1]


def test_gradient_map_png(tmp_path):
    model = tiny_model()
    inputs = tiny_inputs(model.config)
    flow = encoder_gradient_flow(model, inputs["pixel_values"], inputs["input_ids"])
    path = plot_gradient_maps({"a": flow, "b": flow}, torch.rand(16, 16, 3).numpy(), tmp_path / "g.png")
    with Image.open(path) as image:
        width, height = image.size
    assert width > 1.5 * height  # 2 rows of 5 panels


# -- attention maps ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_attention_maps_shapes_and_sums(fusion):
    model = tiny_model(fusion=fusion)
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config)
    maps = text_to_image_attention(model, inputs["pixel_values"], inputs["input_ids"], [1, 3, -1])
    assert maps.positions == [1, 3, 6]
    assert maps.layers == [1, 3] and maps.vision_layers == [2, 4]
    assert maps.maps.shape == (3, 2, 4, 4)  # tokens x fused layers x patch grid
    torch.testing.assert_close(maps.maps.sum((-1, -2)), torch.ones(3, 2))
    if fusion == "gated":  # attends to the image only: every row of its softmax is on the image
        torch.testing.assert_close(maps.image_mass, torch.ones(3, 2))
    else:  # image columns + causal text columns share one softmax
        assert torch.all(maps.image_mass > 0) and torch.all(maps.image_mass < 1)
    assert maps.entropy.shape == maps.spread.shape == maps.peak.shape == (3, 2)
    assert torch.all((maps.entropy >= 0) & (maps.entropy <= 1 + 1e-6))


def test_joint_image_mass_is_what_the_text_leaves():
    """joint's softmax covers image + causal text: image mass + text mass = 1 per query, checked against eager."""
    model = eager(fusion="joint")
    inputs = tiny_inputs(model.config)
    maps = text_to_image_attention(model, inputs["pixel_values"], inputs["input_ids"], [0])
    # The first token sees only itself among the text: its text mass is that one weight (layer 1's own attentions).
    with torch.no_grad():
        text = model(**inputs, output_attentions=True).attentions[1]
    text_mass = text[0, :, 0, :].sum(-1).mean()
    torch.testing.assert_close(maps.image_mass[0, 0] + text_mass, torch.tensor(1.0))


def test_concat_needs_chosen_layers_and_drops_the_class_token():
    model = eager(fusion="concat", vision="clip")
    inputs = tiny_inputs(model.config)
    maps = text_to_image_attention(model, inputs["pixel_values"], inputs["input_ids"], [2, 4], layers=[0, 3])
    assert maps.maps.shape == (2, 2, 4, 4) and maps.layers == [0, 3]
    torch.testing.assert_close(maps.maps.sum((-1, -2)), torch.ones(2, 2))
    with pytest.raises(ValueError, match="return no image attention"):
        text_to_image_attention(model, inputs["pixel_values"], inputs["input_ids"], [2], layers=[7])


def test_entropy_spread_and_peak_are_zero_for_one_patch_and_maximal_for_uniform():
    one = torch.zeros(4, 4)
    one[1, 2] = 1
    uniform = torch.full((4, 4), 1 / 16)
    entropy, spread = _entropy_and_spread(torch.stack([one, uniform]))
    torch.testing.assert_close(entropy, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(spread, torch.tensor([0.0, math.sqrt(2 * (16 - 1) / 12) / 4]))


def test_attention_grid_and_png(tmp_path):
    model = tiny_model()
    inputs = tiny_inputs(model.config)
    maps = text_to_image_attention(model, inputs["pixel_values"], inputs["input_ids"], [2, 5, 6],
                                   token_names=["a", "b", "c"])
    grid = attention_map_grid(maps, (32, 32))
    assert grid.shape == (3, 2, 32, 32)  # rows: tokens, columns: fused layers
    path = plot_attention_maps(maps, torch.rand(32, 32, 3).numpy(), tmp_path / "a.png")
    with Image.open(path) as image:
        width, height = image.size
    assert height > width  # 3 rows of 2 panels
    rows = attention_summary(maps)
    assert [r["llm_layer"] for r in rows] == [1, 3]
    assert isinstance(maps, AttentionMaps)


def test_find_token_positions():
    tokenizer = build_word_tokenizer(["two red circles in the top left."])
    ids = tokenizer("two red circles in the top left.", return_tensors="pt")["input_ids"]  # <s> two red ...
    assert find_token_positions(tokenizer, ids, ["red", "Circles", "2", "-1"]) == [2, 3, 2, ids.shape[1] - 1]
    with pytest.raises(ValueError, match="not in the tokenized caption"):
        find_token_positions(tokenizer, ids, ["square"])


# -- the commands on saved checkpoints --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    captions = [shapes_caption(s, c, k, p) for s in SHAPES for c in COLORS for k in NUMBER_WORDS for p in POSITIONS]
    paths = {}
    for fusion in ("joint", "concat"):
        model = tiny_model(fusion=fusion)
        processor = HiveProcessor.for_model_config(
            model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}), build_word_tokenizer(captions))
        model.resize_token_embeddings(len(processor.tokenizer))
        model.config.text_config.vocab_size = len(processor.tokenizer)
        paths[fusion] = root / fusion
        model.save_pretrained(paths[fusion])
        processor.save_pretrained(paths[fusion])
    return paths


def test_gradient_flow_command(checkpoints, tmp_path, capsys):
    png, out = tmp_path / "g.png", tmp_path / "g.json"
    flows = gradient_flow_cli.main(["--hive", str(checkpoints["joint"]), "--baseline", str(checkpoints["concat"]),
                                    "--output", str(png), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "two red circles in the top left." in printed
    assert printed.count("\n| ") == 1 + 4  # header + one row per encoder layer (the separator starts with "|-")
    assert set(flows) == {"HIVE (joint)", "SA (concat)"} and png.exists()
    assert len(json.loads(out.read_text())["SA (concat)"]["hidden_grad_norms"]) == 4


def test_gradient_flow_command_over_batches_reports_the_spread(checkpoints, tmp_path, capsys):
    out = tmp_path / "g.json"
    gradient_flow_cli.main(["--hive", str(checkpoints["joint"]), "--baseline", str(checkpoints["concat"]),
                            "--output", str(tmp_path / "g.png"), "--json", str(out), "--batches", "3",
                            "--batch_size", "4"])
    assert "Over 3 batches of 4 synthetic images" in capsys.readouterr().out
    summary = json.loads(out.read_text())["HIVE (joint)"]["over_batches"]
    assert summary["num_batches"] == 3 and len(summary["hidden_std"]) == 4
    assert any(s > 0 for s in summary["hidden_std"][:3])  # different batches, different gradients


def test_summarize_flows_by_hand():
    def flow(values):
        maps = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [0.0, 0.0]]]])  # (layers, B, 2, 2)
        return GradientFlow(layers=[1, 2], tapped_layers=[2], hidden_grad_norms=values, param_grad_norms=values,
                            patch_maps=maps, loss=0.0)

    summary = summarize_flows([flow([4.0, 2.0]), flow([2.0, 2.0])])
    assert summary.hidden_mean == [3.0, 2.0] and summary.relative_mean == [1.5, 1.0]
    assert summary.hidden_std[1] == 0.0 and abs(summary.hidden_std[0] - 2 ** 0.5) < 1e-12
    assert abs(summary.relative_std[0] - 0.5 ** 0.5) < 1e-12 and summary.num_batches == 2
    assert summary.entropy_mean == [1.0, 0.0]  # even over the four patches; all on one


def test_attention_maps_command(checkpoints, tmp_path, capsys):
    png = tmp_path / "a.png"
    maps = attention_maps_cli.main([str(checkpoints["joint"]), "--caption", "two red circles in the top left.",
                                    "--tokens", "red", "circles", "--output", str(png)])
    printed = capsys.readouterr().out
    assert maps.tokens == ["red", "circles"] and maps.layers == [1, 3] and png.exists()
    assert "2 rows x 2 columns" in printed and "entropy" in printed
    concat = attention_maps_cli.main([str(checkpoints["concat"]), "--tokens", "red", "--layers", "0", "2",
                                      "--output", str(png)])
    assert concat.maps.shape == (1, 2, 4, 4)
