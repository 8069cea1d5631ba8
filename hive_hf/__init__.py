"""hive_hf: HIVE (hierarchical pre-training of vision encoders with LLMs) for Hugging Face Transformers."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_hive import HiveConfig
from .modeling_hive import HiveForConditionalGeneration, HivePreTrainedModel, HiveVisionEncoderModel
from .processing_hive import HiveProcessor

__version__ = "0.1.0"

AutoConfig.register("hive", HiveConfig, exist_ok=True)
AutoModel.register(HiveConfig, HiveVisionEncoderModel, exist_ok=True)
AutoModelForImageTextToText.register(HiveConfig, HiveForConditionalGeneration, exist_ok=True)
AutoProcessor.register(HiveConfig, HiveProcessor, exist_ok=True)
# `save_pretrained` writes these files and an `auto_map` next to the weights (remote code).
HiveConfig.register_for_auto_class()
HiveVisionEncoderModel.register_for_auto_class("AutoModel")
HiveForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
HiveProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["HiveConfig", "HivePreTrainedModel", "HiveVisionEncoderModel", "HiveForConditionalGeneration", "HiveProcessor"]
