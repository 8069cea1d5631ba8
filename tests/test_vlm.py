"""LLaVA-style VLM fine-tuning of a vision encoder: composition, stages, data adapters, evaluation, the script."""

import copy
import inspect
import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from scripts import user_error
from tiny import VISION, tiny_model
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipImageProcessorPil,
    TrainingArguments,
)

import hive_hf  # noqa: F401  (registers the HIVE auto classes)
import hive_hf.cli.vlm_finetune as vlm_cli
from hive_hf.data import make_shapes_dataset
from hive_hf.data.vqa import (
    TASK_METRICS,
    load_conversations,
    load_gqa,
    load_mme,
    load_okvqa,
    load_scienceqa,
    load_vqa_benchmark,
    load_vqa_records,
    make_shapes_vqa_dataset,
    task_prompt,
    training_answer,
    training_texts,
    user_message,
    vqa_conversations,
    write_shapes_conversations,
)
from hive_hf.evaluation.vlm import (
    SCORING_OPTIONS,
    ConversationCollator,
    apply_vlm_lora,
    assistant_spans,
    build_llava,
    compose_llava,
    expand_to_square,
    format_results_table,
    generate_answers,
    merge_vlm_lora,
    question_prior_predictions,
    score_predictions,
)
from hive_hf.metrics import load_metric
from hive_hf.runs.recipes import VLM_STAGE_DEFAULTS
from hive_hf.runs.stages import llava_parameter_component, set_vlm_training_stage
from hive_hf.tiny_backbones import CHAT_TEMPLATE, write_tiny_backbones
from hive_hf.training import HiveStageCallback, HiveTrainer, build_param_groups

ROOT = Path(__file__).resolve().parents[1]


# -- fixtures ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_data():
    return make_shapes_vqa_dataset(16, image_size=16, seed=0, split="train")


@pytest.fixture(scope="module")
def eval_data():
    return make_shapes_vqa_dataset(4, image_size=16, seed=0, split="validation")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, train_data):
    """A tiny HIVE checkpoint (with its image processor) and a tiny Llama whose words cover the VQA prompts."""
    root = tmp_path_factory.mktemp("backbones")
    hive = tiny_model(seed=0)
    hive.save_pretrained(root / "hive")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(root / "hive")
    vision_path, text_path = write_tiny_backbones(root / "tiny", training_texts(train_data), image_size=16,
                                                  patch_size=4, hidden_size=32, num_layers=2, chat_template=True,
                                                  lowercase=False)
    return {"hive": str(root / "hive"), "base_vision": vision_path, "text": text_path}


@pytest.fixture(scope="module")
def built(backbones):
    torch.manual_seed(0)
    return build_llava(backbones["hive"], backbones["text"])


def fresh(built):
    model, processor = built
    return copy.deepcopy(model), processor


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model, component):
    after = dict(model.named_parameters())
    return {n: not torch.equal(before[n], after[n]) for n in before if llava_parameter_component(n) == component}


def train_args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-2,
                    use_cpu=True, report_to="none", save_strategy="no", remove_unused_columns=False,
                    logging_steps=1, disable_tqdm=True, seed=0)
    return TrainingArguments(**{**defaults, **kwargs})


def vlm_trainer(model, processor, data, tmp_path, stage, **kwargs):
    return HiveTrainer(model=model, args=train_args(tmp_path, **kwargs), train_dataset=vqa_conversations(data),
                       data_collator=ConversationCollator(processor), stage=stage, stage_setter=set_vlm_training_stage,
                       component_rule=llava_parameter_component)


def png(color=(200, 30, 30), size=16) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


# -- composition ------------------------------------------------------------------------------------------------------
def test_llava_from_a_hive_encoder_keeps_both_weights_exactly(backbones, built):
    model, processor = built
    assert type(model) is LlavaForConditionalGeneration and isinstance(processor, LlavaProcessor)
    encoder = AutoModel.from_pretrained(backbones["hive"]).to_base_model()
    vision = model.model.vision_tower.state_dict()
    assert vision.keys() == encoder.state_dict().keys()
    assert all(torch.equal(vision[k], v) for k, v in encoder.state_dict().items())

    llm = AutoModelForCausalLM.from_pretrained(backbones["text"])
    vocab = llm.config.vocab_size
    ours = model.model.language_model.state_dict()
    for key, value in llm.model.state_dict().items():
        if key == "embed_tokens.weight":  # one new row for <image>, the others untouched
            assert ours[key].shape[0] == vocab + 1 and torch.equal(ours[key][:vocab], value)
        else:
            assert torch.equal(ours[key], value), key
    assert torch.equal(model.lm_head.weight[:vocab], llm.lm_head.weight)

    config = model.config
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "full"  # SigLIP: no CLS
    assert config.image_seq_length == (16 // 4) ** 2
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>") == vocab
    assert processor.patch_size == 4 and processor.num_additional_image_tokens == 0


def test_a_stock_encoder_or_an_encoder_only_release_gives_the_same_model(backbones, built, tmp_path):
    AutoModel.from_pretrained(backbones["hive"]).save_pretrained(tmp_path / "encoder-only")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "encoder-only")
    AutoModel.from_pretrained(backbones["hive"]).to_base_model().save_pretrained(tmp_path / "stock")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "stock")
    expected = built[0].model.vision_tower.state_dict()
    for source in ("encoder-only", "stock"):
        assert AutoConfig.from_pretrained(tmp_path / source).model_type == ("hive" if source != "stock" else
                                                                            "siglip_vision_model")
        model, _ = build_llava(str(tmp_path / source), backbones["text"])
        assert all(torch.equal(model.model.vision_tower.state_dict()[k], v) for k, v in expected.items())


def test_clip_drops_its_class_token_and_a_wrong_strategy_is_refused(backbones):
    clip = CLIPVisionModel(AutoConfig.for_model(**VISION["clip"]))
    llm = AutoModelForCausalLM.from_pretrained(backbones["text"])
    tokenizer = AutoTokenizer.from_pretrained(backbones["text"])
    image_processor = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    model, processor = compose_llava(clip, llm, tokenizer, image_processor)
    assert model.config.vision_feature_select_strategy == "default" and model.config.image_seq_length == 16
    inputs = processor(images=[PIL.Image.new("RGB", (20, 20))], text=["<image>\nQuestion: what color ?\nAnswer:"],
                       return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 16
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]  # features and tokens agree

    siglip = AutoModel.from_pretrained(backbones["base_vision"])
    with pytest.raises(ValueError, match="has none"):
        compose_llava(siglip, llm, tokenizer, image_processor, vision_feature_select_strategy="default")
    with pytest.raises(ValueError, match="expects 16"):
        compose_llava(siglip, llm, tokenizer, SiglipImageProcessorPil(size={"height": 32, "width": 32}))


def test_saved_model_loads_with_plain_transformers_and_equal_logits(built, eval_data, tmp_path):
    model, processor = built
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_config"]["model_type"] == "siglip_vision_model"
    for name in ("config.json", "processor_config.json"):
        assert "auto_map" not in (tmp_path / name).read_text()
    assert not list(tmp_path.glob("*.py"))  # no remote code next to the weights
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor_again = AutoProcessor.from_pretrained(tmp_path)
    assert type(again) is LlavaForConditionalGeneration and type(processor_again) is LlavaProcessor
    rows = eval_data.select(range(3))
    images = [PIL.Image.open(io.BytesIO(r["image"]["bytes"])) for r in rows]
    texts = [user_message(r) for r in rows]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    inputs_again = processor_again(images=images, text=texts, padding=True, return_tensors="pt")
    assert all(torch.equal(inputs[k], inputs_again[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, again.eval()(**inputs).logits)


# -- stages -----------------------------------------------------------------------------------------------------------
def test_stage_setter_and_parameter_components_for_llava(built):
    model, _ = fresh(built)
    components = {llava_parameter_component(n) for n, _ in model.named_parameters()}
    assert components == {"vision", "projector", "llm"}
    assert llava_parameter_component("lm_head.weight") == "llm"
    assert llava_parameter_component("model.multi_modal_projector.linear_1.weight") == "projector"
    counts = set_vlm_training_stage(model, 1)
    assert counts["projector"]["trainable"] == counts["projector"]["total"] > 0
    assert counts["vision"]["trainable"] == counts["llm"]["trainable"] == 0
    counts = set_vlm_training_stage(model, 2)
    assert counts["llm"]["trainable"] == counts["llm"]["total"] and counts["vision"]["trainable"] == 0
    groups = build_param_groups(model, 0.0, 1e-3, {"projector": 10.0}, llava_parameter_component)
    assert {g["component"] for g in groups} == {"projector", "llm"}
    assert all(g["lr"] == pytest.approx(1e-2 if g["component"] == "projector" else 1e-3) for g in groups)
    with pytest.raises(ValueError, match="stages 1 .* and 2"):
        set_vlm_training_stage(model, 3)
    # The setter is saved by import path, so a callback restored from a checkpoint finds it again.
    state = HiveStageCallback(2, stage_setter=set_vlm_training_stage).state()
    assert state["args"] == {"stage": 2, "stage_setter": "hive_hf.runs.stages:set_vlm_training_stage"}
    assert HiveStageCallback(**state["args"]).stage_setter is set_vlm_training_stage
    assert HiveStageCallback(1).state()["args"] == {"stage": 1}  # HIVE checkpoints are unchanged


def test_stage_1_trains_the_projector_only_and_stage_2_the_llm_too(built, train_data, tmp_path):
    model, processor = fresh(built)
    before = snapshot(model)
    vlm_trainer(model, processor, train_data, tmp_path / "s1", stage=1).train()
    assert not any(changed(before, model, "vision").values())
    assert not any(changed(before, model, "llm").values())
    assert all(changed(before, model, "projector").values())

    before = snapshot(model)
    trainer = vlm_trainer(model, processor, train_data, tmp_path / "s2", stage=2)
    trainer.train()
    assert not any(changed(before, model, "vision").values())
    llm = changed(before, model, "llm")
    assert sum(llm.values()) == len(llm)  # the tied embedding holds the rows seen, so it changed too
    assert all(changed(before, model, "projector").values())
    assert trainer.state.stateful_callbacks["HiveStageCallback"]["args"]["stage"] == 2


def test_stage_2_with_lora_trains_adapters_only_and_merges_back(built, train_data, tmp_path):
    model, processor = fresh(built)
    before = snapshot(model)
    apply_vlm_lora(model, r=2, alpha=4, dropout=0.0)
    set_vlm_training_stage(model, 2)
    trainable_llm = [n for n, p in model.named_parameters() if p.requires_grad and llava_parameter_component(n) == "llm"]
    assert trainable_llm and all("lora_" in n for n in trainable_llm)
    vlm_trainer(model, processor, train_data, tmp_path, stage=2).train()
    merge_vlm_lora(model)
    assert not any("lora_" in n for n in model.state_dict())
    assert set(dict(model.named_parameters())) == set(before)
    assert not any(changed(before, model, "vision").values())
    adapted = {n: c for n, c in changed(before, model, "llm").items() if "self_attn" in n or ".mlp." in n}
    assert adapted and all(adapted.values())  # the adapters' product was folded into the weights
    assert not changed(before, model, "llm")["model.language_model.norm.weight"]
    model.save_pretrained(tmp_path / "merged")
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert again.state_dict().keys() == model.state_dict().keys()


def test_the_projector_reads_the_second_to_last_blocks_raw_output(backbones, built):
    model, _ = built
    pixel_values = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        features = model.model.get_image_features(pixel_values=pixel_values)
        features = getattr(features, "pooler_output", features)
        features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
        projector = model.model.multi_modal_projector
        assert torch.allclose(features.reshape(2, 16, -1), projector(hidden[-2]), atol=1e-6)  # block 1 of 2, raw
        assert not torch.allclose(features.reshape(2, 16, -1), projector(hidden[-1]), atol=1e-3)
    llm = AutoModelForCausalLM.from_pretrained(backbones["text"])
    tokenizer = AutoTokenizer.from_pretrained(backbones["text"])
    vision = AutoModel.from_pretrained(backbones["base_vision"])
    image_processor = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    last, _ = compose_llava(vision, llm, tokenizer, image_processor, vision_feature_layer=-1)
    assert last.config.vision_feature_layer == -1
    with pytest.raises(ValueError, match=r"vision_feature_layer must be a hidden_states index .* \[-3, 2\]; got 3"):
        compose_llava(vision, llm, tokenizer, image_processor, vision_feature_layer=3)


def test_images_are_padded_to_a_square_of_the_processors_mean(built):
    wide = expand_to_square(PIL.Image.new("RGB", (8, 4), (200, 30, 30)), (127, 127, 127))
    pixels = np.asarray(wide)
    assert wide.size == (8, 8) and (pixels[:2] == 127).all() and (pixels[6:] == 127).all()
    assert (pixels[2:6] == [200, 30, 30]).all()
    tall = np.asarray(expand_to_square(PIL.Image.new("RGB", (2, 6), (0, 0, 255)), (1, 2, 3)))
    assert tall.shape == (6, 6, 3) and (tall[:, :2] == [1, 2, 3]).all() and (tall[:, 2:4] == [0, 0, 255]).all()
    square = PIL.Image.new("RGB", (5, 5))
    assert expand_to_square(square, (1, 2, 3)) is square

    _, processor = built
    buffer = io.BytesIO()
    picture = PIL.Image.new("RGB", (24, 12), (200, 30, 30))
    picture.save(buffer, format="PNG")
    row = {"id": "w", "image": {"bytes": buffer.getvalue(), "path": None}, "messages": [
        {"role": "user", "content": "<image>\nWhat color are the shapes?"}, {"role": "assistant", "content": "red"}]}
    mean = tuple(int(m * 255) for m in processor.image_processor.image_mean)
    assert mean == (127, 127, 127)  # SigLIP's 0.5, as the authors' int(x * 255)
    for ratio, image in (("pad", expand_to_square(picture, mean)), ("square", picture)):
        batch = ConversationCollator(processor, image_aspect_ratio=ratio)([row])
        expected = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert torch.equal(batch["pixel_values"], expected), ratio
    with pytest.raises(ValueError, match="--image_aspect_ratio must be one of"):
        ConversationCollator(processor, image_aspect_ratio="crop")


CONVERSATION = [
    {"role": "system", "content": "Answer the question."},
    {"role": "user", "content": "<image>\nWhat color are the shapes?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "What shape is in the image?"},
    {"role": "assistant", "content": "circle"},
]


def test_collator_labels_the_assistant_turns_only_and_skips_unreadable_images(built):
    model, processor = built
    tokenizer, image_id = processor.tokenizer, processor.image_token_id
    conversation = {"id": "c", "image": {"bytes": png(), "path": None}, "messages": CONVERSATION}
    text_only = {"id": "t", "image": None, "messages": [{"role": "user", "content": "How many shapes are there?"},
                                                         {"role": "assistant", "content": "two"}]}
    broken = {**conversation, "image": {"bytes": b"not an image", "path": None}}
    batch = ConversationCollator(processor)([conversation, broken, text_only])
    assert int(batch["num_skipped_images"]) == 1 and batch["input_ids"].shape[0] == 2
    assert batch["pixel_values"].shape == (1, 3, 16, 16)
    labelled = [tokenizer.convert_ids_to_tokens(labels[labels != -100].tolist()) for labels in batch["labels"]]
    assert labelled == [["red", "</s>", "circle", "</s>"], ["two", "</s>"]]  # each answer and its end of turn
    # The sequences are the chat template's rendering, image token expanded, right-padded.
    for row, ids, mask in zip((conversation, text_only), batch["input_ids"], batch["attention_mask"]):
        rendered = tokenizer.apply_chat_template(row["messages"], tokenize=False).replace("<image>", "<image>" * 16)
        assert ids[mask == 1].tolist() == tokenizer(rendered, add_special_tokens=False).input_ids
    assert (batch["input_ids"][0] == image_id).sum() == 16 and (batch["input_ids"][1] == image_id).sum() == 0
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    inputs = {k: v for k, v in batch.items() if k != "num_skipped_images"}
    assert torch.isfinite(model(**inputs).loss)  # a mixed batch (one image, one text-only row) runs

    # system 6 tokens, user 24 (16 for the image), then <|assistant|> red </s>: 33 keep the first answer
    cut = ConversationCollator(processor, max_length=33)([conversation, text_only])
    assert cut["input_ids"].shape[1] == 33 and tokenizer.convert_ids_to_tokens(
        cut["labels"][0][cut["labels"][0] != -100].tolist()) == ["red", "</s>"]
    with pytest.raises(ValueError, match="cut inside its image at --max_length 10"):
        ConversationCollator(processor, max_length=10)([conversation])


def test_assistant_spans_need_a_template_that_renders_turn_by_turn(built):
    _, processor = built
    text, spans = assistant_spans(processor.tokenizer, CONVERSATION)
    assert [text[s:e] for s, e in spans] == ["red</s>\n", "circle</s>\n"]
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="not a prefix of the whole"):
        assistant_spans(tokenizer, CONVERSATION)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template.*--chat_template"):
        ConversationCollator(LlavaProcessor(image_processor=processor.image_processor, tokenizer=tokenizer,
                                            patch_size=4, vision_feature_select_strategy="full"))


def test_a_chat_template_can_be_given_to_an_llm_without_one(backbones, tmp_path):
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    _, processor = build_llava(backbones["hive"], backbones["text"], chat_template=template)
    assert processor.tokenizer.chat_template == template
    assert assistant_spans(processor.tokenizer, CONVERSATION[1:3])[0] == "user: <image>\nWhat color are the shapes?</s>" \
        "assistant: red</s>"
    (tmp_path / "chat.jinja").write_text(template)
    args = vlm_cli.ModelArguments(vision_model_name_or_path="x", text_model_name_or_path="y",
                                                          chat_template=str(tmp_path / "chat.jinja"))
    assert args.chat_template == template  # a file is read


# -- data adapters ----------------------------------------------------------------------------------------------------
def test_gqa_adapter_reads_the_published_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "n1.jpg").write_bytes(png())
    questions = {
        "201": {"imageId": "n1", "question": "What color is the ball?", "answer": "red",
                "fullAnswer": "The ball is red.", "types": {}, "semantic": []},
        "202": {"imageId": "n1", "question": "Is it round?", "answer": "yes", "fullAnswer": "Yes, it is round."},
    }
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    data = load_gqa(tmp_path / "testdev_balanced_questions.json", tmp_path / "images")
    assert data["question_id"] == ["201", "202"] and data["answers"] == [["red"], ["yes"]]
    assert set(data["task"]) == {"gqa"} and data["image_id"] == ["n1", "n1"]
    assert data[0]["image"]["path"].endswith("n1.jpg")
    assert score_predictions(data, ["Red.", "no"])["gqa"]["score"] == 50.0
    (tmp_path / "images" / "n1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="`image_dir`"):
        load_gqa(tmp_path / "testdev_balanced_questions.json", tmp_path / "images")


def test_okvqa_adapter_reads_vqa_v2_style_questions_and_annotations(tmp_path):
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(png())
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What sport is this?", "question_id": 420},
    ]}
    answers = ["tennis"] * 6 + ["racket sport"] * 4
    annotations = {"annotations": [{
        "question_id": 420, "image_id": 42, "question_type": "what", "answer_type": "other",
        "answers": [{"answer_id": i + 1, "raw_answer": a, "answer_confidence": "yes", "answer": a}
                    for i, a in enumerate(answers)],
    }]}
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    data = load_okvqa(tmp_path / "questions.json", tmp_path / "annotations.json", tmp_path / "val2014")
    record = data[0]
    assert record["question_id"] == "420" and record["answers"] == answers and record["task"] == "vqa"
    assert training_answer(record) == "tennis"
    assert score_predictions(data, ["racket sport"])["vqa"]["score"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="`annotations_file`"):
        load_vqa_benchmark("okvqa", str(tmp_path / "questions.json"), None, str(tmp_path / "val2014"))


def test_scienceqa_adapter_reads_the_full_split_text_only_questions_included(tmp_path):
    problems = {
        "5": {"question": "Which animal is a mammal?", "choices": ["frog", "whale", "trout"], "answer": 1,
              "hint": "Look at the picture.", "image": "image.png", "split": "test", "subject": "natural science"},
        "6": {"question": "Which word is a noun?", "choices": ["run", "cat"], "answer": 1, "hint": "",
              "image": None, "split": "test"},
        "7": {"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1, "hint": "",
              "image": "image.png", "split": "train"},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    for split, pid in (("test", "5"), ("train", "7")):
        (tmp_path / "images" / split / pid).mkdir(parents=True)
        (tmp_path / "images" / split / pid / "image.png").write_bytes(png())
    data = load_scienceqa(tmp_path / "problems.json", tmp_path / "images", split="test")  # FULL, the paper's
    assert data["question_id"] == ["5", "6"] and data[1]["image"] is None  # the text-only question is kept
    record = data[0]
    assert record["choices"] == ["frog", "whale", "trout"] and record["answer_index"] == 1
    assert record["task"] == "scienceqa" and record["question"] == "Context: Look at the picture.\nWhich animal is a mammal?"
    assert user_message(record) == ("<image>\nContext: Look at the picture.\nWhich animal is a mammal?\nA. frog\nB. "
                                    "whale\nC. trout\nAnswer with the option's letter from the given choices directly.")
    assert user_message(data[1]) == ("Which word is a noun?\nA. run\nB. cat\nAnswer with the option's letter from the "
                                     "given choices directly.")  # no image, no <image>
    assert training_answer(record) == "B"
    # lmms-eval's scoring by default: the letter; "(B)" and the option text only with lenient parsing
    assert score_predictions(data, ["B", "B. cat"])["scienceqa"]["score"] == 100.0
    assert score_predictions(data, ["(B)", "cat"])["scienceqa"]["score"] == 0.0
    lenient = {"scienceqa": {"parsing": "lenient"}}
    assert score_predictions(data, ["(B)", "cat"], lenient)["scienceqa"]["score"] == 100.0
    img = load_scienceqa(tmp_path / "problems.json", tmp_path / "images", split="test", subset="img")
    assert img["question_id"] == ["5"]
    assert len(load_scienceqa(tmp_path / "problems.json", tmp_path / "images", split="train")) == 1
    with pytest.raises(ValueError, match="`scienceqa_subset` must be one of"):
        load_scienceqa(tmp_path / "problems.json", tmp_path / "images", subset="text")


def test_scienceqa_adapter_reads_the_lmms_lab_parquet_layout(tmp_path):
    rows = {"image": [{"bytes": png(), "path": None}, None], "question": ["Which is red?", "Which is a noun?"],
            "choices": [["sky", "apple"], ["run", "cat"]], "answer": [1, 1], "hint": ["", "Grammar."],
            "subject": ["x", "y"]}
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "choices": datasets.List(datasets.Value("string")), "answer": datasets.Value("int64"),
                                  "hint": datasets.Value("string"), "subject": datasets.Value("string")})
    (tmp_path / "ScienceQA-FULL").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "ScienceQA-FULL" / "test.parquet")
    full = load_vqa_benchmark("scienceqa", str(tmp_path / "ScienceQA-FULL"), split="test")
    assert full["question_id"] == ["test-0", "test-1"] and full[1]["image"] is None
    assert full[1]["question"] == "Context: Grammar.\nWhich is a noun?" and full["answer_index"] == [1, 1]
    img = load_vqa_benchmark("scienceqa", str(tmp_path / "ScienceQA-FULL"), split="test", scienceqa_subset="img")
    assert img["question_id"] == ["test-0"]


def test_prompts_are_lmms_evals():
    image = {"bytes": png(), "path": None}
    mme = {"task": "mme", "question": "Is there a dog in the image? Please answer yes or no.", "image": image}
    assert task_prompt(mme) == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    gqa = {"task": "gqa", "question": "Is the ball red?", "image": image}
    assert user_message(gqa) == "<image>\nIs the ball red?\nAnswer the question using a single word or phrase."
    okvqa = {"task": "vqa", "question": "What sport is this?", "image": image}
    assert task_prompt(okvqa) == ("What sport is this?\nWhen the provided information is insufficient, respond with "
                                  "'Unanswerable'.\nAnswer the question using a single word or phrase.")


def test_mme_adapter_reads_the_lmms_lab_parquet_layout(tmp_path):
    rows = {
        "question_id": ["existence/1.png", "existence/1.png", "count/2.png", "count/2.png"],
        "image": [{"bytes": png(), "path": None}] * 4,
        "question": ["Is there a dog? Please answer yes or no.", "Is there a cat? Please answer yes or no.",
                     "Are there two dogs? Please answer yes or no.", "Are there three dogs? Please answer yes or no."],
        "answer": ["Yes", "No", "Yes", "No"],
        "category": ["existence", "existence", "count", "count"],
    }
    features = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "category": datasets.Value("string")})
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    for source in (tmp_path, tmp_path / "data" / "test-00000-of-00001.parquet"):
        data = load_mme(str(source))
        assert data["image_id"] == rows["question_id"] and len(set(data["question_id"])) == 4
        assert data["category"] == rows["category"] and set(data["task"]) == {"mme"}
    scores = score_predictions(data, ["Yes", "No", "Yes", "Yes"])["mme"]
    assert scores["existence"] == 200.0 and scores["count"] == 50.0 and scores["score"] == 250.0


def test_llava_json_conversations_load_with_the_image_first(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png())
    rows = [
        {"id": "1", "image": "a.png", "conversations": [
            {"from": "human", "value": "What color is it?\n<image>"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "A circle."}]},
        {"id": "2", "image": "a.png", "conversations": [  # no placeholder: LLaVA puts the image before the first turn
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Describe it."},
            {"from": "gpt", "value": "A red circle."}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi."}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    data = load_conversations(str(tmp_path / "llava.json"), tmp_path / "images")
    assert data["id"] == ["1", "2", "3"] and data[0]["image"]["path"] == str(tmp_path / "images" / "a.png")
    assert data[0]["messages"] == [
        {"role": "user", "content": "<image>\nWhat color is it?"}, {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the shape?"}, {"role": "assistant", "content": "A circle."}]
    assert data[1]["messages"][:2] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "<image>\nDescribe it."}]
    assert data[2]["image"] is None and data[2]["messages"][0] == {"role": "user", "content": "Hello"}

    def fails(conversation, message, image="a.png"):
        (tmp_path / "bad.json").write_text(json.dumps([{"id": "x", "image": image, "conversations": conversation}]))
        with pytest.raises(ValueError, match=message):
            load_conversations(str(tmp_path / "bad.json"), tmp_path / "images")

    answer = {"from": "gpt", "value": "Red."}
    fails([{"from": "human", "value": "<image> <image>"}, answer], "holds 2 <image> placeholders")
    fails([{"from": "human", "value": "<image>"}, answer], "holds 1 <image> placeholders for 0 image", image=None)
    fails([answer, {"from": "human", "value": "Hm?"}], "must start with a user turn")
    fails([{"from": "bot", "value": "x"}], "unknown speaker 'bot'")
    fails([{"from": "human", "value": "x"}, {"from": "gpt", "value": "<image>"}], "in a assistant turn")
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="`image_dir`"):
        load_conversations(str(tmp_path / "llava.json"), tmp_path / "images")


def test_datasets_with_a_messages_column_load_as_conversations(tmp_path):
    rows = {
        "messages": [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
            [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}],
        ],
        "images": [[{"bytes": png(), "path": None}], []],
    }
    turn = {"role": datasets.Value("string"),
            "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
    features = datasets.Features({"messages": datasets.List(turn), "images": datasets.List(datasets.Image())})
    rows["messages"][1] = [{"role": t["role"], "content": [{"type": "text", "text": t["content"]}]}
                           for t in rows["messages"][1]]
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / "train.parquet")
    data = load_conversations(str(tmp_path / "data"))
    assert data[0]["messages"] == [{"role": "user", "content": "<image>\nWhat color?"},
                                   {"role": "assistant", "content": "red"}]
    assert data[0]["image"]["bytes"] == png() and data[1]["image"] is None
    assert data[1]["messages"][0] == {"role": "user", "content": "Say hi."}


def test_shapes_conversations_are_llava_json_one_conversation_per_picture(tmp_path):
    path = write_shapes_conversations(tmp_path / "llava", 3, image_size=16, seed=0)
    rows = json.loads(path.read_text())
    questions = make_shapes_vqa_dataset(3, image_size=16, seed=0, split="train")
    assert [r["id"] for r in rows] == ["shapes-train-0", "shapes-train-1", "shapes-train-2"]
    firsts = set()
    for n, row in enumerate(rows):
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 5
        records = [questions[5 * n + k] for k in range(5)]
        asked = [turns[0]["value"].removeprefix("<image>\n"), *(t["value"] for t in turns[2::2])]
        assert turns[0]["value"].startswith("<image>\n") and not any("<image>" in a for a in asked)
        pairs = sorted(zip(asked, (t["value"] for t in turns[1::2])))
        assert pairs == sorted((task_prompt(r), training_answer(r)) for r in records)  # every question, answered
        firsts.add([task_prompt(r) for r in records].index(asked[0]))  # which of the picture's five came first
    assert len(firsts) > 1  # not always the same kind
    data = load_conversations(str(path), tmp_path / "llava" / "images")
    assert len(data) == 3 and data[0]["messages"][0]["content"].startswith("<image>\n")


def test_generic_records_infer_their_scoring(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    lines = [
        {"image": "a.png", "question": "What is it?", "answer": "cat"},
        {"image": "a.png", "question": "What color?", "answers": [{"answer": "red"}, {"answer": "red"}]},
        {"image": "a.png", "question": "Which?", "choices": ["dog", "cat"], "answer": 1},
        {"image": "a.png", "question": "Pick one.", "choices": ["dog", "cat"], "answer": "a"},
    ]
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    data = load_vqa_records(str(tmp_path / "records.jsonl"), image_dir=tmp_path)
    assert data["task"] == ["gqa", "vqa", "scienceqa", "scienceqa"] and data["answers"][1] == ["red", "red"]
    assert data["answer_index"] == [-1, -1, 1, 0] and data["answers"][2:] == [["cat"], ["dog"]]
    assert data["image_id"][0].endswith("a.png")
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.png", "question": "?", "choices": ["x"], "answer": "z"}]))
    with pytest.raises(ValueError, match="neither an option index"):
        load_vqa_records(str(tmp_path / "bad.json"), image_dir=tmp_path)
    with pytest.raises(ValueError, match="`questions_file`"):
        load_vqa_benchmark("gqa", None, None, str(tmp_path))


def test_shapes_vqa_asks_all_four_kinds_with_correct_answers():
    pictures = make_shapes_dataset(8, image_size=16, seed=0, split="validation")
    data = make_shapes_vqa_dataset(8, image_size=16, seed=0, split="validation")
    assert len(data) == 40 and data["task"].count("mme") == 16
    assert make_shapes_vqa_dataset(4, image_size=16, seed=0, split="validation")["question_id"] == \
        data["question_id"][:20]
    for i, picture in enumerate(pictures):
        rows = {r["question_id"].rsplit("-", 1)[-1]: r for r in data.select(range(5 * i, 5 * i + 5))}
        assert rows["count"]["answers"].count(str(picture["count"])) == 4
        assert {rows["yes"]["answers"][0], rows["no"]["answers"][0]} == {"yes", "no"}
        assert rows["yes"]["image_id"] == rows["no"]["image_id"]
        choice = rows["choice"]
        assert choice["choices"][choice["answer_index"]] in (picture["shape"], picture["color"])
    oracle = [training_answer(r) for r in data.remove_columns("image")]
    scores = score_predictions(data, oracle)
    assert scores["gqa"]["score"] == scores["vqa"]["score"] == scores["scienceqa"]["score"] == 100.0
    assert scores["mme"]["score"] == 4 * 200.0  # existence, count, position, color: all perception


# -- generation and scoring -------------------------------------------------------------------------------------------
def test_generation_and_scoring_end_to_end_on_the_embedded_data(built, train_data, eval_data):
    model, processor = built
    batched = generate_answers(model, processor, eval_data, batch_size=7, max_new_tokens=3)
    assert len(batched) == len(eval_data) and all(isinstance(a, str) for a in batched)
    # Left padding changes nothing: answers one by one are the same.
    assert generate_answers(model, processor, eval_data.select(range(6)), batch_size=1, max_new_tokens=3) == \
        batched[:6]
    results = score_predictions(eval_data, batched)
    assert set(results) == {"mme", "gqa", "vqa", "scienceqa"}
    assert all(r["num_questions"] > 0 and r["score"] >= 0 for r in results.values())
    prior = score_predictions(eval_data, question_prior_predictions(train_data, eval_data))
    table = format_results_table({"tiny": results, "prior": prior})
    assert table.splitlines()[0] == "| | MME | GQA | OK-VQA | ScienceQA |" and len(table.splitlines()) == 4
    with pytest.raises(ValueError, match="3 predictions for 20 questions"):
        score_predictions(eval_data, batched[:3])


def test_generation_asks_in_the_chat_template_greedily_and_only_strips(built, eval_data, monkeypatch):
    model, processor = built
    tokenizer = processor.tokenizer
    text_only = eval_data.select([4]).cast_column("image", datasets.Image(decode=False)).map(lambda r: {"image": None})
    data = datasets.concatenate_datasets([eval_data.select([0]), text_only])  # a GQA question, a text-only one
    calls, generate = [], model.generate

    def spy(**inputs):
        calls.append(inputs)
        return generate(**inputs)

    monkeypatch.setattr(model, "generate", spy)
    monkeypatch.setattr(processor, "batch_decode", lambda ids, **kwargs: [" red\nblue  "] * len(ids))
    assert generate_answers(model, processor, data) == ["red\nblue", "red\nblue"]  # stripped, nothing cut
    assert [(c["max_new_tokens"], c["do_sample"], c["num_beams"]) for c in calls] == [(16, False, 1)] * 2
    for call, record in zip(calls, data):
        chat = [{"role": "user", "content": user_message(record)}]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert prompt.endswith("<|assistant|>\n") and ("<image>" in prompt) == (record["image"] is not None)
        expected = tokenizer(prompt.replace("<image>", "<image>" * 16), add_special_tokens=False).input_ids
        assert call["input_ids"][0].tolist() == expected
    image = PIL.Image.open(io.BytesIO(data[0]["image"]["bytes"]))
    padded = processor.image_processor(images=[expand_to_square(image, (127, 127, 127))], return_tensors="pt")
    assert torch.equal(calls[0]["pixel_values"], padded["pixel_values"]) and "pixel_values" not in calls[1]


def test_scoring_options_are_the_metrics_own():
    for task, (option, values) in SCORING_OPTIONS.items():
        metric = load_metric(TASK_METRICS[task][0], keep_in_memory=True)
        module = sys.modules[type(metric).__module__]
        assert tuple(getattr(module, f"{option.upper()}S")) == values  # PARSINGS, NORMALIZATIONS
        assert inspect.signature(metric._compute).parameters[option].default == values[0]  # lmms-eval's


# -- the script -------------------------------------------------------------------------------------------------------
def test_script_rejects_bad_flag_combinations(tmp_path):
    script = vlm_cli
    with pytest.raises(ValueError, match="exactly one model source"):
        script.ModelArguments()
    with pytest.raises(ValueError, match="--text_model_name_or_path"):
        script.ModelArguments(vision_model_name_or_path="x")
    with pytest.raises(ValueError, match="--benchmark gqa reads --questions_file"):
        script.DataArguments(benchmark="gqa")
    with pytest.raises(ValueError, match="--train_benchmark okvqa needs --train_image_dir"):
        script.DataArguments(train_benchmark="okvqa", train_questions_file="q.json")
    with pytest.raises(ValueError, match="--scienceqa_parsing must be one of"):
        script.DataArguments(scienceqa_parsing="loose")
    with pytest.raises(ValueError, match="--image_aspect_ratio must be one of"):
        script.DataArguments(image_aspect_ratio="crop")
    with pytest.raises(ValueError, match="--benchmark must be one of"):
        script.DataArguments(benchmark="conversations", questions_file="c.json")
    with pytest.raises(ValueError, match="--train_benchmark conversations reads --train_questions_file"):
        script.DataArguments(train_benchmark="conversations")
    assert script.DataArguments().scoring == {"scienceqa": {"parsing": "strict"}, "mme": {"parsing": "official"},
                                              "gqa": {"normalization": "lmms_eval"}, "vqa": {"normalization": "lmms_eval"}}
    with pytest.raises(ValueError, match="--vqa_normalization must be one of"):
        script.DataArguments(vqa_normalization="vqaeval")
    with pytest.raises(ValueError, match="--tiny_text_backbone brings its own chat template"):
        script.ModelArguments(vision_model_name_or_path="x", tiny_text_backbone=True, chat_template="{{ x }}")
    args = script.VLMTrainingArguments(output_dir=str(tmp_path), do_train=True)
    assert (args.stage_batch_sizes, args.stage_learning_rates, args.stage_epochs) == ([256, 64], [1e-3, 2e-5], [1, 1])
    assert args.warmup_steps == 0.03 and args.weight_decay == 0.0 and args.max_grad_norm == 1.0
    assert VLM_STAGE_DEFAULTS[2].batch_size == 64
    with pytest.raises(ValueError, match="--do_train"):
        script.VLMTrainingArguments(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--lora_r 4 applies to stage 2"):
        script.VLMTrainingArguments(output_dir=str(tmp_path), do_train=True, stages=[1], lora_r=4)


@pytest.mark.parametrize("mistake", ["stages", "missing_questions", "missing_conversations", "missing_vision",
                                     "tiny_without_train", "json"])
def test_script_user_errors_print_one_argparse_line_before_any_work(mistake, backbones, tmp_path, monkeypatch,
                                                                     capsys):
    out = tmp_path / "run"
    composed = ["--vision_model_name_or_path", backbones["hive"], "--text_model_name_or_path", backbones["text"]]
    argv, words = {
        "stages": ([*composed, "--do_train", "--stages", "3"], ["--stages", "1 2", "[3]"]),
        "missing_questions": ([*composed, "--do_train", "--train_benchmark", "gqa", "--train_questions_file",
                               tmp_path / "q.json", "--train_image_dir", tmp_path], ["--train_questions_file",
                                                                                   "does not exist"]),
        "missing_conversations": ([*composed, "--do_train", "--train_benchmark", "conversations",
                                   "--train_questions_file", tmp_path / "llava.json"], ["--train_questions_file",
                                                                                         "llava.json", "does not exist"]),
        "missing_vision": (["--vision_model_name_or_path", tmp_path / "nothing", "--tiny_text_backbone", "--do_train"],
                           ["nothing"]),
        "tiny_without_train": (["--vision_model_name_or_path", backbones["hive"], "--tiny_text_backbone",
                                "--do_eval"], ["--tiny_text_backbone", "--do_train"]),
        "json": ([tmp_path / "vlm.json"], ["vlm.json", "not valid JSON"]),
    }[mistake]
    (tmp_path / "vlm.json").write_text('{"do_train": true')
    message = user_error("run_vlm_finetune", [*argv, "--output_dir", out, "--use_cpu", "--report_to", "none"],
                         monkeypatch, capsys)
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()


PLAIN_LOADER = """
import sys

class BlockHive:
    def find_spec(self, name, path=None, target=None):
        if name == "hive_hf" or name.startswith("hive_hf."):
            raise ImportError("hive_hf is blocked in this process")

sys.meta_path.insert(0, BlockHive())
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained({folder!r})
processor = AutoProcessor.from_pretrained({folder!r})
inputs = processor(images=[Image.new("RGB", (16, 16), (200, 30, 30))],
                   text=["<image>\\nQuestion: what color are the shapes?\\nAnswer:"], return_tensors="pt")
model.generate(**inputs, max_new_tokens=2, do_sample=False)
print(type(model).__name__, type(processor).__name__)
"""


def test_script_end_to_end(backbones, tmp_path):
    out = tmp_path / "run"
    llava = write_shapes_conversations(tmp_path / "llava", 8, image_size=16, seed=0)
    command = [
        sys.executable, str(ROOT / "examples" / "run_vlm_finetune.py"),
        "--vision_model_name_or_path", backbones["hive"], "--tiny_text_backbone", "--tiny_text_hidden_size", "32",
        "--tiny_text_layers", "2", "--tiny_text_pretrain_steps", "0", "--shapes_image_size", "16",
        "--train_benchmark", "conversations", "--train_questions_file", str(llava),
        "--train_image_dir", str(tmp_path / "llava" / "images"),
        "--shapes_eval_images", "2", "--do_train", "--do_eval",
        "--stage_max_steps", "2", "2", "--per_device_train_batch_size", "4", "--stage_batch_sizes", "4", "4",
        "--lora_r", "2", "--max_new_tokens", "2", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
        "--disable_tqdm", "True", "--output_dir", str(out), "--run_name", "tiny",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| tiny |" in result.stdout and "blind" not in result.stdout  # no VQA training data, no question prior
    for stage in (1, 2):
        config = json.loads((out / f"stage{stage}" / "config.json").read_text())
        assert config["model_type"] == "llava" and "auto_map" not in config and config["vision_feature_layer"] == -2
        assert json.loads((out / f"stage{stage}" / "vlm_stage.json").read_text())["stage"] == stage
    assert not any("lora_" in k for k in LlavaForConditionalGeneration.from_pretrained(out / "stage2").state_dict())
    assert AutoProcessor.from_pretrained(out / "stage2").tokenizer.chat_template == CHAT_TEMPLATE
    scores = json.loads((out / "eval_results.json").read_text())
    assert scores["eval_samples"] == 10 and {"mme_score", "gqa_score", "vqa_score", "scienceqa_score"} <= set(scores)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 10 and all("prediction" in p for p in predictions)
    assert "| tiny |" in (out / "results.md").read_text()

    # The released folder needs neither hive_hf nor remote code: load and generate with hive_hf blocked.
    loader = PLAIN_LOADER.format(folder=str(out / "stage2"))
    result = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["LlavaForConditionalGeneration", "LlavaProcessor"]
