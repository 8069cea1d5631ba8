"""HiveVisionEncoderModel and HiveForConditionalGeneration on tiny configs (SigLIP/CLIP x Llama/Qwen, 3 fusions)."""

import logging

import pytest
import torch
from tiny import AUTHORS, FUSIONS, TEXT, move_new_norms, set_gates, tiny_config, tiny_inputs, tiny_model
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    SiglipVisionModel,
)
from transformers.utils import logging as hf_logging

from hive_hf import HiveConfig, HiveForConditionalGeneration, HiveVisionEncoderModel
from hive_hf.modeling_hive import (
    CHECKPOINTING,
    HiveGatedCrossAttention,
    HiveImageContext,
    HiveJointAttention,
    HiveTextPlacement,
    _attend,
)

torch.set_grad_enabled(True)
ATOL = 1e-5
# Each fusion with today's defaults, and joint fusion with the authors' released options.
VARIANTS = {fusion: {"fusion": fusion} for fusion in FUSIONS} | {"joint-authors": {"fusion": "joint", **AUTHORS}}


def plain_llm(model: HiveForConditionalGeneration) -> torch.nn.Module:
    """The LLM the HIVE model was built from, without fusion, holding the same weights."""
    llm = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    new = (".cross_attn.", ".image_", ".hive_")  # HIVE's own weights inside the LLM
    state = {k: v for k, v in model.language_model.state_dict().items() if not any(n in k for n in new)}
    llm.load_state_dict(state)
    return llm


# -- vision encoder ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vision", ["siglip", "clip"])
def test_encoder_features_match_the_towers_hidden_states(vision):
    config = tiny_config(vision=vision, vision_feature_layers=[0, 2, 3], cross_attention_layers=[0, 1, 3])
    encoder = HiveVisionEncoderModel(config).eval()
    pixels = tiny_inputs(config)["pixel_values"]
    out = encoder(pixels, output_hidden_states=True)
    assert len(out.hierarchical_features) == 3
    for feature, index in zip(out.hierarchical_features, config.vision_feature_layers):
        torch.testing.assert_close(feature, out.hidden_states[index])
    fast = encoder(pixels, features_only=True)
    assert fast.last_hidden_state is None
    for a, b in zip(fast.hierarchical_features, out.hierarchical_features):
        torch.testing.assert_close(a, b)


def test_features_only_stops_after_the_deepest_tapped_layer():
    config = tiny_config(vision_feature_layers=[1, 2], cross_attention_layers=[1, 3])
    encoder = HiveVisionEncoderModel(config).eval()
    calls = []
    for i, block in enumerate(encoder.vision_tower.encoder.layers):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    encoder(tiny_inputs(config)["pixel_values"], features_only=True)
    assert calls == [0, 1]
    calls.clear()
    encoder(tiny_inputs(config)["pixel_values"])
    assert calls == [0, 1, 2, 3]


@pytest.mark.parametrize("vision, cls", [("siglip", SiglipVisionModel), ("clip", CLIPVisionModel)])
def test_to_base_model_is_the_stock_tower_with_equal_outputs(vision, cls, tmp_path):
    config = tiny_config(vision=vision)
    encoder = HiveVisionEncoderModel(config).eval()
    base = encoder.to_base_model()
    assert type(base) is cls
    pixels = tiny_inputs(config)["pixel_values"]
    ours, theirs = encoder(pixels), base(pixel_values=pixels)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output)
    # It saves as a stock checkpoint that plain AutoModel loads with no remote code.
    base.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is cls
    torch.testing.assert_close(reloaded(pixel_values=pixels).pooler_output, theirs.pooler_output)


# -- full model: forward ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("vision, text", [("siglip", "llama"), ("clip", "qwen3"), ("siglip", "qwen2"), ("clip", "mistral")])
def test_forward_shapes_and_loss(vision, text, fusion):
    model = tiny_model(vision=vision, text=text, fusion=fusion)
    inputs = tiny_inputs(model.config)
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (2, 7, model.config.text_config.vocab_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    if fusion != "concat":
        assert len(out.image_key_values) == len(model.config.cross_attention_layers)
        key, value = out.image_key_values[0]
        assert key.shape == (2, 2, model.config.num_image_tokens, 8) and value.shape == key.shape


def test_structure_attributes():
    for fusion, count in [("joint", 2), ("gated", 2), ("concat", 1)]:
        model = tiny_model(fusion=fusion)
        assert isinstance(model.vision_model, HiveVisionEncoderModel)
        assert len(model.projectors) == count
        assert model.language_model.__class__.__name__ == "LlamaForCausalLM"
    joint = tiny_model(fusion="joint")
    assert [type(layer.self_attn) is HiveJointAttention for layer in joint.language_model.model.layers] == [
        False, True, False, True]


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_pixels_it_is_the_plain_llm(variant):
    model = tiny_model(**VARIANTS[variant])
    inputs = tiny_inputs(model.config)
    ours = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    theirs = plain_llm(model)(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("text", ["llama", "qwen3"])
def test_gated_at_init_equals_the_base_llm(text):
    model = tiny_model(fusion="gated", text=text)
    inputs = tiny_inputs(model.config)
    ours = model(**inputs).logits
    theirs = plain_llm(model)(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    set_gates(model, 0.5)
    assert not torch.allclose(model(**inputs).logits, theirs, atol=1e-3)


def test_image_changes_the_output_in_joint_and_concat():
    for fusion in ("joint", "concat"):
        model = tiny_model(fusion=fusion)
        inputs = tiny_inputs(model.config)
        other = dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"]))
        assert not torch.allclose(model(**inputs).logits, model(**other).logits, atol=1e-4)


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("text", ["llama", "qwen3"])
def test_joint_equals_a_naive_reference(text, separate):
    """Explicit image+text key/value concatenation and an explicit softmax, from the module's own weights.
    (The authors' options are checked against their own code in test_authors_reference.py.)"""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_model(fusion="joint", text=text, image_kv="separate" if separate else "shared",
                       vision_feature_layers=[3], cross_attention_layers=[2])
    if separate:  # make the separate projections differ from the shared ones, so the test can tell them apart
        torch.nn.init.normal_(model.language_model.model.layers[2].self_attn.image_k_proj.weight)
    inputs = tiny_inputs(model.config)
    llm = model.language_model.model
    layer = llm.layers[2]
    attn = layer.self_attn
    cfg = model.config.text_config
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim

    captured = {}
    layer.register_forward_hook(lambda m, a, kw, out: captured.update(out=out), with_kwargs=True)
    layer.register_forward_pre_hook(lambda m, a, kw: captured.update(inp=a[0] if a else kw["hidden_states"],
                                                                      pos=kw["position_embeddings"]), with_kwargs=True)
    model(**inputs)

    with torch.no_grad():
        feat = model.vision_model.vision_tower(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        image = model.projectors[0](feat.hidden_states[3])  # (B, N, D)
        image = layer.input_layernorm(image)
        h = captured["inp"]
        x = layer.input_layernorm(h)
        b, t, _ = x.shape
        n = image.shape[1]

        def heads_of(proj, states, count, norm=None):
            out = proj(states).view(states.shape[0], states.shape[1], count, head_dim)
            return (norm(out) if norm is not None else out).transpose(1, 2)

        q = heads_of(attn.q_proj, x, heads, attn.q_norm)
        k = heads_of(attn.k_proj, x, kv_heads, attn.k_norm)
        v = heads_of(attn.v_proj, x, kv_heads)
        q, k = apply_rotary_pos_emb(q, k, *captured["pos"])
        ik = heads_of(attn.image_k_proj if separate else attn.k_proj, image, kv_heads, attn.k_norm)
        iv = heads_of(attn.image_v_proj if separate else attn.v_proj, image, kv_heads)
        keys = torch.cat([ik, k], 2).repeat_interleave(heads // kv_heads, 1)
        values = torch.cat([iv, v], 2).repeat_interleave(heads // kv_heads, 1)
        scores = q @ keys.transpose(-1, -2) / head_dim**0.5  # (B, H, T, N + T)
        causal = torch.ones(t, t).tril().bool()
        allowed = torch.cat([torch.ones(t, n, dtype=torch.bool), causal], 1)
        scores = scores.masked_fill(~allowed, float("-inf"))
        mixed = (scores.softmax(-1) @ values).transpose(1, 2).reshape(b, t, -1)
        h = h + attn.o_proj(mixed)
        expected = h + layer.mlp(layer.post_attention_layernorm(h))
    torch.testing.assert_close(captured["out"], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_sdpa_and_eager_agree(fusion):
    config = tiny_config(fusion=fusion)
    torch.manual_seed(0)
    sdpa = HiveForConditionalGeneration(config).eval()
    set_gates(sdpa, 0.7)
    eager_config = tiny_config(fusion=fusion)
    eager_config.text_config._attn_implementation = "eager"
    eager = HiveForConditionalGeneration(eager_config).eval()
    eager.load_state_dict(sdpa.state_dict())
    inputs = tiny_inputs(config)
    inputs["attention_mask"][0, :2] = 0  # left padding in the first row
    keep = inputs["attention_mask"].bool()  # padded positions' outputs are undefined in either kernel
    torch.testing.assert_close(sdpa(**inputs).logits[keep], eager(**inputs).logits[keep], atol=ATOL, rtol=0)


def test_concat_sdpa_and_eager_agree_and_attentions_need_eager(caplog):
    torch.manual_seed(0)
    sdpa = HiveForConditionalGeneration(tiny_config(fusion="concat")).eval()
    cfg = tiny_config(fusion="concat")
    cfg.text_config._attn_implementation = "eager"
    eager = HiveForConditionalGeneration(cfg).eval()
    eager.load_state_dict(sdpa.state_dict())
    inputs = tiny_inputs(cfg)
    torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, atol=ATOL, rtol=0)
    # As transformers does for sdpa: a warning, no weights, and the outputs computed all the same.
    logging.Logger.warning_once.cache_clear()
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            warned = sdpa(**inputs, output_attentions=True)
    finally:
        hf_logging.disable_propagation()
    assert "attn_implementation='eager'" in caplog.text
    assert warned.image_attentions is None
    torch.testing.assert_close(warned.logits, eager(**inputs).logits, atol=ATOL, rtol=0)
    out = eager(**inputs, output_attentions=True)
    n = cfg.num_image_tokens
    assert len(out.image_attentions) == cfg.text_config.num_hidden_layers
    assert out.image_attentions[0].shape == (2, 4, 7, n)


@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_output_attentions_are_text_to_image_weights(fusion):
    model = tiny_model(fusion=fusion)
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config)
    out = model(**inputs, output_attentions=True)
    n = model.config.num_image_tokens
    assert len(out.image_attentions) == 2
    for weights in out.image_attentions:
        assert weights.shape == (2, 4, 7, n)
        assert (weights >= 0).all()
        total = weights.sum(-1)
        if fusion == "gated":  # cross-attention over image tokens only: rows sum to one
            torch.testing.assert_close(total, torch.ones_like(total))
        else:  # joint: image share of a softmax that also covers the causal text
            assert (total < 1).all() and (total > 0).all()
    # the weights the model returns do not change its outputs
    torch.testing.assert_close(out.logits, model(**inputs).logits, atol=ATOL, rtol=0)


# -- padding ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_gives_per_sample_results_of_unpadded_runs(variant, side):
    model = tiny_model(**VARIANTS[variant])
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config, seq=7)
    short = inputs["input_ids"][1, :4]
    ids = inputs["input_ids"].clone()
    mask = torch.ones_like(ids)
    if side == "left":
        ids[1] = torch.cat([torch.zeros(3, dtype=ids.dtype), short])
        mask[1, :3] = 0
        valid = slice(3, 7)
    else:
        ids[1] = torch.cat([short, torch.zeros(3, dtype=ids.dtype)])
        mask[1, 4:] = 0
        valid = slice(0, 4)
    batched = model(pixel_values=inputs["pixel_values"], input_ids=ids, attention_mask=mask).logits
    alone0 = model(pixel_values=inputs["pixel_values"][:1], input_ids=ids[:1]).logits
    alone1 = model(pixel_values=inputs["pixel_values"][1:], input_ids=short[None]).logits
    torch.testing.assert_close(batched[0], alone0[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(batched[1, valid], alone1[0], atol=1e-4, rtol=0)


# -- concat placeholders ------------------------------------------------------------------------------------------------
def test_concat_placeholders_equal_prepending_and_are_not_in_the_loss():
    model = tiny_model(fusion="concat", image_token_id=98)
    inputs = tiny_inputs(model.config)
    inputs["input_ids"][inputs["input_ids"] == 98] = 97
    n = model.config.num_image_tokens
    with_slots = torch.cat([torch.full((2, n), 98), inputs["input_ids"]], 1)
    a = model(pixel_values=inputs["pixel_values"], input_ids=with_slots, labels=with_slots)
    b = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], labels=inputs["input_ids"])
    assert a.logits.shape[1] == n + 7 and b.logits.shape[1] == 7  # logits align with input_ids
    torch.testing.assert_close(a.logits[:, n:], b.logits, atol=ATOL, rtol=0)
    # Image positions never count: the two losses average over the same text targets.
    torch.testing.assert_close(a.loss, b.loss, atol=ATOL, rtol=0)


def test_input_errors_are_loud():
    model = tiny_model(fusion="joint")
    inputs = tiny_inputs(model.config)
    with pytest.raises(ValueError, match="3 images .* 2 text sequences"):
        model(pixel_values=torch.randn(3, 3, 16, 16), input_ids=inputs["input_ids"])
    kv = model(**inputs).image_key_values
    with pytest.raises(ValueError, match="either `pixel_values` or `image_key_values`"):
        model(**inputs, image_key_values=kv)
    concat = tiny_model(fusion="concat", image_token_id=98)
    ids = inputs["input_ids"].clone()
    ids[:, :3] = 98
    with pytest.raises(ValueError, match=r"6 image placeholder tokens .* 2 x 16 = 32"):
        concat(pixel_values=inputs["pixel_values"], input_ids=ids)


# -- gradients --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [*FUSIONS, "joint-authors"])
def test_every_parameter_receives_a_gradient(variant):
    options = VARIANTS[variant] if variant == "joint-authors" else {"fusion": variant}
    if variant == "joint":
        options["image_kv"] = "separate"
    model = tiny_model(**options).train()
    model.config.training_stage = 2  # the authors' separate image k/v are in use from stage 2
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    # The last tapped layer's output feeds nothing after it but the post norm / pooling head, which HIVE skips.
    unused = ("post_layernorm", ".head.")
    missing = [n for n, p in model.named_parameters() if p.grad is None and not any(u in n for u in unused)]
    assert missing == []
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert zero == [] or all("embed_tokens" in n for n in zero)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_parameters_hive_never_runs_are_frozen_from_the_start(fusion):
    """The tower's blocks after the deepest tap, its post norm and pooling head get no gradient in any HIVE forward:
    they are frozen at construction, as in every training stage, and every other parameter is trainable."""
    model = tiny_model(fusion=fusion, vision_feature_layers=[1] if fusion == "concat" else [1, 2])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == model._unused_vision_parameters()
    assert any(".encoder.layers.3." in n for n in frozen) and any("post_layernorm" in n for n in frozen)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_gradient_checkpointing_gives_the_same_gradients(fusion):
    model = tiny_model(fusion=fusion).train()
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config)

    def grads():
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    getattr(model, f"{CHECKPOINTING}_enable")(**{f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}})
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert any("vision_model" in n for n in checkpointed)  # gradients reach the encoder through checkpointed blocks
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-5, rtol=1e-4, msg=name)


# -- how the image reaches the fused layers ---------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_one_image_context_reaches_every_decoder_layer(fusion):
    """forward hands the LLM one HiveImageContext under `hive_image`; every decoder layer receives that object, whose
    image keys/values are the ones the output returns and in which each fused layer records its image attention."""
    model = tiny_model(fusion=fusion)
    received = []
    for layer in model.language_model.model.layers:
        layer.register_forward_pre_hook(lambda m, a, kw: received.append(kw.get("hive_image")), with_kwargs=True)
    out = model(**tiny_inputs(model.config), output_attentions=True)
    assert len(received) == model.config.text_config.num_hidden_layers
    image = received[0]
    assert isinstance(image, HiveImageContext) and all(r is image for r in received)
    assert image.key_values is out.image_key_values
    assert len(image.image_attentions) == len(out.image_attentions) == len(model.config.cross_attention_layers)


def test_the_image_context_moves_to_a_device_as_accelerate_moves_layer_inputs():
    """With the LLM split across devices, accelerate moves each layer's inputs by calling `.to`: the image goes to
    the layer's device, the recorders stay shared."""
    send_to_device = pytest.importorskip("accelerate.utils").send_to_device
    key_values = ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)),)
    placement = HiveTextPlacement(torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool))
    image = HiveImageContext(key_values=key_values, placement=placement, image_attentions=[], text_attentions=[])
    moved = send_to_device({"hive_image": image}, "meta")["hive_image"]
    assert all(t.is_meta for t in (*moved.key_values[0], moved.placement.cos, moved.placement.sees_image))
    assert moved.placement.sees_image.dtype == torch.bool
    assert moved.image_attentions is image.image_attentions and moved.text_attentions is image.text_attentions
    assert not image.key_values[0][0].is_meta


# -- generation ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_with_and_without_cache_is_identical(variant):
    model = tiny_model(**VARIANTS[variant])
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(**inputs, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert cached.shape == (2, 13)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_generate_computes_image_keys_once(fusion):
    model = tiny_model(fusion=fusion)
    calls = []
    model.vision_model.vision_tower.embeddings.register_forward_hook(lambda *_: calls.append(1))
    model.generate(**tiny_inputs(model.config), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert len(calls) == 1


def test_generate_without_image_is_the_llm():
    model = tiny_model(fusion="joint")
    inputs = tiny_inputs(model.config)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    ours = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
    theirs = plain_llm(model).generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
    assert ours.tolist() == theirs.tolist()


# -- save / load --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_reload_give_equal_logits(variant, tmp_path):
    # a class-token tower (CLIP) has no patch grid for the authors' 2-D image rotary
    model = tiny_model(vision="siglip" if variant == "joint-authors" else "clip", text="qwen3", **VARIANTS[variant])
    set_gates(model, 0.3)
    move_new_norms(model)
    model.config.training_stage = 2  # the authors' separate image k/v in use
    inputs = tiny_inputs(model.config)
    before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_hive.py", "modeling_hive.py"} <= names
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HiveForConditionalGeneration
    torch.testing.assert_close(reloaded(**inputs).logits, before, atol=0, rtol=0)
    for key in ("projector_type", "qk_norm", "image_rope", "image_position", "image_kv", "llm_train_scope"):
        assert getattr(reloaded.config, key) == getattr(model.config, key), key
    # AutoModel on the same folder gives the encoder with its trained weights.
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is HiveVisionEncoderModel
    for (n1, p1), (n2, p2) in zip(encoder.state_dict().items(), model.vision_model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_an_encoder_only_checkpoint_does_not_load_as_the_full_model(tmp_path):
    """An encoder-only release holds no LLM: loading it as the full model is an error, not a random LLM."""
    model = tiny_model()
    model.vision_model.save_pretrained(tmp_path / "encoder")
    config = HiveConfig.from_pretrained(tmp_path / "encoder")
    config.encoder_only = True  # as an encoder-only release writes it
    config.save_pretrained(tmp_path / "encoder")
    for load in (HiveForConditionalGeneration.from_pretrained, AutoModelForImageTextToText.from_pretrained):
        with pytest.raises(ValueError, match="no language-model weights.*HiveVisionEncoderModel"):
            load(tmp_path / "encoder")
    assert type(AutoModel.from_pretrained(tmp_path / "encoder")) is HiveVisionEncoderModel
    model.save_pretrained(tmp_path / "full")  # a full checkpoint still loads, with its loading report when asked
    reloaded, info = HiveForConditionalGeneration.from_pretrained(tmp_path / "full", output_loading_info=True)
    assert type(reloaded) is HiveForConditionalGeneration and not info["missing_keys"]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_checkpoint_missing_weights_loads_with_a_missing_keys_report(fusion, tmp_path):
    """Only a config that says encoder-only is refused: any other checkpoint that lacks weights (here the base model,
    the encoder, saved alone, as transformers' own tests do) loads as every model does, with the weights it lacks in
    the loading report, and the weights it has in place."""
    model = tiny_model(fusion=fusion)
    model.base_model.save_pretrained(tmp_path)
    loaded, info = HiveForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is HiveForConditionalGeneration
    assert info["missing_keys"] and all(not key.startswith("vision_model.") for key in info["missing_keys"])
    assert any(key.startswith("language_model.") for key in info["missing_keys"])
    for name, param in model.vision_model.state_dict().items():
        assert torch.equal(loaded.vision_model.state_dict()[name], param)
    assert isinstance(HiveForConditionalGeneration.from_pretrained(tmp_path), HiveForConditionalGeneration)


def test_gates_missing_from_a_checkpoint_start_at_zero(tmp_path):
    """transformers 5 runs `_init_weights` on modules the checkpoint does not provide: gates must come back zero."""
    joint = tiny_model(fusion="joint")
    joint.save_pretrained(tmp_path)
    config = HiveConfig.from_pretrained(tmp_path)
    config.fusion = "gated"
    gated = HiveForConditionalGeneration.from_pretrained(tmp_path, config=config)
    gates = [p for n, p in gated.named_parameters() if n.endswith("cross_attn.gate")]
    assert len(gates) == 2 and all(torch.equal(g, torch.zeros_like(g)) for g in gates)
    norms = [m.norm.weight for m in gated.modules() if isinstance(m, HiveGatedCrossAttention)]
    assert all(torch.equal(w, torch.ones_like(w)) for w in norms)


def test_tied_embeddings_follow_the_llm(tmp_path):
    tied = tiny_model(text="llama")
    assert tied.language_model.lm_head.weight is tied.language_model.model.embed_tokens.weight
    untied = tiny_model(text="qwen2")
    assert untied.language_model.lm_head.weight is not untied.language_model.model.embed_tokens.weight
    tied.save_pretrained(tmp_path)
    again = HiveForConditionalGeneration.from_pretrained(tmp_path)
    assert again.language_model.lm_head.weight is again.language_model.model.embed_tokens.weight


# -- composing from pretrained checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_from_vision_text_pretrained_keeps_both_weights_exactly(fusion, tmp_path):
    from tiny import VISION
    from transformers import LlamaConfig, SiglipConfig, SiglipModel

    torch.manual_seed(1)
    two_tower = SiglipModel(SiglipConfig(vision_config=VISION["siglip"], text_config={
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 50}))
    two_tower.save_pretrained(tmp_path / "siglip")
    llm = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in TEXT["llama"].items() if k != "model_type"}))
    llm.save_pretrained(tmp_path / "llm")

    kwargs = {} if fusion == "concat" else {"vision_feature_layers": [2, 4], "cross_attention_layers": [1, 3]}
    model = HiveForConditionalGeneration.from_vision_text_pretrained(
        str(tmp_path / "siglip"), str(tmp_path / "llm"), fusion=fusion,
        image_kv="separate" if fusion == "joint" else None, **kwargs)
    vision_state = two_tower.vision_model.state_dict()
    ours = model.vision_model.vision_tower.state_dict()
    assert vision_state.keys() == ours.keys()
    assert all(torch.equal(vision_state[k], ours[k]) for k in vision_state)
    text_state = llm.state_dict()  # the LLM keeps its parameter names in every fusion
    ours = model.language_model.state_dict()
    assert all(torch.equal(text_state[k], ours[k]) for k in text_state)
    if fusion == "joint":
        attn = model.language_model.model.layers[1].self_attn
        assert torch.equal(attn.image_k_proj.weight, attn.k_proj.weight)
        assert attn.image_k_proj.weight is not attn.k_proj.weight
    inputs = tiny_inputs(model.config)
    if fusion == "gated":  # zero gates: exactly the pretrained LLM
        torch.testing.assert_close(model(**inputs).logits, llm(input_ids=inputs["input_ids"]).logits, atol=ATOL, rtol=0)


def test_joint_rejects_attention_kernels_without_masks():
    config = tiny_config(fusion="joint")
    config.text_config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation"):
        HiveForConditionalGeneration(config)


def test_attend_matches_sdpa():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    allowed = torch.rand(2, 1, 5, 9) > 0.3
    allowed[..., 0] = True
    a, _ = _attend(q, k, v, allowed, 8**-0.5, 0.0, need_weights=False)
    b, w = _attend(q, k, v, allowed, 8**-0.5, 0.0, need_weights=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert w.shape == (2, 4, 5, 9) and (w[~allowed.expand_as(w)] == 0).all()


# -- the authors' options -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_rope", ["2d", "1d", "none"])
def test_text_before_the_image_does_not_see_it(image_rope):
    model = tiny_model(image_rope=image_rope, image_position=3)
    inputs = tiny_inputs(model.config)
    other = dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"]))
    a, b = model(**inputs).logits, model(**other).logits
    if image_rope == "none":  # no place in the text: every token sees the image
        assert (a - b).abs().amax(-1).min() > 1e-4
    else:
        torch.testing.assert_close(a[:, :3], b[:, :3], atol=0, rtol=0)
        assert (a[:, 3:] - b[:, 3:]).abs().amax(-1).min() > 1e-4


def test_image_rope_shifts_the_fused_layers_text_positions_only():
    """The fused layers see text after the image sqrt(N) (2d) or N (1d) positions later; other layers do not."""
    model = tiny_model(image_rope="2d", image_position=1)
    n = model.config.num_image_tokens
    captured = []
    for layer in model.language_model.model.layers:
        layer.self_attn.register_forward_pre_hook(lambda m, a, kw: captured.append(kw), with_kwargs=True)
    model(**tiny_inputs(model.config, batch=1, seq=4))
    placement = captured[1]["hive_image"].placement
    rotary = model.language_model.model.rotary_emb
    weight = model.get_input_embeddings().weight
    expected = rotary(weight, torch.tensor([[0, 1 + 4, 2 + 4, 3 + 4]]))  # sqrt(16) = 4
    torch.testing.assert_close(placement.cos, expected[0])
    torch.testing.assert_close(placement.sin, expected[1])
    assert placement.sees_image.tolist() == [[False, True, True, True]]
    unshifted = rotary(weight, torch.arange(4)[None])
    torch.testing.assert_close(captured[0]["position_embeddings"][0], unshifted[0])
    model.config.image_rope = "1d"
    captured.clear()
    model(**tiny_inputs(model.config, batch=1, seq=4))
    expected = rotary(weight, torch.tensor([[0, 1 + n, 2 + n, 3 + n]]))
    torch.testing.assert_close(captured[1]["hive_image"].placement.cos, expected[0])


def test_ln_mlp_projector_is_the_authors():
    model = tiny_model(projector_type="ln_mlp")
    projector = model.projectors[0]
    fan_in, fan_out = projector.linear_1.in_features, projector.linear_1.out_features
    bound = (6 / (fan_in + fan_out)) ** 0.5  # xavier-uniform
    for linear in (projector.linear_1, projector.linear_2):
        assert linear.weight.abs().max() <= bound and linear.weight.std() > bound / 3
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert torch.equal(projector.norm.weight, torch.ones(32)) and projector.norm.eps == 1e-6  # the LLM's rms_norm_eps
    x = torch.randn(2, 5, 32)
    expected = projector.linear_2(torch.nn.functional.gelu(projector.linear_1(torch.nn.functional.layer_norm(
        x, (32,), projector.norm.weight, projector.norm.bias, 1e-6))))
    torch.testing.assert_close(projector(x), expected)  # no residual
    residual = tiny_model(projector_type="mlp_residual").projectors[0]
    hidden = residual.linear_1(x)
    torch.testing.assert_close(residual(x), residual.linear_2(residual.act(hidden)) + hidden)
    assert residual.norm is None and residual.linear_1.weight.std() < 0.03  # normal(0.02)


def test_qk_norms_are_new_weights_of_one_in_the_fused_layers_only():
    model = tiny_model(qk_norm=True, text="qwen3")
    for i, layer in enumerate(model.language_model.model.layers):
        attn = layer.self_attn
        if i in model.config.cross_attention_layers:
            assert torch.equal(attn.hive_q_norm.weight, torch.ones(8)) and attn.hive_k_norm.variance_epsilon == 1e-6
            assert attn.q_norm is not attn.hive_q_norm  # Qwen3 keeps its own (before the rotary)
        else:
            assert not hasattr(attn, "hive_q_norm")


# -- a Llama-shaped LM published with its own model type ------------------------------------------------------------
def write_mobilellm_like(folder, seed=0):
    """What facebook/MobileLLM-* look like: `model_type: mobilellm` with `auto_map` into custom code, Llama weight
    names, `share_embedding` (no `lm_head.weight` stored) with `tie_word_embeddings: false`."""
    import json

    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TEXT["llama"].items() if k != "model_type"}))
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in llama.state_dict().items() if k != "lm_head.weight"},
              folder / "model.safetensors", metadata={"format": "pt"})
    config = {k: v for k, v in llama.config.to_dict().items() if k not in ("tie_word_embeddings", "architectures")}
    config.update(model_type="mobilellm", architectures=["MobileLLMForCausalLM"], share_embedding=True,
                  tie_word_embeddings=False, auto_map={
                      "AutoConfig": "configuration_mobilellm.MobileLLMConfig",
                      "AutoModelForCausalLM": "modeling_mobilellm.MobileLLMForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_mobilellm.py").write_text("raise ImportError('custom code must not run')\n")
    (folder / "modeling_mobilellm.py").write_text("raise ImportError('custom code must not run')\n")
    return llama


def test_a_mobilellm_layout_loads_as_llama_by_an_explicit_choice(tmp_path):
    from tiny import VISION
    from transformers import SiglipVisionConfig, SiglipVisionModel

    llama = write_mobilellm_like(tmp_path / "mobilellm").eval()
    vision = SiglipVisionModel(SiglipVisionConfig(**{k: v for k, v in VISION["siglip"].items() if k != "model_type"}))
    vision.save_pretrained(tmp_path / "siglip")
    with pytest.raises(ValueError, match="trust_remote_code|mobilellm"):  # not without the choice
        HiveForConditionalGeneration.from_vision_text_pretrained(str(tmp_path / "siglip"), str(tmp_path / "mobilellm"))
    model = HiveForConditionalGeneration.from_vision_text_pretrained(
        str(tmp_path / "siglip"), str(tmp_path / "mobilellm"), text_model_type="llama", fusion="gated",
        vision_feature_layers=[2, 4], cross_attention_layers=[1, 3]).eval()
    text = model.config.text_config
    assert text.model_type == "llama" and text.tie_word_embeddings and not hasattr(text, "auto_map")
    lm = model.language_model
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.lm_head.weight is lm.model.embed_tokens.weight
    llama.tie_weights()  # the MobileLLM the folder holds: its head is its input embedding
    llama.lm_head.weight = llama.model.embed_tokens.weight
    ids = tiny_inputs(model.config)["input_ids"]
    torch.testing.assert_close(model(input_ids=ids).logits, llama(input_ids=ids).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="text_model_type"):
        HiveForConditionalGeneration.from_vision_text_pretrained(
            str(tmp_path / "siglip"), str(tmp_path / "mobilellm"), text_model_type="mobilellm")
    config_file = tmp_path / "mobilellm" / "config.json"
    config_file.write_text(config_file.read_text().replace('"num_hidden_layers": 4', '"num_hidden_layers": 5'))
    with pytest.raises(ValueError, match="does not load as 'llama'.*missing keys"):
        HiveForConditionalGeneration.from_vision_text_pretrained(
            str(tmp_path / "siglip"), str(tmp_path / "mobilellm"), text_model_type="llama")
