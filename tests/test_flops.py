"""FLOP accounting (hive_hf.analysis.flops), memory tracking, and the efficiency benchmark end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import set_gates, tiny_config

from hive_hf import HiveForConditionalGeneration
from hive_hf.analysis.flops import (
    PRESETS,
    EfficiencyShapes,
    analytic_forward_flops,
    build_model,
    count_floor_step,
    count_training_step,
    flop_counter,
    make_batch,
    meta_kernels_available,
)
from hive_hf.analysis.profiling import TensorMemoryTracker, peak_memory_bytes

REPO = Path(__file__).resolve().parents[1]
TINY = PRESETS["tiny"]



def mm(m: int, n: int, k: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: one multiply and one add per term."""
    return 2 * m * n * k


# -- a hand count -----------------------------------------------------------------------------------------------------
def test_one_layer_joint_model_matches_a_hand_count():
    """1-block SigLIP (16 patches of 4x4x3, width 32, MLP 64, 4 heads) -> tap 1 -> 1-layer Llama (width 32, MLP 64,
    4 heads of 8, 2 kv heads, vocab 99), batch 2, 7 text tokens: every product written out."""
    config = tiny_config(vision_feature_layers=[1], cross_attention_layers=[0])
    config.vision_config.num_hidden_layers = 1
    config.text_config.num_hidden_layers = 1
    torch.manual_seed(0)
    b, n, t, heads, hd = 2, 16, 7, 4, 8
    batch = make_batch(config, b, t)

    patch_embedding = mm(b * n, 32, 3 * 4 * 4)
    vision_block = (
        4 * mm(b * n, 32, 32)  # q, k, v, out projections
        + mm(b * n, 64, 32) + mm(b * n, 32, 64)  # MLP fc1, fc2
        + mm(b * heads * n, n, hd) + mm(b * heads * n, hd, n)  # scores, weights @ values
    )
    encoder_forward = patch_embedding + vision_block
    projector = mm(b * n, 32, 32) + mm(b * n, 32, 32)
    image_kv = 2 * mm(b * n, 16, 32)  # 2 kv heads x 8
    s = n + t  # joint: text queries see the image keys and the text keys
    llm_layer = (
        mm(b * t, 32, 32) + 2 * mm(b * t, 16, 32) + mm(b * t, 32, 32)  # q, k, v, o
        + 3 * mm(b * t, 64, 32)  # gate, up, down
        + mm(b * heads * t, s, hd) + mm(b * heads * t, hd, s)
    )
    lm_head = mm(b * t, 99, 32)
    # The LLM's rotary angles: a tiny matmul on some transformers releases (5.6 among them), elementwise on others;
    # no gradient flows through it.
    model = HiveForConditionalGeneration(config).train()
    with flop_counter() as counter:
        model.language_model.model.rotary_emb(torch.zeros(b, t, 32), torch.arange(t)[None])  # no mask: one row
    rotary = counter.get_total_flops()
    llm_forward = projector + image_kv + llm_layer + lm_head + rotary

    model.set_training_stage(3)
    flops = count_training_step(model, batch)
    assert flops.encoder_forward == encoder_forward
    assert flops.llm_forward == llm_forward
    # Backward: every product twice (input and weight gradients; attention: dP, dV, dQ, dK) except the patch
    # embedding, whose input (the pixels) needs no gradient.
    assert flops.llm_backward == 2 * (llm_forward - rotary)
    assert flops.encoder_backward == 2 * encoder_forward - patch_embedding
    assert flops.total == 3 * (encoder_forward + llm_forward) - patch_embedding - 2 * rotary
    analytic = analytic_forward_flops(config, b, t)
    assert analytic["encoder"] == encoder_forward and analytic["llm_side"] == llm_forward - rotary

    # Stage 2: the encoder is frozen (forward only, no grad) and the projector's input needs no gradient.
    model.set_training_stage(2)
    flops = count_training_step(model, batch)
    assert flops.encoder_backward == 0
    assert flops.llm_backward == 2 * (llm_forward - rotary) - mm(b * n, 32, 32)


def test_cpu_attention_kernels_are_counted():
    """torch's counter knows no formula for the fused CPU SDPA kernels; ours counts them like the math path."""
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    k = torch.randn(1, 2, 7, 8, requires_grad=True)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, k).sum().backward()
    unit = mm(2 * 5, 7, 8)
    assert counter.get_total_flops() == 2 * unit + 4 * unit


# -- modes, analytic ratio, meta vs real ------------------------------------------------------------------------------
def test_joint_costs_less_than_concat_llm_side_with_the_analytic_ratio():
    counted = {}
    for fusion in ("joint", "concat"):
        model = build_model(TINY, fusion)
        model.set_training_stage(3)
        counted[fusion] = count_training_step(model, make_batch(model.config, TINY.batch_size, TINY.text_length))
    ratio = counted["joint"].llm_side / counted["concat"].llm_side
    analytic = {f: analytic_forward_flops(TINY.hive_config(f), TINY.batch_size, TINY.text_length) for f in counted}
    predicted = analytic["joint"]["llm_side"] / analytic["concat"]["llm_side"]
    assert ratio < 1
    assert ratio == pytest.approx(predicted, rel=1e-3)  # stage 3: backward = 2 x forward on the LLM side
    # joint runs the encoder up to its deepest tap (block 3 of 4), concat all of it
    for fusion in counted:
        assert counted[fusion].encoder_forward == analytic[fusion]["encoder"]
    assert counted["joint"].encoder < counted["concat"].encoder


def test_paper_shapes_llm_side_ratio_by_formula():
    """The headline number, by formula (the benchmark counts it on the meta device): about 0.16, under 0.17."""
    paper = PRESETS["paper"]
    joint = analytic_forward_flops(paper.hive_config("joint"), 1, 77)
    concat = analytic_forward_flops(paper.hive_config("concat"), 1, 77)
    assert paper.hive_config("joint").vision_feature_layers == [2, 5, 8, 11, 14, 17, 20, 23]  # the authors' list
    assert 0.14 < joint["llm_side"] / concat["llm_side"] < 0.17


@pytest.mark.parametrize("fusion", ["joint", "gated", "concat"])
def test_meta_device_counts_equal_real_device_counts(fusion):
    real = build_model(TINY, fusion)
    set_gates(real, 0.5)
    meta = build_model(TINY, fusion, "meta")
    meta_batch = make_batch(meta.config, TINY.batch_size, TINY.text_length, "meta")
    real_batch = make_batch(real.config, TINY.batch_size, TINY.text_length)
    if not meta_kernels_available(meta, meta_batch)[0]:
        assert fusion == "concat"  # the LLM reads its padding mask's values before choosing SDPA's causal path
        meta = build_model(TINY, fusion, "meta", attn_implementation="eager")
    for stage in (1, 2, 3):
        real.set_training_stage(stage)
        meta.set_training_stage(stage)
        on_cpu, on_meta = count_training_step(real, real_batch), count_training_step(meta, meta_batch)
        if fusion == "joint" and stage == 1:
            # The fused CPU backward also computes dQ of the first fused layer, which nothing needs in stage 1
            # (everything below it is frozen) and autograd's math path on meta skips.
            b, h, t, s, hd = TINY.batch_size, 4, TINY.text_length, TINY.num_image_tokens + TINY.text_length, 16
            assert on_cpu.llm_backward - on_meta.llm_backward == mm(b * h * t, hd, s)
            assert on_cpu.encoder == on_meta.encoder and on_cpu.llm_forward == on_meta.llm_forward
        else:
            assert on_cpu == on_meta, stage
        if fusion == "joint":
            assert count_floor_step(real, real_batch) == count_floor_step(meta, meta_batch)


def test_eager_and_sdpa_count_the_same():
    sdpa, eager = build_model(TINY, "gated"), build_model(TINY, "gated", attn_implementation="eager")
    batch = make_batch(sdpa.config, TINY.batch_size, TINY.text_length)
    for model in (sdpa, eager):
        model.set_training_stage(3)
    assert count_training_step(sdpa, batch) == count_training_step(eager, batch)


def test_floor_is_below_every_fusion():
    batch = None
    floors, steps = {}, {}
    for fusion in ("joint", "gated", "concat"):
        model = build_model(TINY, fusion)
        batch = batch or make_batch(model.config, TINY.batch_size, TINY.text_length)
        for stage in (1, 2, 3):
            model.set_training_stage(stage)
            steps[fusion, stage] = count_training_step(model, batch).total
            if fusion == "joint":
                floors[stage] = count_floor_step(model, batch)
    for (fusion, stage), total in steps.items():
        assert floors[stage].total < total, (fusion, stage)
    assert floors[1].llm_backward == 0  # stage 1: the LLM is frozen, a text-only step has no backward
    assert floors[3].encoder_backward > 0


def test_shapes_validation_names_the_field():
    with pytest.raises(ValueError, match="num_taps"):
        EfficiencyShapes(num_taps=40)
    with pytest.raises(ValueError, match="patch_size"):
        EfficiencyShapes(image_size=100, patch_size=16)


# -- memory -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_tensor_memory_tracker_follows_allocations_and_frees(device):
    with TensorMemoryTracker() as tracker:
        a = torch.ones(256, 256, device=device)  # 256 KiB
        b = a @ a  # 256 KiB more
        view = b[:10]  # no new storage
        del a
        c = b * 2  # 512 KiB live again
        del b, c, view
    assert tracker.peak_bytes == 2 * 256 * 256 * 4
    assert tracker.live_bytes == 0


def test_peak_memory_of_a_step_counts_parameters_and_grows_with_the_batch():
    model = build_model(TINY, "joint")
    model.set_training_stage(3)
    params = sum(p.numel() * 4 for p in model.parameters())
    grads = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)

    def step(batch_size):
        batch = make_batch(model.config, batch_size, TINY.text_length)
        return peak_memory_bytes(lambda: model(**batch).loss.backward(), model)

    small, large = step(1), step(8)
    assert small > params + grads  # parameters + the trainable ones' gradients + activations
    assert large > small


# -- the benchmark, end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_runs_tiny_end_to_end_and_writes_json(tmp_path):
    out = tmp_path / "tiny.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_efficiency.py"), "--preset", "tiny", "--threads", "1",
           "--warmup", "0", "--repeats", "1", "--generation_image_sizes", "16", "32", "--generation_new_tokens", "2",
           "--generation_repeats", "1", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| joint |" in proc.stdout and "| concat |" in proc.stdout and "**Targets**" in proc.stdout
    record = json.loads(out.read_text())
    assert record["environment"]["transformers"] and out.with_suffix(".md").read_text().startswith("**HIVE")
    results = record["results"]
    assert results["measured"] and results["count_device"] == "cpu"
    assert set(results["stages"]) == {"1", "2", "3"}
    for rows in results["stages"].values():
        assert set(rows) == {"joint", "gated", "concat", "floor"}
        for row in rows.values():
            assert row["flops"]["total"] == row["flops"]["encoder"] + row["flops"]["llm_side"] > 0
            assert row["median_step_seconds"] > 0 and row["peak_bytes"] > 0
        assert rows["joint"]["flops"]["llm_side"] < rows["concat"]["flops"]["llm_side"]
    assert results["meta_vs_device_max_relative_difference"] < 0.01
    assert results["generation"]["image_tokens"] == [4, 16]
    assert len(results["generation"]["joint"]) == 2
    assert any("LLM-side" in t["target"] for t in results["targets"])


def test_views_of_tensors_made_before_do_not_count():
    weight = torch.ones(256, 256)  # like a parameter: exists before the step
    with TensorMemoryTracker() as tracker:
        transposed = weight.t()  # a view: no allocation
        weight.mul_(1.0)  # in place: no allocation
        out = transposed @ weight  # 256 KiB
    assert tracker.peak_bytes == 256 * 256 * 4
    del out, transposed
