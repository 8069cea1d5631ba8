"""HiveProcessor: pixels + tokens + labels, truncation, placeholders, errors, save/load."""

import pytest
import torch
from PIL import Image
from tiny import tiny_config
from transformers import AutoProcessor, SiglipImageProcessorPil

from hive_hf import HiveProcessor
from hive_hf.tiny_backbones import build_word_tokenizer

CAPTIONS = ["two red circles in the top left.", "one blue square in the center of the picture right now."]


def make_processor(fusion="joint", **kwargs):
    config = tiny_config(fusion=fusion)
    tokenizer = build_word_tokenizer(CAPTIONS + ["a photo of"])
    return HiveProcessor.for_model_config(config, SiglipImageProcessorPil(size={"height": 16, "width": 16}),
                                          tokenizer, **kwargs), config


def images(n):
    return [Image.new("RGB", (20 + i, 24), (i * 40, 10, 200)) for i in range(n)]


def test_outputs_labels_eos_and_padding():
    processor, _ = make_processor()
    tok = processor.tokenizer
    batch = processor(images=images(2), text=CAPTIONS, add_eos=True, return_labels=True)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    lengths = mask.sum(1).tolist()
    caption0 = tok(CAPTIONS[0], add_special_tokens=False)["input_ids"]
    assert ids[0, : lengths[0]].tolist() == [tok.bos_token_id, *caption0, tok.eos_token_id]
    assert labels[0, : lengths[0]].tolist() == [-100, *caption0, tok.eos_token_id]
    assert (labels[0, lengths[0]:] == -100).all() and (mask[0, lengths[0]:] == 0).all()  # right padding
    assert processor(text=CAPTIONS[0])["input_ids"].shape[0] == 1


def test_captions_are_truncated_to_max_length_before_eos():
    processor, _ = make_processor(max_length=5)
    assert processor.max_length == 5
    batch = processor(images=images(2), text=CAPTIONS, add_eos=True, return_labels=True)
    kept = (batch["labels"] != -100).sum(1).tolist()
    assert kept == [5 + 1, 5 + 1]  # 5 caption tokens + EOS
    assert batch["input_ids"][1, -1].item() == processor.tokenizer.eos_token_id
    # the paper's default
    assert make_processor()[0].max_length == 77


def test_prompt_is_not_in_the_labels():
    processor, _ = make_processor()
    plain = processor(images=images(1), text=CAPTIONS[:1], add_eos=True, return_labels=True)
    prompted = processor(images=images(1), text=CAPTIONS[:1], prompt="a photo of", add_eos=True, return_labels=True)
    assert prompted["input_ids"].shape[1] == plain["input_ids"].shape[1] + 3
    assert (prompted["labels"][0, :4] == -100).all()
    assert prompted["labels"][0, 4:].tolist() == plain["labels"][0, 1:].tolist()


def test_concat_inserts_the_placeholders_the_model_expects():
    processor, config = make_processor(fusion="concat")
    n = config.num_image_tokens
    assert processor.num_image_tokens == n == 16
    assert config.image_token_id == processor.image_token_id
    batch = processor(images=images(2), text=CAPTIONS, add_eos=True, return_labels=True)
    is_image = batch["input_ids"] == config.image_token_id
    assert is_image.sum(1).tolist() == [n, n]
    assert batch["input_ids"][0, 1 : 1 + n].eq(config.image_token_id).all()  # right after BOS
    assert (batch["labels"][is_image] == -100).all()
    assert make_processor(fusion="joint")[0].num_image_tokens == 0


def test_left_padding_follows_the_tokenizer():
    processor, _ = make_processor()
    processor.tokenizer.padding_side = "left"
    batch = processor(images=images(2), text=CAPTIONS, return_labels=True)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["labels"][0, 0] == -100


def test_mismatched_batch_sizes_raise():
    processor, _ = make_processor()
    with pytest.raises(ValueError, match="Got 3 images and 2 texts"):
        processor(images=images(3), text=CAPTIONS)
    with pytest.raises(ValueError, match="images"):
        processor()


@pytest.mark.parametrize("fusion", ["joint", "concat"])
def test_save_and_load_with_auto_processor(fusion, tmp_path):
    processor, _ = make_processor(fusion=fusion, max_length=9)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processing_hive.py").exists()
    again = AutoProcessor.from_pretrained(tmp_path)
    assert type(again) is HiveProcessor
    assert (again.num_image_tokens, again.max_length, again.image_token_id) == (
        processor.num_image_tokens, 9, processor.image_token_id)
    a = processor(images=images(2), text=CAPTIONS, add_eos=True, return_labels=True)
    b = again(images=images(2), text=CAPTIONS, add_eos=True, return_labels=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key
