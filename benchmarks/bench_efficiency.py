#!/usr/bin/env python
"""HIVE's training efficiency, measured: FLOPs, step time and peak memory of `joint`, `gated` and `concat` (the SA
baseline) and of the floor (the text-only LLM plus the encoder pass), for each pre-training stage's trainable set.

The paper (Sec. 4.6, appendix Sec. 8) reports 0.14x the training FLOPs of the SA baseline, 3.43x faster epochs and
22.03 vs 54.2 GB peak memory, for SigLIP-L/16-384 + MobileLLM-350M. Everything here runs in one command:

    # the paper's shapes: FLOPs counted on the meta device (nothing allocated), memory estimated there
    python benchmarks/bench_efficiency.py --output outputs/efficiency_paper.json

    # the paper's token counts and depths at 0.4x the widths: also timed and measured on this machine
    python benchmarks/bench_efficiency.py --preset small --output outputs/efficiency_small.json

    # any shapes (a preset, then overrides); only some stages or modes
    python benchmarks/bench_efficiency.py --preset small --text_hidden_size 512 --num_taps 4 --stages 2

    # seconds: the shapes of the tests
    python benchmarks/bench_efficiency.py --preset tiny --output outputs/efficiency_tiny.json

`--output results/<name>.json` regenerates the files the README quotes.

FLOPs are counted (`hive_hf.analysis.flops`) on this machine's device when the shapes fit it, else on the meta
device; the LLM side (projectors, fusion, LLM, head) is counted apart from the encoder. Times are medians of
forward+backward steps (no optimizer step) after warm-up, the modes taken in turn; peak memory is the peak of live
tensor bytes, parameters included (`hive_hf.analysis.profiling`). Generation: ms per new token with cached image
keys/values for several image-token counts. Uses CUDA when present.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from hive_hf.analysis.flops import (
    PRESETS,
    EfficiencyShapes,
    analytic_forward_flops,
    build_model,
    count_floor_step,
    count_training_step,
    floor_step,
    make_batch,
    meta_kernels_available,
    training_step,
)
from hive_hf.analysis.profiling import generation_ms_per_token, interleaved_step_times, peak_memory_bytes
from hive_hf.cli.parsing import HiveArgumentParser, user_errors
from hive_hf.configuration_hive import FUSION_MODES
from hive_hf.runs.records import write_results
from hive_hf.runs.stages import HIVE_STAGES
from hive_hf.runs.tables import markdown_table

logger = logging.get_logger("hive_hf.bench_efficiency")
SHAPE_FIELDS = [f.name for f in dataclasses.fields(EfficiencyShapes)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLOOR = "floor"

# Targets (checked and reported, never asserted): see the module docstring and the project brief.
TARGET_LLM_RATIO = 0.17  # paper shapes: joint's LLM-side FLOPs at most this fraction of concat's
TARGET_TIME_VS_PREDICTED = 0.25  # measured concat/joint time ratio within 25% of the FLOP ratio
TARGET_JOINT_VS_FLOOR = 1.3  # joint's step time at most 1.3x the floor's
TARGET_GENERATION_GROWTH = 1.2  # ms/token at the most image tokens at most 1.2x that at the fewest


@dataclass
class BenchmarkArguments:
    preset: str = field(default="paper", metadata={"help": f"Shapes to start from: {sorted(PRESETS)}."})
    batch_size: int | None = field(default=None, metadata={"help": "Images (and captions) per step."})
    text_length: int | None = field(default=None, metadata={"help": "Text tokens per caption (paper: 77)."})
    image_size: int | None = field(default=None, metadata={"help": "Image side in pixels."})
    patch_size: int | None = field(default=None, metadata={"help": "Encoder patch side in pixels."})
    vision_hidden_size: int | None = field(default=None, metadata={"help": "Encoder width."})
    vision_intermediate_size: int | None = field(default=None, metadata={"help": "Encoder MLP width."})
    vision_layers: int | None = field(default=None, metadata={"help": "Encoder depth."})
    vision_heads: int | None = field(default=None, metadata={"help": "Encoder attention heads."})
    text_hidden_size: int | None = field(default=None, metadata={"help": "LLM width."})
    text_intermediate_size: int | None = field(default=None, metadata={"help": "LLM MLP width."})
    text_layers: int | None = field(default=None, metadata={"help": "LLM depth."})
    text_heads: int | None = field(default=None, metadata={"help": "LLM attention heads."})
    text_kv_heads: int | None = field(default=None, metadata={"help": "LLM key/value heads."})
    vocab_size: int | None = field(default=None, metadata={"help": "LLM vocabulary."})
    num_taps: int | None = field(default=None, metadata={"help": "Tapped encoder layers = fused LLM layers."})
    modes: list[str] = field(default_factory=lambda: list(FUSION_MODES), metadata={"help": "Fusions to measure."})
    stages: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Training stages to measure."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (cuda when present)."})
    dtype: str = field(default="float32", metadata={"help": f"One of {sorted(DTYPES)}."})
    count_device: str = field(
        default="auto",
        metadata={"help": "Where FLOPs are counted: meta, device, or auto (the device when the shapes fit, else "
                          "meta). The meta count is always made too, and compared with the device's."},
    )
    measure: str = field(
        default="auto", metadata={"help": "Time and measure memory: yes, no, or auto (when the shapes fit)."}
    )
    max_step_tflops: float | None = field(
        default=None,
        metadata={"help": "auto: shapes 'fit' only if the costliest step is at most this many TFLOPs "
                          "(default 1.0 on CPU, about 10 s here; no limit on CUDA)."},
    )
    memory_fraction: float = field(
        default=0.5, metadata={"help": "auto: shapes 'fit' only if all models and the largest step use at most this "
                                       "fraction of the free memory."}
    )
    warmup: int = field(default=1, metadata={"help": "Untimed steps per mode before timing."})
    repeats: int = field(default=5, metadata={"help": "Timed steps per mode (the median is reported)."})
    generation: str = field(default="auto", metadata={"help": "Measure ms per generated token: yes, no, auto (with "
                                                               "--measure)."})
    generation_image_sizes: list[int] | None = field(
        default=None,
        metadata={"help": "Image sides for the generation test (default: 1/4, 1/2, 3/4, 1 of image_size)."},
    )
    generation_new_tokens: int = field(default=16, metadata={"help": "Tokens generated per timed generate call."})
    generation_repeats: int = field(default=2, metadata={"help": "Timed generate calls per point (median)."})
    generation_prompt_length: int = field(default=8, metadata={"help": "Prompt tokens before generation."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    output: str | None = field(default=None, metadata={"help": "Write all results to this JSON file."})
    seed: int = field(default=0, metadata={"help": "Seed of weights and inputs."})

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}.")
        bad = [m for m in self.modes if m not in FUSION_MODES]
        if bad or not self.modes:
            raise ValueError(f"--modes must be a non-empty subset of {FUSION_MODES}, got {self.modes}.")
        if not self.stages or any(s not in HIVE_STAGES.components for s in self.stages):
            raise ValueError(f"--stages must be a non-empty subset of [1, 2, 3], got {self.stages}.")
        for name, allowed in (("device", ("auto", "cpu", "cuda")), ("dtype", tuple(DTYPES)),
                              ("count_device", ("auto", "meta", "device")), ("measure", ("auto", "yes", "no")),
                              ("generation", ("auto", "yes", "no"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was given but torch sees no CUDA device; use --device cpu or auto.")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {self.repeats} and {self.warmup}.")
        if self.generation_new_tokens < 2 or self.generation_repeats < 1:
            raise ValueError(
                "--generation_new_tokens must be >= 2 (the first token ends the prefill) and --generation_repeats "
                f">= 1, got {self.generation_new_tokens} and {self.generation_repeats}."
            )

    def shapes(self) -> EfficiencyShapes:
        return PRESETS[self.preset].replace(**{name: getattr(self, name) for name in SHAPE_FIELDS})


# ---------------------------------------------------------------------------------------------------------------------
def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil  # optional: more accurate than the page count (counts reclaimable cache)

        return psutil.virtual_memory().available
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _resident(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _build_meta(shapes: EfficiencyShapes, mode: str, dtype: torch.dtype, seed: int) -> tuple[Any, dict, str]:
    """A meta model of `mode` and its batch; falls back to eager attention if SDPA's path cannot run on meta."""
    model = build_model(shapes, mode, "meta", dtype, seed=seed)
    batch = make_batch(model.config, shapes.batch_size, shapes.text_length, "meta")
    model.set_training_stage(3)
    ok, reason = meta_kernels_available(model, batch)
    if ok:
        return model, batch, "sdpa"
    logger.warning(f"{mode}: a step does not run on the meta device with SDPA ({reason}); counting with eager "
                   "attention there (same FLOPs: the same two products forward, four backward).")
    model = build_model(shapes, mode, "meta", dtype, attn_implementation="eager", seed=seed)
    ok, reason2 = meta_kernels_available(model, batch)
    if not ok:
        raise RuntimeError(
            f"{mode}: a training step cannot run on the meta device even with eager attention: {reason2}"
        )
    return model, batch, f"eager (SDPA on meta failed: {reason})"


def _meta_pass(args: BenchmarkArguments, shapes: EfficiencyShapes, dtype: torch.dtype, progress: tqdm) -> dict:
    """FLOPs and estimated peak memory of every (mode, stage) and the floor, on the meta device."""
    out: dict[str, Any] = {"attention": {}, "stages": {s: {} for s in args.stages}, "resident_bytes": {}}
    modes = list(dict.fromkeys([*args.modes, "joint"]))  # the floor is measured on the joint model
    for mode in modes:
        model, batch, attention = _build_meta(shapes, mode, dtype, args.seed)
        out["attention"][mode] = attention
        out["resident_bytes"][mode] = _resident(model)
        for stage in args.stages:
            model.set_training_stage(stage)
            names = ([mode] if mode in args.modes else []) + ([FLOOR] if mode == "joint" else [])
            for name in names:
                count = count_floor_step if name == FLOOR else count_training_step
                step = floor_step if name == FLOOR else training_step
                progress.set_postfix_str(f"meta: {name}, stage {stage}")
                out["stages"][stage][name] = {
                    "flops": count(model, batch).to_dict(),
                    "weight_bytes": out["resident_bytes"][mode],
                    "estimated_peak_bytes": peak_memory_bytes(lambda s=step, m=model, b=batch: s(m, b), model),
                }
                progress.update()
        del model
        gc.collect()
    return out


def _then_free(model: torch.nn.Module, _: Any) -> None:
    model.zero_grad(set_to_none=True)


def _device_pass(args: BenchmarkArguments, shapes: EfficiencyShapes, device: torch.device, dtype: torch.dtype,
                 count_here: bool, progress: tqdm) -> dict:
    """Per stage: FLOPs counted on the device (if asked), interleaved step times, and peak memory per mode."""
    models = {mode: build_model(shapes, mode, device, dtype, seed=args.seed) for mode in args.modes}
    if "joint" not in models:
        models["joint"] = build_model(shapes, "joint", device, dtype, seed=args.seed)
    batch = make_batch(models["joint"].config, shapes.batch_size, shapes.text_length, device, seed=args.seed)
    names = [*args.modes, FLOOR]
    out: dict[int, dict[str, Any]] = {}
    for stage in args.stages:
        for model in models.values():
            model.set_training_stage(stage)
        # Each step drops its gradients when done, so that only one model's gradients are ever held.
        steps = {name: (lambda m=models[name]: _then_free(m, training_step(m, batch))) for name in args.modes}
        steps[FLOOR] = lambda m=models["joint"]: _then_free(m, floor_step(m, batch))
        out[stage] = {name: {} for name in names}
        if count_here:
            progress.set_postfix_str(f"{device.type}: counting, stage {stage}")
            for name in names:
                count = count_floor_step if name == FLOOR else count_training_step
                out[stage][name]["flops"] = count(models["joint" if name == FLOOR else name], batch).to_dict()
        progress.set_postfix_str(f"{device.type}: timing, stage {stage}")
        times = interleaved_step_times(steps, device, args.warmup, args.repeats)
        for name in names:
            model = models["joint" if name == FLOOR else name]
            out[stage][name]["step_seconds"] = times[name]
            out[stage][name]["median_step_seconds"] = statistics.median(times[name])
            out[stage][name]["min_step_seconds"] = min(times[name])
            progress.set_postfix_str(f"{device.type}: memory of {name}, stage {stage}")
            out[stage][name]["peak_bytes"] = peak_memory_bytes(steps[name], model)
            out[stage][name]["weight_bytes"] = _resident(model)
            model.zero_grad(set_to_none=True)
            progress.update()
    del models
    gc.collect()
    return out


def _generation_pass(args: BenchmarkArguments, shapes: EfficiencyShapes, device: torch.device, dtype: torch.dtype,
                     progress: tqdm) -> dict:
    """ms per new token (after the first) for several image-token counts: joint/gated reuse the image keys/values
    cached at prefill; concat keeps the image tokens in its key/value cache; text-only is the LLM alone."""
    sizes = args.generation_image_sizes or sorted({
        max(shapes.patch_size, round(shapes.image_size * f / shapes.patch_size) * shapes.patch_size)
        for f in (0.25, 0.5, 0.75, 1.0)
    })
    modes = [m for m in args.modes] + ["text_only"]
    result: dict[str, Any] = {"image_size": sizes, "image_tokens": [], "new_tokens": args.generation_new_tokens,
                              "prompt_length": args.generation_prompt_length}
    result.update({mode: [] for mode in modes})
    for size in sizes:
        sized = shapes.replace(image_size=size, batch_size=1)
        result["image_tokens"].append(sized.num_image_tokens)
        for mode in modes:
            progress.set_postfix_str(f"generation: {mode}, {sized.num_image_tokens} image tokens")
            model = build_model(sized, "joint" if mode == "text_only" else mode, device, dtype, seed=args.seed).eval()
            batch = make_batch(model.config, 1, args.generation_prompt_length, device, seed=args.seed)
            inputs = {"input_ids": batch["input_ids"]}
            if mode != "text_only":
                inputs["pixel_values"] = batch["pixel_values"].to(dtype)
            result[mode].append(
                generation_ms_per_token(model, inputs, args.generation_new_tokens, args.generation_repeats)
            )
            del model
            progress.update()
    return result


# ---------------------------------------------------------------------------------------------------------------------
def _fmt_flops(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= 0.9995 * scale:  # what would print as "1e+03" of the unit below
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"


def _fmt_bytes(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= 999.5 / 1024 * scale:  # 1000 MiB and up reads as 0.98 GiB, not "1e+03 MiB"
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a is not None and b else "-"


def _stage_table(stage: int, rows: dict[str, dict], measured: bool, memory_key: str) -> str:
    trains = HIVE_STAGES.trains(stage)
    head = ["mode", "encoder FLOPs", "LLM-side FLOPs", "total FLOPs", "LLM-side / concat", "total / concat"]
    if measured:
        head += ["step ms (median)", "step ms (min)", "time / concat", "concat/mode predicted by FLOPs",
                 "time / floor",
                 "peak memory", "memory / concat"]
    else:
        head += ["est. peak memory (meta)", "memory / concat"]
    head += ["above the weights", "above / concat"]
    lines = []
    concat = rows.get("concat")
    floor = rows.get(FLOOR)
    for name, row in rows.items():
        flops = row["flops"]
        cells = [name, _fmt_flops(flops["encoder"]), _fmt_flops(flops["llm_side"]), _fmt_flops(flops["total"]),
                 _ratio(flops["llm_side"], concat and concat["flops"]["llm_side"]),
                 _ratio(flops["total"], concat and concat["flops"]["total"])]
        if measured:
            t = row.get("median_step_seconds")
            fastest = row.get("min_step_seconds")
            cells += [f"{1e3 * t:.1f}" if t is not None else "-", f"{1e3 * fastest:.1f}" if fastest else "-",
                      _ratio(t, concat and concat.get("median_step_seconds")),
                      _ratio(concat and concat["flops"]["total"], flops["total"]),
                      _ratio(t, floor and floor.get("median_step_seconds"))]
        mem = row.get(memory_key)
        cells += [_fmt_bytes(mem) if mem else "-", _ratio(mem, concat and concat.get(memory_key))]
        above = mem - row["weight_bytes"] if mem else None  # activations, gradients, temporaries
        concat_above = concat[memory_key] - concat["weight_bytes"] if concat and concat.get(memory_key) else None
        cells += [_fmt_bytes(above) if above else "-", _ratio(above, concat_above)]
        lines.append(cells)
    return f"**Stage {stage}** (trains: {trains})\n\n" + markdown_table(head, lines)


def _targets(results: dict, args: BenchmarkArguments) -> list[dict]:
    targets = []
    stages = results["stages"]
    for stage, rows in stages.items():
        if "joint" in rows and "concat" in rows:
            ratio = rows["joint"]["flops"]["llm_side"] / rows["concat"]["flops"]["llm_side"]
            targets.append({
                "target": f"stage {stage}: joint LLM-side FLOPs <= {TARGET_LLM_RATIO}x concat (at paper shapes)",
                "value": round(ratio, 4), "met": ratio <= TARGET_LLM_RATIO,
                "applies": args.preset == "paper" and results["shapes"] == dataclasses.asdict(PRESETS["paper"]),
            })
        joint_t = rows.get("joint", {}).get("median_step_seconds")
        concat_t = rows.get("concat", {}).get("median_step_seconds")
        floor_t = rows.get(FLOOR, {}).get("median_step_seconds")
        if joint_t and concat_t:
            predicted = rows["concat"]["flops"]["total"] / rows["joint"]["flops"]["total"]
            measured = concat_t / joint_t
            targets.append({
                "target": f"stage {stage}: measured concat/joint step time within {TARGET_TIME_VS_PREDICTED:.0%} of "
                          "the FLOP ratio",
                "value": {"measured": round(measured, 3), "predicted": round(predicted, 3),
                          "measured/predicted": round(measured / predicted, 3)},
                "met": abs(measured / predicted - 1) <= TARGET_TIME_VS_PREDICTED, "applies": True,
            })
        if joint_t and floor_t:
            targets.append({
                "target": f"stage {stage}: joint step time <= {TARGET_JOINT_VS_FLOOR}x the floor",
                "value": round(joint_t / floor_t, 3), "met": joint_t / floor_t <= TARGET_JOINT_VS_FLOOR,
                "applies": True,
            })
    generation = results.get("generation")
    if generation:
        for mode in ("joint", "gated"):
            if mode in generation and len(generation["image_tokens"]) > 1:
                per_token = [g["ms_per_token"] for g in generation[mode]]
                growth = per_token[-1] / per_token[0] if per_token[0] else float("inf")
                targets.append({
                    "target": f"{mode}: ms per generated token flat in the number of image tokens (largest/smallest "
                              f"<= {TARGET_GENERATION_GROWTH})",
                    "value": round(growth, 3), "met": growth <= TARGET_GENERATION_GROWTH, "applies": True,
                })
    return targets


def _report(results: dict, args: BenchmarkArguments) -> str:
    shapes = results["shapes"]
    measured = results["measured"]
    lines = [
        "**HIVE training-step efficiency**",
        "",
        f"Shapes ({args.preset}{' + overrides' if results['overrides'] else ''}): batch {shapes['batch_size']}, "
        f"{shapes['text_length']} text tokens, {shapes['image_size']}px / {shapes['patch_size']} = "
        f"{results['num_image_tokens']} image tokens; encoder {shapes['vision_layers']} x "
        f"{shapes['vision_hidden_size']} "
        f"(MLP {shapes['vision_intermediate_size']}); LLM {shapes['text_layers']} x {shapes['text_hidden_size']} "
        f"(MLP {shapes['text_intermediate_size']}, {shapes['text_heads']}/{shapes['text_kv_heads']} heads, vocab "
        f"{shapes['vocab_size']}); {shapes['num_taps']} taps {results['wiring']['vision_feature_layers']} -> LLM "
        "layers "
        f"{results['wiring']['cross_attention_layers']}.",
        f"FLOPs counted on: {results['count_device']}. Attention on meta: "
        + ", ".join(f"{m}: {a}" for m, a in results["meta_attention"].items()) + ".",
        f"Device: {results['device']} ({results['dtype']}, {results['threads']} threads)"
        + (f"; times are medians of {args.repeats} steps after {args.warmup} warm-up, modes taken in turn; the "
           "machine may have been shared with other work." if measured else "; not timed (shapes do not fit, or "
                                                                            "--measure no)."),
        f"The shapes {'fit' if results['fits'] else 'do not fit'} this machine: {results['fit_note']}.",
        "Floor: the text-only LLM step plus the encoder pass (stage 3: its backward too): what no fusion can beat.",
        "",
    ]
    memory_key = "peak_bytes" if measured else "estimated_peak_bytes"
    for stage, rows in results["stages"].items():
        lines += [_stage_table(int(stage), rows, measured, memory_key), ""]
    analytic = results["analytic_forward"]
    if "joint" in analytic and "concat" in analytic:
        joint, concat = analytic["joint"], analytic["concat"]
        image_share = results["num_image_tokens"] / (results["num_image_tokens"] + shapes["text_length"])
        image_head = image_share * concat["lm_head"] / concat["llm_side"]
        lines.append(
            f"Forward only, by formula: joint/concat LLM side {joint['llm_side'] / concat['llm_side']:.3f}, with the "
            f"encoder forward {_ratio(joint['llm_side'] + joint['encoder'], concat['llm_side'] + concat['encoder'])}; "
            f"concat's LM head over image positions is {image_head:.1%} of its LLM side (logits no loss uses, as in "
            "LLaVA)."
        )
        lines.append("")
    difference = results.get("meta_vs_device_max_relative_difference")
    if difference is not None:
        lines += [f"Meta-device vs {results['device']} FLOP counts: largest relative difference {difference:.2e} "
                  "(non-zero only where a fused attention backward computes a gradient that autograd would skip).", ""]
    generation = results.get("generation")
    if generation:
        modes = [m for m in generation if isinstance(generation[m], list) and m not in ("image_size", "image_tokens")]
        rows = [[str(n), *(f"{generation[m][i]['ms_per_token']:.2f} (prefill {generation[m][i]['prefill_ms']:.0f})"
                           for m in modes)] for i, n in enumerate(generation["image_tokens"])]
        lines += [f"**Generation**: ms per new token after the first ({generation['new_tokens']} tokens, prompt "
                  f"{generation['prompt_length']}, batch 1, greedy, cache on)", "",
                  markdown_table(["image tokens", *modes], rows), ""]
    rows = [[t["target"], str(t["value"]),
             ("yes" if t["met"] else "**no**") if t["applies"] else "n/a (not these shapes)"] for t in results["targets"]]
    lines += ["**Targets**", "", markdown_table(["target", "value", "met"], rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = HiveArgumentParser(BenchmarkArguments, description=__doc__.split("\n\n")[0])
    with user_errors(parser.prog, parser.flag_names()):
        (args,) = parser.parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shapes()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = DTYPES[args.dtype]
    max_tflops = args.max_step_tflops if args.max_step_tflops is not None else (1.0 if device.type == "cpu" else
                                                                                   float("inf"))
    want_measure = args.measure != "no"
    want_generation = args.generation == "yes" or (args.generation == "auto" and want_measure)
    progress = tqdm(total=len(args.stages) * (len(args.modes) + 1), desc="bench_efficiency (meta)", unit="step")

    meta = _meta_pass(args, shapes, dtype, progress)
    progress.close()
    costliest = max(row["flops"]["total"] for rows in meta["stages"].values() for row in rows.values())
    step_extra = max(row["estimated_peak_bytes"] - meta["resident_bytes"]["joint" if name == FLOOR else name]
                     for rows in meta["stages"].values() for name, row in rows.items())
    needed = sum(meta["resident_bytes"].values()) + step_extra
    free = _free_bytes(device)
    fits = costliest <= max_tflops * 1e12 and needed <= args.memory_fraction * free
    fit_note = (f"costliest step {_fmt_flops(costliest)}FLOPs (limit {max_tflops} T), memory needed ~"
                f"{_fmt_bytes(needed)} of {_fmt_bytes(free)} free (limit {args.memory_fraction:.0%})")
    measured = args.measure == "yes" or (args.measure == "auto" and fits)
    count_here = args.count_device == "device" or (args.count_device == "auto" and fits)

    results: dict[str, Any] = {
        "preset": args.preset,
        "overrides": {n: getattr(args, n) for n in SHAPE_FIELDS if getattr(args, n) is not None},
        "shapes": dataclasses.asdict(shapes),
        "num_image_tokens": shapes.num_image_tokens,
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "fits": fits, "fit_note": fit_note, "measured": measured,
        "count_device": device.type if count_here else "meta",
        "meta_attention": meta["attention"],
        "analytic_forward": {},
        "stages": {},
    }
    joint_config = shapes.hive_config("joint")
    results["wiring"] = {"vision_feature_layers": joint_config.vision_feature_layers,
                         "cross_attention_layers": joint_config.cross_attention_layers}
    for mode in args.modes:
        results["analytic_forward"][mode] = analytic_forward_flops(
            shapes.hive_config(mode), shapes.batch_size, shapes.text_length
        )

    device_results = {}
    if measured or count_here:
        tasks = len(args.stages) * (len(args.modes) + 1)
        progress = tqdm(total=tasks, desc=f"bench_efficiency ({device.type})", unit="mode")
        device_results = _device_pass(args, shapes, device, dtype, count_here, progress)
        progress.close()
    differences = []
    for stage in args.stages:
        rows = {}
        for name in [*args.modes, FLOOR]:
            row = {"flops_meta": meta["stages"][stage][name]["flops"],
                   "estimated_peak_bytes": meta["stages"][stage][name]["estimated_peak_bytes"],
                   "weight_bytes": meta["stages"][stage][name]["weight_bytes"]}
            row.update(device_results.get(stage, {}).get(name, {}))
            if "flops" in row:
                differences.append(abs(row["flops"]["total"] - row["flops_meta"]["total"]) / row["flops"]["total"])
            else:
                row["flops"] = row["flops_meta"]
            rows[name] = row
        results["stages"][stage] = rows
    # Equal but for stage 1 of joint: the fused CPU attention backward computes the first fused layer's dQ, which
    # nothing needs there (the LLM below it is frozen) and which autograd's math path on meta skips.
    results["meta_vs_device_max_relative_difference"] = max(differences) if differences else None

    if want_generation and measured:
        sizes = args.generation_image_sizes or [0] * 4
        progress = tqdm(total=len(sizes) * (len(args.modes) + 1), desc="bench_efficiency (generation)", unit="run")
        results["generation"] = _generation_pass(args, shapes, device, dtype, progress)
        progress.close()
    results["targets"] = _targets(results, args)
    print(_report(results, args))
    if args.output:  # <name>.json with the numbers and the environment, <name>.md with this report (the README's)
        path = write_results(args.output, _report(results, args), results, seeds=[args.seed], threads=args.threads)
        print(f"\nresults written to {path} and {path.with_suffix('.json')}")
    return results


if __name__ == "__main__":
    main()
