"""Run under `torchrun`: load each tiny HIVE checkpoint in `argv[1]` with tensor parallelism over the processes
(CPU, gloo) and write, per checkpoint, how far its logits and greedy tokens are from the single-process reference
saved next to it (`<name>.pt`), to `rank<r>.json` there."""

import inspect
import json
import os
import sys
from pathlib import Path

import torch
from transformers.distributed import DistributedConfig

from hive_hf import HiveForConditionalGeneration

# `DistributedConfig` holds the plan from 5.13 (5.15 takes it nowhere else); earlier releases take `tp_plan=` itself
if "tp_plan" in inspect.signature(DistributedConfig).parameters:
    TENSOR_PARALLEL = {"distributed_config": DistributedConfig(tp_size=int(os.environ["WORLD_SIZE"]), tp_plan="auto")}
else:
    TENSOR_PARALLEL = {"tp_plan": "auto"}


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


results = {}
for folder in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    model = HiveForConditionalGeneration.from_pretrained(folder, **TENSOR_PARALLEL).eval()
    inputs, logits, tokens, shapes = torch.load(folder.with_suffix(".pt"))
    # what this process holds a shard of (a DTensor's own shape is the full one; some releases keep plain shards)
    sharded = [n for n, p in model.named_parameters()
               if tuple((p.to_local() if hasattr(p, "to_local") else p).shape) != tuple(shapes[n])]
    with torch.no_grad():
        ours = full(model(**inputs).logits)
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    results[folder.name] = {
        "logits": (ours - logits).abs().max().item(), "tokens_equal": torch.equal(generated, tokens),
        "sharded_image_kv": sorted({n.split(".")[-2] for n in sharded if ".image_" in n}),
        "sharded": len(sharded), "world": torch.distributed.get_world_size(),
    }
Path(sys.argv[1], f"rank{os.environ['RANK']}.json").write_text(json.dumps(results))
# Leave together, then skip the interpreter's teardown: now and then (a few runs in a hundred, on a busy machine) a
# process aborted in C++ destructors after all of the above was done ("terminate called without an active
# exception"), which made torchrun report a failure of a run whose results are already written.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
