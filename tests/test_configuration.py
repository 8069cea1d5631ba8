"""HiveConfig: builds bare, round-trips, derives the paper's layer rule, and rejects bad values by name."""

import pytest
from tiny import TEXT, VISION, tiny_config

from hive_hf import HiveConfig
from hive_hf.configuration_hive import select_vision_layers, spread_layers


def test_builds_with_no_arguments_with_paper_defaults():
    config = HiveConfig()
    assert config.vision_config.model_type == "siglip_vision_model"
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1024, 24)
    assert config.vision_config.image_size == 384 and config.num_image_tokens == 576
    assert config.text_config.model_type == "llama" and config.text_config.hidden_size == 960
    assert config.fusion == "joint" and config.connection_density == 0.25
    # 25% of 24 SigLIP layers, taken from the later half; paired shallow to shallow over 32 LLM layers.
    assert config.vision_feature_layers == [14, 16, 18, 20, 22, 24]
    assert config.cross_attention_layers == [4, 10, 15, 20, 26, 31]
    assert config.tie_word_embeddings is True
    # today's behaviour stays the default; the authors' options are opt-in (examples/configs/authors_florence.json)
    assert config.projector_type == "mlp_residual" and config.qk_norm is False and config.image_rope == "none"
    assert config.image_kv == ["shared", "shared", "shared"] and config.llm_train_scope == "all"


AUTHORS = dict(projector_type="ln_mlp", qk_norm=True, image_rope="2d", image_position=2,
               image_kv=["shared", "separate", "separate"], llm_train_scope="fused_attention")


@pytest.mark.parametrize("kwargs", [
    dict(vision="clip", text="qwen3", fusion="gated", projector_type="mlp", projector_hidden_size=48),
    dict(text="qwen3", layer_selection="uniform_penultimate", **AUTHORS),
])
def test_round_trip_through_dict_and_folder(tmp_path, kwargs):
    config = tiny_config(**kwargs)
    again = HiveConfig(**config.to_dict())
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = HiveConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.model_type == "qwen3"
    for key in ("projector_type", "qk_norm", "image_rope", "image_position", "image_kv", "llm_train_scope"):
        assert getattr(loaded, key) == getattr(config, key) == kwargs.get(key, getattr(HiveConfig(), key)), key
    assert loaded.auto_map["AutoModel"] == "modeling_hive.HiveVisionEncoderModel"


def test_layer_rules():
    # CLIP has a class token: taps spread uniformly; SigLIP has none: taps in the later layers.
    assert HiveConfig(vision_config={"model_type": "clip_vision_model"}).vision_feature_layers == [4, 8, 12]
    assert select_vision_layers(24, 0.25, "late") == [14, 16, 18, 20, 22, 24]
    assert select_vision_layers(24, 0.25, "uniform") == [4, 8, 12, 16, 20, 24]
    assert select_vision_layers(24, 1.0, "late") == list(range(1, 25))
    # The authors' released wiring: SigLIP-L hidden_states 2,5,...,23 (the last block never tapped) into
    # MobileLLM-600M layers 4,9,...,39. `uniform` ends one block deeper; `uniform_penultimate` gives their list and
    # every alternative their script keeps commented out.
    assert select_vision_layers(24, 8 / 24, "uniform") == [3, 6, 9, 12, 15, 18, 21, 24]
    assert select_vision_layers(24, 8 / 24, "uniform_penultimate") == [2, 5, 8, 11, 14, 17, 20, 23]
    assert select_vision_layers(24, 6 / 24, "uniform_penultimate") == [3, 7, 11, 15, 19, 23]
    assert select_vision_layers(24, 4 / 24, "uniform_penultimate") == [5, 11, 17, 23]
    assert select_vision_layers(24, 2 / 24, "uniform_penultimate") == [11, 23]
    assert select_vision_layers(24, 12 / 24, "uniform_penultimate") == list(range(1, 24, 2))
    assert spread_layers(40, 8) == [4, 9, 14, 19, 24, 29, 34, 39]
    explicit = HiveConfig(layer_selection="uniform", connection_density=0.5, vision_config={"num_hidden_layers": 8})
    assert explicit.vision_feature_layers == [2, 4, 6, 8]


def test_concat_defaults_to_last_layer_and_no_cross_attention():
    config = tiny_config(fusion="concat")
    assert config.vision_feature_layers == [4] and config.cross_attention_layers == []


@pytest.mark.parametrize("text", sorted(TEXT))
@pytest.mark.parametrize("vision", sorted(VISION))
def test_accepts_families(vision, text):
    config = tiny_config(vision=vision, text=text)
    assert config.text_config.model_type == text


def test_two_tower_vision_config_is_reduced_to_its_vision_half():
    from transformers import SiglipConfig

    config = HiveConfig(vision_config=SiglipConfig(vision_config=VISION["siglip"]), text_config=TEXT["llama"])
    assert config.vision_config.model_type == "siglip_vision_model" and config.vision_config.hidden_size == 32


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"fusion": "cross"}, ["fusion", "joint", "'cross'"]),
        ({"connection_density": 0.0}, ["connection_density", "(0, 1]", "0.0"]),
        ({"connection_density": 1.5}, ["connection_density", "1.5"]),
        ({"layer_selection": "early"}, ["layer_selection", "uniform", "'early'"]),
        ({"vision_feature_layers": [2, 9], "cross_attention_layers": [1, 3]}, ["vision_feature_layers", "[0, 4]", "9"]),
        ({"vision_feature_layers": [4, 2], "cross_attention_layers": [1, 3]}, ["vision_feature_layers", "increasing"]),
        ({"vision_feature_layers": [2, 4], "cross_attention_layers": [1, 4]}, ["cross_attention_layers", "[0, 3]", "4"]),
        ({"vision_feature_layers": [2, 4], "cross_attention_layers": [3]}, ["same length", "[2, 4]", "[3]"]),
        ({"vision_feature_layers": [], "cross_attention_layers": []}, ["vision_feature_layers", "at least one"]),
        ({"fusion": "gated", "image_kv": "separate"}, ["image_kv", "joint", "gated", "'shared'"]),
        ({"fusion": "gated", "separate_image_kv": True}, ["image_kv", "joint", "gated"]),
        ({"image_kv": ["shared", "separate"]}, ["image_kv", "one per training stage", "['shared', 'separate']"]),
        ({"image_kv": "copied"}, ["image_kv", "('shared', 'separate')", "'copied'"]),
        ({"projector_hidden_size": 16}, ["projector_hidden_size", "32", "16", "mlp_residual"]),
        ({"projector_type": "res"}, ["projector_type", "ln_mlp", "'res'"]),
        ({"qk_norm": "yes"}, ["qk_norm", "True or False", "'yes'"]),
        ({"fusion": "gated", "qk_norm": True}, ["qk_norm", "joint", "gated", "qk_norm=False"]),
        ({"image_rope": "3d"}, ["image_rope", "'2d'", "'3d'"]),
        ({"fusion": "gated", "image_rope": "2d"}, ["image_rope", "joint", "image_rope='none'"]),
        ({"image_rope": "1d", "image_position": -1}, ["image_position", ">= 0", "-1"]),
        ({"llm_train_scope": "attention"}, ["llm_train_scope", "fused_attention", "'attention'"]),
        ({"fusion": "concat", "vision_feature_layers": None, "cross_attention_layers": None,
          "llm_train_scope": "fused_attention"}, ["llm_train_scope", "concat", "all_but_embeddings"]),
        ({"layer_selection": "penultimate"}, ["layer_selection", "uniform_penultimate", "'penultimate'"]),
        ({"training_stage": 4}, ["training_stage", "4"]),
    ],
)
def test_invalid_values_name_the_field_and_value(kwargs, words):
    kwargs = {"vision_feature_layers": [2, 4], "cross_attention_layers": [1, 3], **kwargs}
    with pytest.raises(ValueError) as err:
        HiveConfig(vision_config=VISION["siglip"], text_config=TEXT["llama"], **kwargs)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_concat_rejects_several_layers():
    with pytest.raises(ValueError, match="exactly one"):
        HiveConfig(vision_config=VISION["siglip"], text_config=TEXT["llama"], fusion="concat", vision_feature_layers=[2, 4])


def test_rejects_a_text_model_that_is_not_a_decoder():
    with pytest.raises(ValueError, match="model_type='bert'"):
        HiveConfig(text_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="model_type='roberta'"):
        HiveConfig(text_config={"model_type": "roberta"})
    with pytest.raises(ValueError, match="model_type='t5'"):
        HiveConfig(text_config={"model_type": "t5"})


def test_too_many_taps_for_the_llm_depth():
    with pytest.raises(ValueError, match="connection_density"):
        HiveConfig(vision_config=VISION["siglip"], text_config={**TEXT["llama"], "num_hidden_layers": 1},
                   connection_density=1.0)


def test_2d_image_rope_needs_a_patch_grid_without_class_token():
    with pytest.raises(ValueError) as err:
        tiny_config(vision="clip", image_rope="2d")
    for word in ("image_rope='2d'", "4x4", "17 tokens", "image_rope='1d'"):
        assert word in str(err.value), (word, str(err.value))
    assert tiny_config(vision="clip", image_rope="1d").image_rope == "1d"


def test_configs_written_before_projector_type_and_image_kv_keep_their_meaning():
    old = tiny_config().to_dict()
    for key in ("projector_type", "image_kv"):
        old.pop(key)
    residual = HiveConfig(**{**old, "projector_residual": False, "separate_image_kv": True})
    assert residual.projector_type == "mlp" and residual.image_kv == ["separate"] * 3
    assert "projector_residual" not in residual.to_dict() and "separate_image_kv" not in residual.to_dict()
    assert HiveConfig(**{**old, "projector_residual": True}).projector_type == "mlp_residual"


def test_one_image_kv_value_applies_to_every_stage():
    config = tiny_config(image_kv=["separate"])
    assert config.image_kv == ["separate"] * 3 and config.uses_separate_image_kv
    authors = tiny_config(image_kv=("shared", "separate", "separate"))
    assert [authors.image_kv_for_stage(s) for s in (None, 1, 2, 3)] == ["shared", "shared", "separate", "separate"]


def test_an_unknown_text_model_type_points_to_text_model_type():
    with pytest.raises(ValueError, match="text_model_type='llama'"):
        HiveConfig(text_config={"model_type": "mobilellm", "hidden_size": 32})
