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


def test_round_trip_through_dict_and_folder(tmp_path):
    config = tiny_config(vision="clip", text="qwen3", fusion="gated", projector_residual=False, projector_hidden_size=48)
    again = HiveConfig(**config.to_dict())
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = HiveConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.model_type == "qwen3" and loaded.vision_config.model_type == "clip_vision_model"
    assert loaded.auto_map["AutoModel"] == "modeling_hive.HiveVisionEncoderModel"


def test_layer_rules():
    # CLIP has a class token: taps spread uniformly; SigLIP has none: taps in the later layers.
    assert HiveConfig(vision_config={"model_type": "clip_vision_model"}).vision_feature_layers == [4, 8, 12]
    assert select_vision_layers(24, 0.25, "late") == [14, 16, 18, 20, 22, 24]
    assert select_vision_layers(24, 0.25, "uniform") == [4, 8, 12, 16, 20, 24]
    assert select_vision_layers(24, 1.0, "late") == list(range(1, 25))
    # The authors' released wiring: SigLIP-L blocks 2,5,...,23 (0-based) into MobileLLM-600M layers 4,9,...,39.
    assert select_vision_layers(24, 8 / 24, "uniform") == [3, 6, 9, 12, 15, 18, 21, 24]
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
        ({"fusion": "gated", "separate_image_kv": True}, ["separate_image_kv", "joint", "gated"]),
        ({"projector_hidden_size": 16}, ["projector_hidden_size", "32", "16"]),
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
