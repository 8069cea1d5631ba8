"""What every transformers model keeps, kept by ours: outputs, `None` flags, `return_dict`, `shift_labels`,
`get_image_features`, the tensor-parallel plan, checkpointing, generation from a cache, and pipelines."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import AUTHORS, FUSIONS, move_new_norms, set_gates, tiny_config, tiny_inputs, tiny_model
from transformers import AutoModelForCausalLM, DynamicCache, SiglipImageProcessorPil, pipeline
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hive_hf import HiveForConditionalGeneration, HiveProcessor, HiveVisionEncoderModel
from hive_hf.modeling_hive import CACHE_NAME, CHECKPOINTING
from hive_hf.tiny_backbones import build_word_tokenizer

ATOL = 1e-5
WORDS = ["two red circles in the top left .", "one blue square ."]


def eager_model(fusion: str, **kwargs) -> HiveForConditionalGeneration:
    """A tiny model whose LLM and tower return attention weights (eager), gates open."""
    config = tiny_config(fusion=fusion, **kwargs)
    config._attn_implementation = "eager"  # reaches the LLM's and the tower's configs
    torch.manual_seed(0)
    model = HiveForConditionalGeneration(config).eval()
    set_gates(model, 0.5)
    return model


def plain_llm(model: HiveForConditionalGeneration) -> torch.nn.Module:
    llm = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    state = {k: v for k, v in model.language_model.state_dict().items() if ".cross_attn." not in k and ".image_" not in k}
    llm.load_state_dict(state)
    return llm


# -- 1. attentions -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_attentions_have_one_entry_per_llm_layer(fusion):
    model = eager_model(fusion)
    inputs = tiny_inputs(model.config)
    out = model(**inputs, output_attentions=True)
    layers = model.config.text_config.num_hidden_layers
    assert len(out.attentions) == layers
    for weights in out.attentions:  # concat: over the caller's sequence, not the image tokens prepended to it
        assert weights.shape == (2, 4, 7, 7)
    # a fused layer's softmax covers image and text keys (concat: every layer's): the two parts make up each row
    fused = range(layers) if fusion == "concat" else model.config.cross_attention_layers
    if fusion != "gated":
        for i, layer in enumerate(fused):
            total = out.attentions[layer].sum(-1) + out.image_attentions[i].sum(-1)
            torch.testing.assert_close(total, torch.ones_like(total))


@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_attentions_without_an_image_are_the_plain_llms(fusion):
    model = eager_model(fusion)
    inputs = tiny_inputs(model.config)
    ours = model(input_ids=inputs["input_ids"], output_attentions=True).attentions
    theirs = plain_llm(model)(input_ids=inputs["input_ids"], output_attentions=True).attentions
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_generate_returns_attentions(fusion, mode):
    model = eager_model(fusion)
    inputs = tiny_inputs(model.config)
    kwargs = {"greedy": {}, "sample": {"do_sample": True}, "beam": {"num_beams": 2}}[mode]
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=3, output_attentions=True, return_dict_in_generate=True,
                         **kwargs)
    attentions = out.attentions
    assert len(attentions) == 3  # one entry per generated token
    assert all(len(step) == model.config.text_config.num_hidden_layers for step in attentions)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_assisted_decoding_runs_and_matches_greedy(fusion):
    model = eager_model(fusion)
    inputs = {k: v[:1] for k, v in tiny_inputs(model.config).items()}
    greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assisted = model.generate(**inputs, max_new_tokens=4, do_sample=False, assistant_model=model,
                              output_attentions=True, return_dict_in_generate=True)
    assert torch.equal(assisted.sequences, greedy)
    assert assisted.attentions


def every_layer_fused(fusion: str, gates: float = 0.0) -> HiveForConditionalGeneration:
    """A 2-layer LLM whose every layer is fused (concat: a 2-layer LLM), built as transformers' common tests build
    models that return attentions: `_from_config(config, attn_implementation="eager")`."""
    layers = {"vision_feature_layers": [4]} if fusion == "concat" else \
        {"vision_feature_layers": [2, 4], "cross_attention_layers": [0, 1]}
    config = tiny_config(fusion=fusion, **layers)
    config.text_config.num_hidden_layers = 2
    torch.manual_seed(0)
    model = HiveForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    set_gates(model, gates)
    return model


@pytest.mark.parametrize("fusion, gates", [("joint", 0.0), ("gated", 0.0), ("gated", 0.5)])
def test_attentions_and_hidden_states_keep_their_gradients_when_every_layer_is_fused(fusion, gates):
    """One attention entry per LLM layer also when every layer is fused, and the first hidden state and attentions
    are the tensors the outputs are computed from: their gradients can be read (`retain_grad`)."""
    model = every_layer_fused(fusion, gates)
    out = model(**tiny_inputs(model.config), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and len(out.hidden_states) == 3
    assert all(weights.shape == (2, 4, 7, 7) for weights in out.attentions)
    first, weights = out.hidden_states[0], out.attentions[0]
    first.retain_grad()
    weights.retain_grad()
    out.logits.flatten()[0].backward()
    assert first.grad is not None and weights.grad is not None


GENERATE_EVERYTHING = {"output_scores": True, "output_logits": True, "output_attentions": True,
                       "output_hidden_states": True, "return_dict_in_generate": True}


def check_generate_outputs(out, prompt: torch.Tensor, new: int, layers: int, batch: int) -> None:
    """As transformers' generation tests check them: the sequences are the caller's prompt followed by `new` tokens,
    with one score, logit, attention and hidden-state entry per new token, each over the caller's sequence."""
    length = prompt.shape[1]
    assert torch.equal(out.sequences[:, :length], prompt.repeat_interleave(batch // prompt.shape[0], dim=0))
    assert out.sequences.shape == (batch, length + new)
    assert len(out.scores) == len(out.logits) == len(out.attentions) == len(out.hidden_states) == new
    for step, (attentions, hidden_states) in enumerate(zip(out.attentions, out.hidden_states)):
        queries = length if step == 0 else 1
        assert len(attentions) == layers and len(hidden_states) == layers + 1
        assert all(a.shape == (batch, 4, queries, length + step) for a in attentions), [a.shape for a in attentions]
        assert all(h.shape == (batch, queries, 32) for h in hidden_states)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_generate_outputs_cover_the_callers_sequence(fusion, mode):
    """concat prepends the image when the text has no placeholders; generate's outputs still describe the caller's
    sequence alone, as they do for joint and gated."""
    model = every_layer_fused(fusion, gates=0.5)
    inputs = tiny_inputs(model.config)
    kwargs = {"greedy": {}, "sample": {"do_sample": True}, "beam": {"num_beams": 2, "num_return_sequences": 2}}[mode]
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, **GENERATE_EVERYTHING, **kwargs)
    batch = 2 * kwargs.get("num_return_sequences", 1)
    if mode == "beam":  # beam outputs hold the beams of every step; the sequences are still prompt + new tokens
        assert torch.equal(out.sequences[:, :7], inputs["input_ids"].repeat_interleave(2, dim=0))
        assert out.sequences.shape == (batch, 10) and len(out.scores) == 3
        assert all(a.shape[-1] == 7 + step for step, layers in enumerate(out.attentions) for a in layers)
    else:
        check_generate_outputs(out, inputs["input_ids"], new=3, layers=2, batch=batch)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_assisted_decoding_returns_every_output_when_every_layer_is_fused(fusion):
    model = every_layer_fused(fusion, gates=0.5)
    inputs = {k: v[:1] for k, v in tiny_inputs(model.config).items()}
    greedy = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, **GENERATE_EVERYTHING)
    model.generation_config.num_assistant_tokens = 2
    model.generation_config.num_assistant_tokens_schedule = "constant"
    assisted = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, assistant_model=model,
                              **GENERATE_EVERYTHING)
    assert torch.equal(assisted.sequences, greedy.sequences)
    for out in (greedy, assisted):
        check_generate_outputs(out, inputs["input_ids"], new=4, layers=2, batch=1)


def test_encoder_returns_the_towers_attentions():
    config = tiny_config()
    config.vision_config._attn_implementation = "eager"
    encoder = HiveVisionEncoderModel(config).eval()
    out = encoder(tiny_inputs(config)["pixel_values"], output_attentions=True)
    assert len(out.attentions) == config.vision_config.num_hidden_layers
    assert out.attentions[0].shape == (2, 4, 16, 16)


@pytest.mark.parametrize("fusion", ["joint", "gated"])
def test_hidden_states_start_with_the_embeddings_when_layer_0_is_fused(fusion):
    """`hidden_states[0]` is the input embeddings, as in every transformers LM, also when the first decoder layer
    takes the image (gated: its cross-attention runs before the layer; the rest are the layers' outputs)."""
    model = tiny_model(fusion=fusion, cross_attention_layers=[0, 2])
    set_gates(model, 0.5)
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        blind = model(input_ids=inputs["input_ids"], output_hidden_states=True)
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    torch.testing.assert_close(out.hidden_states[0], embeddings, atol=0, rtol=0)
    torch.testing.assert_close(blind.hidden_states[0], embeddings, atol=0, rtol=0)
    assert not torch.allclose(out.hidden_states[1], blind.hidden_states[1], atol=1e-4)  # layer 0 did see the image


# -- 2, 3. `None` flags use the config; return_dict=False ------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_none_flags_fall_back_to_the_config(fusion):
    model = eager_model(fusion)
    inputs = tiny_inputs(model.config)
    assert model(**inputs).hidden_states is None and model(**inputs).attentions is None
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    out = model(**inputs)
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert len(out.attentions) == model.config.text_config.num_hidden_layers
    assert model(**inputs, output_hidden_states=False, output_attentions=False).hidden_states is None
    model.config.return_dict = False
    assert isinstance(model(**inputs), tuple)


def test_encoder_none_flags_fall_back_to_the_config():
    config = tiny_config()
    encoder = HiveVisionEncoderModel(config).eval()
    pixels = tiny_inputs(config)["pixel_values"]
    assert encoder(pixels).hidden_states is None
    encoder.config.output_hidden_states = True
    assert len(encoder(pixels).hidden_states) == config.vision_config.num_hidden_layers + 1
    encoder.config.return_dict = False
    assert isinstance(encoder(pixels), tuple)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_return_dict_false_gives_the_same_values_as_a_tuple(fusion):
    model = tiny_model(fusion=fusion)
    inputs = tiny_inputs(model.config)
    as_dict = model(**inputs, labels=inputs["input_ids"])
    as_tuple = model(**inputs, labels=inputs["input_ids"], return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    encoder_tuple = model.vision_model(inputs["pixel_values"], return_dict=False)
    torch.testing.assert_close(encoder_tuple[0], model.vision_model(inputs["pixel_values"]).last_hidden_state)


# -- 4. shift_labels ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", [*FUSIONS, "concat_placeholders"])
def test_shift_labels_give_the_loss_of_labels(fusion):
    model = tiny_model(fusion=fusion.removesuffix("_placeholders"))
    inputs = tiny_inputs(model.config)
    labels = inputs["input_ids"].clone()
    if fusion == "concat_placeholders":
        n = model.config.num_image_tokens
        placeholders = torch.full((2, n), model.config.resolved_image_token_id)
        inputs["input_ids"] = torch.cat([inputs["input_ids"][:, :1], placeholders, inputs["input_ids"][:, 1:]], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        labels = inputs["input_ids"].clone()
    shift_labels = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    expected = labels.clone()
    if fusion == "concat":  # prepended image: the first text token's label is not among the shifted labels
        expected[:, 0] = -100
    with torch.no_grad():
        by_shift = model(**inputs, shift_labels=shift_labels).loss
        by_labels = model(**inputs, labels=expected).loss
    assert by_shift is not None
    torch.testing.assert_close(by_shift, by_labels)


# -- 5. get_image_features ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_get_image_features_follows_the_contract(fusion):
    model = tiny_model(fusion=fusion)
    config = model.config
    pixels = tiny_inputs(config)["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixels)
        full = model.get_image_features(pixels, output_hidden_states=True)
        as_tuple = model.get_image_features(pixels, return_dict=False)
        taps = model.vision_model(pixels, output_hidden_states=True).hidden_states
    assert isinstance(out, BaseModelOutputWithPooling) and isinstance(as_tuple, tuple)
    torch.testing.assert_close(out.last_hidden_state, taps[max(config.vision_feature_layers)])
    projected = [model.projectors[i](taps[layer]) for i, layer in enumerate(config.vision_feature_layers)]
    if fusion == "concat":
        torch.testing.assert_close(out.pooler_output, projected[0])
    else:  # per image, the tapped layers' projected tokens one after another
        torch.testing.assert_close(out.pooler_output, torch.cat(projected, dim=1))
    assert out.hidden_states is None
    assert len(full.hidden_states) == config.vision_config.num_hidden_layers + 1
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_image_features_have_one_entry_per_image(fusion):
    """`pooler_output` has one `(tokens, width)` entry per image, whatever the number of tapped layers, as
    transformers' VLMs return it (generation expands it per beam along the batch); the forward returns it as
    `image_outputs`."""
    model = tiny_model(fusion=fusion)
    inputs = tiny_inputs(model.config, batch=3)
    with torch.no_grad():
        pooled = model.get_image_features(inputs["pixel_values"]).pooler_output
        out = model(**inputs)
    taps = len(model.config.vision_feature_layers)
    assert len(pooled) == 3
    assert pooled[0].shape == (taps * model.config.num_image_tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(out.image_outputs.pooler_output, pooled)


# -- 6. the LLM keeps its names: checkpoint keys and tensor-parallel plan -----------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_llm_parameter_names_and_tp_plan_survive_fusion(fusion):
    model = tiny_model(fusion=fusion)
    llm_keys = set(plain_llm(model).state_dict())
    ours = {k for k in model.language_model.state_dict() if ".cross_attn." not in k and ".image_" not in k}
    assert ours == llm_keys
    patterns = [re.compile(re.escape(p).replace(r"\*", r"\d+") + r"$") for p in model._tp_plan]
    planned = [n for n, m in model.language_model.named_modules() if isinstance(m, torch.nn.Linear)
               and ".layers." in n and ".cross_attn." not in n and ".image_" not in n]
    planned = [f"language_model.{n}" for n in planned]
    assert planned
    unmatched = [n for n in planned if not any(p.match(n) for p in patterns)]
    assert not unmatched, unmatched


TENSOR_PARALLEL_SCRIPT = Path(__file__).with_name("torchrun_tensor_parallel.py")


@pytest.mark.slow
def test_tensor_parallel_on_two_processes_gives_the_single_process_logits(tmp_path):
    """Each fusion, and joint with the authors' separate image k/v (stage 2), loaded with `tp_plan="auto"` on two
    CPU processes: the LLM is sharded, and logits and greedy tokens are those of one process."""
    # An untied LM head (transformers 5.14 shards a tied one twice, plain Llama too) with an even vocabulary (5.14 on
    # requires equal shards)
    options = {"joint": {}, "gated": {"fusion": "gated"}, "concat": {"fusion": "concat"},
               "joint_authors_stage2": AUTHORS}
    models = {name: tiny_model(text="qwen2", **kwargs) for name, kwargs in options.items()}
    models["joint_authors_stage2"].set_training_stage(2)
    for model in models.values():
        model.resize_token_embeddings(100)
        set_gates(model, 0.5)
        move_new_norms(model)
    with torch.no_grad():
        for param in models["joint_authors_stage2"].parameters():  # the image k/v copies now differ from the text's
            param.add_(0.05 * torch.randn_like(param))
    for name, model in models.items():
        model.eval().save_pretrained(tmp_path / name)
        inputs = tiny_inputs(model.config)
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            shapes = {n: tuple(param.shape) for n, param in model.named_parameters()}
            torch.save((inputs, model(**inputs).logits, tokens, shapes), tmp_path / f"{name}.pt")
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(TENSOR_PARALLEL_SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert set(report) == set(models)
        for name, result in report.items():
            assert result["world"] == 2 and result["sharded"] > 0, (name, result)
            assert result["logits"] < 1e-5 and result["tokens_equal"], (name, result)
        assert report["joint_authors_stage2"]["sharded_image_kv"] == ["image_k_proj", "image_v_proj"]


# -- 8. a list-valued output_hidden_states -----------------------------------------------------------------------------
def test_encoder_keeps_only_the_requested_hidden_states():
    config = tiny_config()
    encoder = HiveVisionEncoderModel(config).eval()
    pixels = tiny_inputs(config)["pixel_values"]
    every = encoder(pixels, output_hidden_states=True).hidden_states
    some = encoder(pixels, output_hidden_states=[0, -1]).hidden_states
    assert len(some) == len(every)
    assert [i for i, h in enumerate(some) if h is not None] == [0, len(every) - 1]
    torch.testing.assert_close(some[0], every[0])
    torch.testing.assert_close(some[-1], every[-1])


# -- 9. reentrant checkpointing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_reentrant_checkpointing_raises_where_it_cannot_work(fusion):
    model = tiny_model(fusion=fusion).train()
    enable = getattr(model, f"{CHECKPOINTING}_enable")
    if fusion == "concat":  # image tokens are in the hidden states: reentrant recomputation works
        enable(**{f"{CHECKPOINTING}_kwargs": {"use_reentrant": True}})
        inputs = tiny_inputs(model.config)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        assert model.projectors[0].linear_1.weight.grad is not None
    else:
        with pytest.raises(ValueError, match="use_reentrant"):
            enable(**{f"{CHECKPOINTING}_kwargs": {"use_reentrant": True}})


# -- 10. continuing from a cache keeps the image -----------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_old_cache_name_warns_where_transformers_deprecates_it(fusion):
    """From 5.24 on `past_key_values` is the deprecated name of `cache`, and the library's models say so when given
    it; before, it is the only name and nothing is said. Either way the cache is used."""
    model = tiny_model(fusion=fusion)
    inputs = tiny_inputs(model.config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(**inputs, past_key_values=DynamicCache(), use_cache=True)
    deprecated = [w for w in caught if "`past_key_values` is deprecated" in str(w.message)]
    assert len(deprecated) == (1 if CACHE_NAME == "cache" else 0)
    assert getattr(out, CACHE_NAME).get_seq_length() > 0



def with_image_weights_moved(fusion: str) -> HiveForConditionalGeneration:
    """A tiny model (`joint_authors`: joint with the authors' options) whose gates and new norms are off their
    init values, so that the image changes what it computes."""
    options = AUTHORS if fusion == "joint_authors" else {}
    model = tiny_model(fusion=fusion.removesuffix("_authors"), **options)
    set_gates(model, 0.5)
    move_new_norms(model)
    return model


@pytest.mark.parametrize("fusion", [*FUSIONS, "joint_authors"])
def test_continuing_from_a_cache_keeps_the_image(fusion):
    model = with_image_weights_moved(fusion)
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        full = model(**inputs).logits
        prefix = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"][:, :4],
                       attention_mask=inputs["attention_mask"][:, :4], use_cache=True)
        # no pixel_values, no image_key_values: only the cache this model returned
        rest = model(input_ids=inputs["input_ids"][:, 4:], attention_mask=inputs["attention_mask"],
                     use_cache=True, **{CACHE_NAME: getattr(prefix, CACHE_NAME)})
    torch.testing.assert_close(rest.logits, full[:, 4:], atol=ATOL, rtol=0)
    if fusion != "concat":  # without the image the continuation would differ: the test can tell
        with torch.no_grad():
            blind = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        assert not torch.allclose(blind[:, 4:], full[:, 4:], atol=1e-3)


@pytest.mark.parametrize("fusion", [*FUSIONS, "joint_authors"])
def test_generate_continues_from_a_returned_cache_with_the_image(fusion):
    model = with_image_weights_moved(fusion)
    inputs = tiny_inputs(model.config)
    if fusion == "concat":  # the cache holds the image positions: the sequence must too (HiveProcessor's placeholders)
        placeholders = torch.full((2, model.config.num_image_tokens), model.config.resolved_image_token_id)
        inputs["input_ids"] = torch.cat([placeholders, inputs["input_ids"]], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    once = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    mask = torch.ones_like(first.sequences)
    then = model.generate(input_ids=first.sequences, attention_mask=mask, max_new_tokens=3, do_sample=False,
                          **{CACHE_NAME: getattr(first, CACHE_NAME)})
    assert torch.equal(then, once)


# -- 11. pipelines -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    model = tiny_model(fusion="joint")
    set_gates(model, 0.5)
    processor = HiveProcessor.for_model_config(model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}),
                                               build_word_tokenizer(WORDS))
    model.save_pretrained(root / "full")
    processor.save_pretrained(root / "full")
    model.vision_model.save_pretrained(root / "encoder")
    processor.image_processor.save_pretrained(root / "encoder")
    return root, model, processor


def test_image_text_to_text_pipeline_equals_calling_the_model(saved):
    root, model, processor = saved
    image = Image.new("RGB", (20, 20), (200, 30, 30))
    generator = pipeline("image-text-to-text", model=str(root / "full"), trust_remote_code=True)
    result = generator(images=image, text="two red", max_new_tokens=4, generate_kwargs={"do_sample": False})
    batch = processor(images=[image], text=["two red"])
    ids = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert result[0]["generated_text"] == processor.decode(ids[0], skip_special_tokens=True)


def test_image_feature_extraction_pipeline_equals_calling_the_encoder(saved):
    root, model, processor = saved
    image = Image.new("RGB", (20, 20), (200, 30, 30))
    extractor = pipeline("image-feature-extraction", model=str(root / "encoder"), trust_remote_code=True)
    features = extractor(image, return_tensors=True)
    with torch.no_grad():
        expected = model.vision_model(processor.image_processor(images=[image], return_tensors="pt")["pixel_values"])
    torch.testing.assert_close(features, expected.last_hidden_state)
