"""transformers' own common model tests, run on HIVE as on a model contributed to transformers
(`tests/models/<name>/test_modeling_<name>.py`): `ModelTesterMixin` and `ConfigTester` of the installed release, with
tiny model testers of our own, for every fusion (gated twice: gates closed as initialised, and open) and for the
vision encoder. `release_tests` fetches the mixins from that release's source distribution."""

from __future__ import annotations

import inspect
import unittest
from unittest import mock

import pytest
import torch
import transformers
from release_tests import is_stand_in, load
from tiny import TEXT, VISION
from torch import nn
from transformers import initialization as init
from transformers.models.auto import modeling_auto

from hive_hf import HiveConfig, HiveForConditionalGeneration, HiveVisionEncoderModel
from hive_hf.modeling_hive import HiveGatedCrossAttention

modeling_common = load("test_modeling_common")
ConfigTester = load("test_configuration_common").ConfigTester
GenerationTesterMixin = load("generation.test_utils").GenerationTesterMixin
ModelTesterMixin = modeling_common.ModelTesterMixin
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor
# The gradient-checkpointing tests unfreeze every parameter, then want a gradient on each. The tower's post norm and
# pooling head are never on HIVE's path (it taps hidden states), so the model freezes them at construction; releases
# from 5.2x on exempt what a model freezes on purpose, earlier ones (5.6) check every parameter. There the mixin's own
# switch for parameters that legitimately get no gradient is off; the gradients of the parameters HIVE does run are
# compared either way, and tests/test_modeling.py checks that each of them gets one.
EXEMPTS_FROZEN = "intentionally_frozen" in inspect.getsource(ModelTesterMixin.check_training_gradient_checkpointing)

pytestmark = pytest.mark.transformers_common


def test_every_mixin_comes_from_the_release() -> None:
    """Says, as a skip in every run's summary, which of transformers' mixins the source distribution lacks (they are
    empty stand-ins, see `release_tests`)."""
    absent = [f"{mixin.__name__} ({path})" for mixin, path in (
        (GenerationTesterMixin, "tests/generation/test_utils.py"),
        *[(base, "tests/exporters/test_export.py") for base in ModelTesterMixin.__bases__ if is_stand_in(base)],
    ) if is_stand_in(mixin)]
    if absent:
        pytest.skip(f"the transformers {transformers.__version__} sdist does not ship {', '.join(absent)}: those "
                    "tests run with HIVE_TRANSFORMERS_TESTS set to the tests/ folder of a transformers checkout")


class HiveWithOpenGates(HiveForConditionalGeneration):
    """Gated fusion whose gates start open (tanh(0.5)), so that the image reaches every output and gradient; closed
    gates leave the LLM exactly as it was."""

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HiveGatedCrossAttention):
            init.constant_(module.gate, 0.5)


class HiveModelTester:
    """Tiny HIVE configs and inputs: 2 encoder layers (both tapped) feeding 2 LLM layers, hidden 32, 16-px images
    of 4-px patches (16 image tokens), 7 text tokens; concat puts one placeholder per image token into the text
    (as `HiveProcessor` does), so its sequences are 16 + 7 long."""

    def __init__(self, parent: unittest.TestCase, fusion: str = "joint", batch_size: int = 3, text_length: int = 7):
        self.parent = parent
        self.fusion = fusion
        self.batch_size = batch_size
        self.is_training = True
        self.vision_config = {**VISION["siglip"], "num_hidden_layers": 2}
        self.text_config = {**TEXT["llama"], "num_hidden_layers": 2}
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.vocab_size = self.text_config["vocab_size"]
        self.pad_token_id = self.text_config["pad_token_id"]
        self.image_size, self.patch_size = self.vision_config["image_size"], self.vision_config["patch_size"]
        self.num_image_tokens = (self.image_size // self.patch_size) ** 2
        self.image_token_id = self.vocab_size - 1  # concat's placeholder, inside the vocabulary as a processor's is
        self.seq_length = text_length + (self.num_image_tokens if fusion == "concat" else 0)

    def get_config(self) -> HiveConfig:
        layers = {"vision_feature_layers": [2]} if self.fusion == "concat" else \
            {"vision_feature_layers": [1, 2], "cross_attention_layers": [0, 1]}
        return HiveConfig(vision_config=dict(self.vision_config), text_config=dict(self.text_config),
                          fusion=self.fusion, image_token_id=self.image_token_id, **layers)

    def prepare_config_and_inputs_for_common(self) -> tuple[HiveConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        # ids from 3 up: no pad/bos/eos, and below the placeholder
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.image_token_id - 3) + 3
        if self.fusion == "concat":
            input_ids[:, 1:1 + self.num_image_tokens] = self.image_token_id  # [BOS-like] <image>... text
        attention_mask = torch.ones_like(input_ids)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class HiveEncoderTester(HiveModelTester):
    """The vision encoder alone: the tower's attentions and hidden states are over its 16 patches."""

    def __init__(self, parent: unittest.TestCase, batch_size: int = 3):
        super().__init__(parent, fusion="joint", batch_size=batch_size)
        self.num_hidden_layers = self.vision_config["num_hidden_layers"]
        self.hidden_size = self.vision_config["hidden_size"]
        self.num_attention_heads = self.vision_config["num_attention_heads"]
        self.seq_length = self.num_image_tokens

    def prepare_config_and_inputs_for_common(self) -> tuple[HiveConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        return config, {"pixel_values": floats_tensor([self.batch_size, 3, self.image_size, self.image_size])}


def list_in_auto_tables(test: unittest.TestCase, table: dict[str, str], model_class: type) -> None:
    """Name `model_class` in one of transformers' auto-class name tables for the duration of `test`, as a model
    contributed to transformers is named there: the common tests choose inputs and labels by these names. (`hive_hf`
    registers its classes with the Auto API, which these tables do not list.)"""
    patcher = mock.patch.dict(table, {HiveConfig.model_type: model_class.__name__})
    patcher.start()
    test.addCleanup(patcher.stop)


class HiveForConditionalGenerationTestBase(ModelTesterMixin, GenerationTesterMixin):
    fusion = "joint"
    model_class = HiveForConditionalGeneration
    _is_composite = True
    test_all_params_have_gradient = EXEMPTS_FROZEN

    @property
    def all_model_classes(self) -> tuple[type, ...]:
        return (self.model_class,)

    def setUp(self) -> None:
        list_in_auto_tables(self, modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, self.model_class)
        self.model_tester = HiveModelTester(self, fusion=self.fusion)
        self.config_tester = ConfigTester(self, config_class=HiveConfig, has_text_modality=False,
                                          common_properties=["vision_feature_layers", "cross_attention_layers"])

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_training_gradient_checkpointing_use_reentrant_true(self) -> None:
        """joint/gated hand the image keys/values to the fused layers as keyword arguments, which reentrant
        checkpointing cannot recompute (their gradient would run through the encoder twice): the model refuses it
        with an error naming the fix, rather than training with wrong gradients. concat checkpoints either way."""
        if self.fusion == "concat":
            super().test_training_gradient_checkpointing_use_reentrant_true()
            return
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = self.model_class(config).train()
        with self.assertRaisesRegex(ValueError, "use_reentrant"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True}) \
                if hasattr(model, "activation_checkpointing_enable") else \
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})


class HiveJointModelTest(HiveForConditionalGenerationTestBase, unittest.TestCase):
    fusion = "joint"


class HiveGatedModelTest(HiveForConditionalGenerationTestBase, unittest.TestCase):
    fusion = "gated"


class HiveGatedOpenGatesModelTest(HiveForConditionalGenerationTestBase, unittest.TestCase):
    fusion = "gated"
    model_class = HiveWithOpenGates


class HiveConcatModelTest(HiveForConditionalGenerationTestBase, unittest.TestCase):
    fusion = "concat"


class HiveVisionEncoderModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (HiveVisionEncoderModel,)
    test_resize_embeddings = False
    _is_composite = True

    def setUp(self) -> None:
        list_in_auto_tables(self, modeling_auto.MODEL_MAPPING_NAMES, HiveVisionEncoderModel)  # AutoModel loads it
        self.model_tester = HiveEncoderTester(self)
        self.config_tester = ConfigTester(self, config_class=HiveConfig, has_text_modality=False,
                                          common_properties=["vision_feature_layers"])

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self) -> None:
        """A vision model's input embedding is its patch embedding, not an `nn.Embedding`: transformers' own test
        of SigLIP's vision model overrides the common test the same way (tests/models/siglip/test_modeling_siglip.py,
        `SiglipVisionModelTest.test_model_get_set_embeddings`)."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    @unittest.skip("The encoder is the SigLIP vision tower, which has no tensor-parallel plan: transformers' test skips "
                   "it for SigLIP ('Model does not have a TP plan', tests/models/siglip/test_modeling_siglip.py, "
                   "SiglipVisionModelTest). Here the plan it finds is the LLM's, in HiveConfig.text_config, which the "
                   "encoder does not build.")
    def test_tp_plan_matches_params(self) -> None:
        pass



# `test_model_rope_scaling_from_config` is parametrised: one test per scaling type, names per release.
for _name in [name for name in dir(ModelTesterMixin) if name.startswith("test_model_rope_scaling_from_config")]:
    setattr(HiveVisionEncoderModelTest, _name, unittest.skip(
        "The encoder is the SigLIP vision tower, which has no RoPE: transformers' test skips it for SigLIP ('This "
        "model does not support RoPE scaling', tests/models/siglip/test_modeling_siglip.py, SiglipVisionModelTest). "
        "Here the RoPE it finds is the LLM's, in HiveConfig.text_config, which the encoder does not build."
    )(lambda self: None))
