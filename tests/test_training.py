"""Stage freezing, HiveTrainer's optimizer groups, the stage callback and skipped-image counting."""

import io
import json

import pytest
import torch
from tiny import AUTHORS, set_gates, tiny_config, tiny_model
from transformers import SiglipImageProcessorPil, TrainerCallback, TrainingArguments

from hive_hf import HiveConfig, HiveForConditionalGeneration, HiveProcessor
from hive_hf.data import make_shapes_dataset
from hive_hf.modeling_hive import CHECKPOINTING, parameter_component
from hive_hf.tiny_backbones import build_word_tokenizer
from hive_hf.training import (
    HiveCaptionCollator,
    HiveStageCallback,
    HiveTrainer,
    apply_lora,
    build_param_groups,
    merge_lora,
)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(64, image_size=16, seed=0)


def setup(shapes, fusion="joint", **config_kwargs):
    model = tiny_model(fusion=fusion, **config_kwargs)
    set_gates(model, 0.5)
    processor = HiveProcessor.for_model_config(
        model.config, SiglipImageProcessorPil(size={"height": 16, "width": 16}),
        build_word_tokenizer(shapes["caption"]))
    return model, processor


def train_args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-2,
                    use_cpu=True, report_to="none", save_strategy="no", remove_unused_columns=False,
                    logging_steps=1, disable_tqdm=True, seed=0)
    return TrainingArguments(**{**defaults, **kwargs})


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model, component):
    after = dict(model.named_parameters())
    names = [n for n in before if parameter_component(n) == component]
    return {n: not torch.equal(before[n], after[n]) for n in names}


# -- set_training_stage -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion, separate", [("joint", False), ("joint", True), ("gated", False), ("concat", False)])
def test_stages_train_exactly_their_components(fusion, separate):
    model = tiny_model(fusion=fusion, image_kv="separate" if separate else "shared")
    unused = model._unused_vision_parameters()
    assert unused and all("post_layernorm" in n or ".head." in n for n in unused)  # deepest tap is the last block
    for stage, expected in [(1, {"projector", "fusion"}), (2, {"projector", "fusion", "llm"}),
                            (3, {"projector", "fusion", "llm", "vision"})]:
        counts = model.set_training_stage(stage)
        assert model.config.training_stage == stage
        for name, param in model.named_parameters():
            should = parameter_component(name) in expected and name not in unused
            assert param.requires_grad == should, (stage, name)
        assert counts["projector"]["trainable"] == counts["projector"]["total"] > 0
    has_fusion = fusion == "gated" or separate
    assert (counts["fusion"]["total"] > 0) == has_fusion
    with pytest.raises(ValueError, match="`stage` must be 1, 2 or 3, got 4"):
        model.set_training_stage(4)


def _trainable(model, stage):
    model.set_training_stage(stage)
    return {n.replace("language_model.model.", "") for n, p in model.named_parameters() if p.requires_grad}


def test_the_authors_recipe_trains_what_their_tunable_parts_name():
    """HIVE_florence.sh: stage 1 `mm_mlp_adapter,mm_qknorm`, stage 2 `+ mm_layer`, stage 3 `+ mm_vision_tower`."""
    model = tiny_model(**AUTHORS)
    projectors = {n for n, _ in model.named_parameters() if n.startswith("projectors.")}
    qk_norms = {f"layers.{i}.self_attn.hive_{q}_norm.weight" for i in (1, 3) for q in "qk"}
    mm_layer = {f"layers.{i}.self_attn.{p}_proj.weight" for i in (1, 3)
                for p in ("q", "k", "v", "o", "image_k", "image_v")}
    assert _trainable(model, 1) == projectors | qk_norms  # the image uses the layer's own, frozen k/v
    assert _trainable(model, 2) == projectors | qk_norms | mm_layer  # no embeddings, norms, MLPs or other layers
    vision = {n for n in _trainable(model, 3) if n.startswith("vision_model.")}
    assert _trainable(model, 3) == projectors | qk_norms | mm_layer | vision
    assert vision == {n for n, _ in model.vision_model.named_parameters(prefix="vision_model")} - \
        model._unused_vision_parameters()


@pytest.mark.parametrize("scope", ["all", "all_but_embeddings"])
def test_llm_train_scope(scope):
    model = tiny_model(llm_train_scope=scope)
    llm = {n for n, _ in model.language_model.model.named_parameters()}  # embed_tokens is also the (tied) lm_head
    trained = {n for n in _trainable(model, 2) if not n.startswith("projectors.")}
    assert trained == (llm if scope == "all" else {n for n in llm if not n.startswith("embed_tokens.")})


def test_separate_image_kv_are_copied_when_the_first_separate_stage_starts():
    model = tiny_model(**AUTHORS)
    attn = model.language_model.model.layers[1].self_attn
    with torch.no_grad():
        attn.image_k_proj.weight.add_(1.0)  # e.g. a stage-1 checkpoint made before the LLM's k/v were loaded
    model.set_training_stage(1)
    assert not torch.equal(attn.image_k_proj.weight, attn.k_proj.weight)  # stage 1 does not use them
    model.set_training_stage(2)
    assert torch.equal(attn.image_k_proj.weight, attn.k_proj.weight)
    assert torch.equal(attn.image_v_proj.weight, attn.v_proj.weight)
    assert attn.image_k_proj.weight is not attn.k_proj.weight
    with torch.no_grad():
        attn.image_k_proj.weight.add_(1.0)  # trained in stage 2
    model.set_training_stage(2)  # re-applied (the callback does at train start) and stage 3: kept, not re-copied
    model.set_training_stage(3)
    assert not torch.equal(attn.image_k_proj.weight, attn.k_proj.weight)


def test_blocks_after_the_deepest_tap_stay_frozen_in_stage_3():
    model = tiny_model(vision_feature_layers=[1, 2], cross_attention_layers=[1, 3])
    model.set_training_stage(3)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".encoder.layers.3." in n for n in frozen) and any(".encoder.layers.2." in n for n in frozen)
    assert not any(".encoder.layers.1." in n for n in frozen)


def test_lora_in_stage_2_trains_adapters_only_and_merges_back(shapes, tmp_path):
    model, processor = setup(shapes, fusion="gated")
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    model.set_training_stage(2)
    trainable_llm = [n for n, p in model.named_parameters() if p.requires_grad and parameter_component(n) == "llm"]
    assert trainable_llm and all("lora_" in n for n in trainable_llm)
    assert not any("cross_attn" in n and "lora_" in n for n, _ in model.named_parameters())  # connector trains fully
    trainer = HiveTrainer(model=model, args=train_args(tmp_path), train_dataset=shapes,
                          data_collator=HiveCaptionCollator(processor), stage=2)
    trainer.train()
    merge_lora(model)
    assert not any("lora_" in n for n, _ in model.state_dict().items())
    model.save_pretrained(tmp_path / "merged")
    again = HiveForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert again.state_dict().keys() == model.state_dict().keys()


# -- optimizer groups -------------------------------------------------------------------------------------------------
def test_param_groups_skip_decay_on_norms_biases_and_gates_and_scale_lr():
    model = tiny_model(fusion="gated")
    model.set_training_stage(3)
    groups = build_param_groups(model, weight_decay=0.1, learning_rate=1e-3, lr_multipliers={"vision": 0.1})
    by_name = {n: g for g in groups for n in g["names"]}
    assert set(by_name) == {n for n, p in model.named_parameters() if p.requires_grad}
    gate = next(n for n in by_name if n.endswith("cross_attn.gate"))
    assert by_name[gate]["weight_decay"] == 0.0
    norm = next(n for n in by_name if n.endswith("input_layernorm.weight"))
    assert by_name[norm]["weight_decay"] == 0.0
    bias = next(n for n in by_name if n.endswith("linear_1.bias"))
    assert by_name[bias]["weight_decay"] == 0.0
    weight = next(n for n in by_name if n.endswith("linear_1.weight"))
    assert by_name[weight]["weight_decay"] == 0.1 and by_name[weight]["lr"] == 1e-3
    vision = next(n for n in by_name if n.startswith("vision_model.") and n.endswith("q_proj.weight"))
    assert by_name[vision]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown components"):
        build_param_groups(model, 0.0, 1e-3, {"encoder": 2.0})
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="set_training_stage"):
        build_param_groups(model, 0.0, 1e-3)


# -- training runs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["joint", "gated", "concat"])
def test_three_stages_change_exactly_what_they_train(fusion, shapes, tmp_path):
    model, processor = setup(shapes, fusion=fusion)
    collator = HiveCaptionCollator(processor)
    # Stage 1: vision and LLM bitwise unchanged, connector changed.
    before = snapshot(model)
    HiveTrainer(model=model, args=train_args(tmp_path / "s1"), train_dataset=shapes, data_collator=collator,
                stage=1).train()
    assert not any(changed(before, model, "vision").values())
    assert not any(changed(before, model, "llm").values())
    assert all(changed(before, model, "projector").values())
    if fusion == "gated":
        assert all(changed(before, model, "fusion").values())
    # Stage 2: vision still unchanged, LLM changed.
    before = snapshot(model)
    HiveTrainer(model=model, args=train_args(tmp_path / "s2"), train_dataset=shapes, data_collator=collator,
                stage=2).train()
    assert not any(changed(before, model, "vision").values())
    llm = changed(before, model, "llm")
    assert sum(llm.values()) >= len(llm) - 1  # everything but (maybe) an embedding row never seen
    # Stage 3: everything the objective reaches changed.
    before = snapshot(model)
    trainer = HiveTrainer(model=model, args=train_args(tmp_path / "s3"), train_dataset=shapes,
                          data_collator=collator, stage=3)
    trainer.train()
    unused = model._unused_vision_parameters()
    vision = {n: c for n, c in changed(before, model, "vision").items() if n not in unused}
    assert vision and all(vision.values())
    assert all(changed(before, model, "projector").values())
    # The stage is recorded in the config and in the trainer state.
    trainer.save_model(tmp_path / "final")
    assert HiveConfig.from_pretrained(tmp_path / "final").training_stage == 3
    state = trainer.state.stateful_callbacks["HiveStageCallback"]
    assert state["args"]["stage"] == 3


def test_the_authors_recipe_over_stages_1_and_2(shapes, tmp_path):
    """Stage 1 moves only projectors and QK-norms (the image through the frozen k/v); stage 2 the fused attention."""
    model, processor = setup(shapes, image_position=4, **AUTHORS)
    collator = HiveCaptionCollator(processor)
    assert model.config.image_position == 1  # set by the processor: after its prefix, [BOS]
    before = snapshot(model)
    HiveTrainer(model=model, args=train_args(tmp_path / "s1"), train_dataset=shapes, data_collator=collator,
                stage=1).train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == {n for n in before if n.startswith("projectors.") or "hive_" in n}
    before = snapshot(model)
    HiveTrainer(model=model, args=train_args(tmp_path / "s2"), train_dataset=shapes, data_collator=collator,
                stage=2).train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    fused = {n for n in before if n.startswith(("language_model.model.layers.1.self_attn.",
                                                "language_model.model.layers.3.self_attn."))}
    assert moved == {n for n in before if n.startswith("projectors.")} | fused


def test_stage_is_saved_in_checkpoints(shapes, tmp_path):
    model, processor = setup(shapes)
    args = train_args(tmp_path, save_strategy="steps", save_steps=2)
    HiveTrainer(model=model, args=args, train_dataset=shapes, data_collator=HiveCaptionCollator(processor),
                stage=1).train()
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["HiveStageCallback"]["args"]["stage"] == 1
    assert json.loads((tmp_path / "checkpoint-2" / "config.json").read_text())["training_stage"] == 1


class _Tamper(TrainerCallback):
    """Changes a frozen weight behind the trainer's back."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.vision_model.vision_tower.embeddings.patch_embedding.weight.add_(1.0)


class _Unfreeze(TrainerCallback):
    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.vision_model.vision_tower.embeddings.patch_embedding.weight.requires_grad_(True)


def test_callback_raises_when_a_frozen_weight_changes(shapes, tmp_path):
    model, processor = setup(shapes)
    trainer = HiveTrainer(model=model, args=train_args(tmp_path), train_dataset=shapes,
                          data_collator=HiveCaptionCollator(processor), stage=1, callbacks=[_Tamper()])
    with pytest.raises(RuntimeError, match="frozen parameter .*patch_embedding.weight changed"):
        trainer.train()


def test_callback_raises_when_a_frozen_weight_gets_a_gradient(shapes, tmp_path):
    model, processor = setup(shapes)
    model.vision_model.vision_tower.embeddings.patch_embedding.weight.requires_grad_(True)
    collator = HiveCaptionCollator(processor)
    trainer = HiveTrainer(model=model, args=train_args(tmp_path), train_dataset=shapes, data_collator=collator,
                          stage=1, callbacks=[_Unfreeze()])
    # the encoder runs without grad when all of it is frozen; with one weight unfrozen it gets one
    with pytest.raises(RuntimeError, match="patch_embedding.weight"):
        trainer.train()


def test_plain_trainer_with_the_callback_applies_the_stage(shapes, tmp_path):
    from transformers import Trainer

    model, processor = setup(shapes)
    before = snapshot(model)
    Trainer(model=model, args=train_args(tmp_path), train_dataset=shapes, data_collator=HiveCaptionCollator(processor),
            callbacks=[HiveStageCallback(1)]).train()
    assert not any(changed(before, model, "llm").values()) and all(changed(before, model, "projector").values())


# -- skipped images ---------------------------------------------------------------------------------------------------
def test_unreadable_images_are_skipped_counted_and_never_fatal(shapes, tmp_path):
    model, processor = setup(shapes)
    rows = [dict(r) for r in shapes.select(range(16))]
    buffer = io.BytesIO()
    rows[0]["image"].save(buffer, format="PNG")
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    rows[2]["image"] = {"bytes": buffer.getvalue()[:40], "path": None}  # truncated PNG
    rows[3]["image"] = {"bytes": None, "path": str(tmp_path / "missing.jpg")}
    rows[4]["caption"] = ""
    collator = HiveCaptionCollator(processor)
    batch = collator(rows[:8])
    assert int(batch["num_skipped_images"]) == 4 and batch["input_ids"].shape[0] == 4
    assert batch["pixel_values"].shape[0] == 4
    all_bad = collator(rows[1:4])  # repeats the last good row instead of stopping
    assert all_bad["input_ids"].shape[0] == 1 and int(all_bad["num_skipped_images"]) == 3
    with pytest.raises(ValueError, match="--image_column"):
        HiveCaptionCollator(processor)(rows[1:4])

    from datasets import Dataset, Image

    # As load_caption_dataset does: images stay undecoded in the dataset, so decoding (and skipping) is ours.
    data = Dataset.from_list([{"image": r["image"], "caption": r["caption"]} for r in rows[:8]] * 2)
    data = data.cast_column("image", Image(decode=False))
    trainer = HiveTrainer(model=model, args=train_args(tmp_path, max_steps=2, per_device_train_batch_size=8),
                          train_dataset=data, data_collator=collator, stage=1)
    trainer.train()
    assert trainer.total_skipped_images() == 8


def test_the_skipped_image_count_survives_a_resume(shapes, tmp_path):
    """Killed after a checkpoint and resumed, a stage reports the images skipped over all of it, per pass over the
    data: 4 unreadable images in 16 rows, two epochs of 4 batches, so 8 whatever the order."""
    from datasets import Dataset, Image

    rows = [{"image": r["image"], "caption": r["caption"]} for r in shapes.select(range(16))]
    for row in rows[:4]:
        row["image"] = {"bytes": b"not an image", "path": None}
    data = Dataset.from_list(rows).cast_column("image", Image(decode=False))
    args = train_args(tmp_path, max_steps=8, per_device_train_batch_size=4, save_strategy="steps", save_steps=4)

    def trainer():
        model, processor = setup(shapes)
        return HiveTrainer(model=model, args=args, train_dataset=data, data_collator=HiveCaptionCollator(processor),
                           stage=1)

    uninterrupted = trainer()
    uninterrupted.train()
    assert uninterrupted.total_skipped_images() == 8
    checkpoint = tmp_path / "checkpoint-4"  # where a run killed during its second epoch resumes
    assert json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"][
        "SkippedImagesCallback"]["args"] == {"saved": 4}
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.total_skipped_images() == 8 and resumed.skipped_images == 8


def test_gradient_checkpointing_reaches_the_encoder_in_stage_3(shapes, tmp_path):
    model, processor = setup(shapes)
    before = snapshot(model)
    args = train_args(tmp_path, max_steps=2, **{CHECKPOINTING: True})
    HiveTrainer(model=model, args=args, train_dataset=shapes, data_collator=HiveCaptionCollator(processor),
                stage=3).train()
    assert model.vision_model.vision_tower.encoder.layers[0].gradient_checkpointing
    vision = {n: c for n, c in changed(before, model, "vision").items() if n not in model._unused_vision_parameters()}
    assert all(vision.values())


def test_bf16_autocast_step_runs_where_supported(shapes, tmp_path):
    if not torch.cpu._is_avx512_bf16_supported() and not torch.cuda.is_available():
        pytest.skip("no bf16 hardware here; the Trainer's --bf16 flag is what enables it")
    model, processor = setup(shapes)
    HiveTrainer(model=model, args=train_args(tmp_path, bf16=True, max_steps=1), train_dataset=shapes,
                data_collator=HiveCaptionCollator(processor), stage=3).train()


def test_config_default_is_unstaged():
    assert tiny_config().training_stage is None


def test_resume_passes_over_a_checkpoint_cut_off_while_saving(tmp_path):
    from hive_hf.runs.layout import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "none") is None
    for step, state in [(2, '{"global_step": 2}'), (10, '{"global_step": 10}'), (12, '{"global_st'), (14, None)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_checkpoints_saved_within_a_second_rotate_in_step_order_without_a_filesystem_warning(tmp_path):
    """`Trainer` rotates checkpoints by mtime and, when they are under a second apart (a fast run), blames the
    filesystem in a warning before falling back to step order. That order is right; our trainer drops the warning."""
    import logging as pylogging

    from transformers.trainer_utils import sort_checkpoints
    from transformers.utils import logging as hf_logging

    import hive_hf.training.trainer  # noqa: F401  (installs the filter)

    for step in (20, 10, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    records: list[pylogging.LogRecord] = []
    handler = pylogging.Handler()
    handler.emit = records.append
    utils_logger = hf_logging.get_logger("transformers.trainer_utils")
    utils_logger.addHandler(handler)
    pylogging.Logger.warning_once.cache_clear()  # the warning is emitted once per process: make this call emit it
    try:
        ordered = sort_checkpoints(str(tmp_path), use_mtime=True)
    finally:
        utils_logger.removeHandler(handler)
    assert [p.rsplit("-", 1)[1] for p in ordered] == ["10", "20", "30"]
    assert not [r for r in records if "mtime" in r.getMessage()]
