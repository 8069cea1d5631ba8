"""Wall-clock time and peak memory of training steps and of generation, on CPU or CUDA.

Peak memory is the peak of tensor bytes alive during a step, parameters included: `torch.cuda.max_memory_allocated`
on CUDA. On CPU torch keeps no allocator statistics (and `tracemalloc` does not see torch's allocations, nor is the
process RSS a clean per-step number, since freed memory is not always returned to the OS), so
`TensorMemoryTracker` follows every tensor storage an op creates until it is freed; it works on the meta device too,
where it estimates the memory of shapes that do not fit (with the caveat that SDPA's meta fallback materialises the
attention weights that a fused kernel never stores).
"""

from __future__ import annotations

import gc
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging

logger = logging.get_logger(__name__)


class TensorMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created by ops inside the context (a storage counts once, until it
    is freed; an op's output that shares an input's storage, i.e. a view or an in-place result, allocates nothing, so
    views of tensors made before the context, such as a weight's transpose, do not count).

    Slows every op down: measure memory in a step of its own, not in a timed one.
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._alive: dict[int, weakref.finalize] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self.live_bytes -= nbytes
        self._alive.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata  # the C++ storage: the same for every view of it
            if key in self._alive or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._alive[key] = weakref.finalize(storage, self._release, key, nbytes)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for finalizer in list(self._alive.values()):  # storages still alive (e.g. gradients) stay counted in the peak
            finalizer.detach()
        self._alive.clear()


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, buffers and existing gradients (tied weights once)."""
    seen: dict[int, int] = {}
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def peak_memory_bytes(step: Callable[[], Any], model: torch.nn.Module) -> int:
    """Peak bytes of tensors alive while `step()` runs: the model's parameters and buffers plus everything the step
    allocates (activations, gradients, temporaries). Run the step once before, so that lazy state is in place."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        gc.collect()  # tensors of earlier steps still held by reference cycles would count in the peak
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    model.zero_grad(set_to_none=True)
    before = resident_bytes(model)
    with TensorMemoryTracker() as tracker:
        step()
    return before + tracker.peak_bytes


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_step_times(
    steps: dict[str, Callable[[], Any]], device: torch.device | str, warmup: int = 1, repeats: int = 3
) -> dict[str, list[float]]:
    """Wall-clock seconds of `repeats` runs of each step after `warmup` untimed ones (synchronised on CUDA), the
    steps taken in turn (a, b, c, a, b, c, ...), so that a machine shared with other work slows them alike, rather
    than whichever happened to run during a busy minute."""
    device = torch.device(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


class _TokenClock(BaseStreamer):
    """A streamer that only notes when each token arrives (the prompt first, then every generated token)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        _synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generation_ms_per_token(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    new_tokens: int = 16,
    repeats: int = 3,
) -> dict[str, float]:
    """Milliseconds per generated token after the first, with the cache (image keys/values computed at prefill).

    Greedy `generate` is forced to make `new_tokens` tokens (batch 1) while a streamer notes when each arrives: the
    prefill (encoder, projectors, image keys/values, prompt) ends with the first token, and the time from the first
    to the last token over `new_tokens - 1` is the per-token decode time. Medians over `repeats`, after one warm-up.
    Returns `{"prefill_ms", "ms_per_token"}`.
    """
    if new_tokens < 2:
        raise ValueError(f"`new_tokens` must be at least 2 (the first token ends the prefill), got {new_tokens}.")
    device = next(model.parameters()).device
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  pad_token_id=model.config.text_config.pad_token_id or 0)
    prefill, per_token = [], []
    for i in range(1 + repeats):
        clock = _TokenClock(device)
        with torch.no_grad():
            model.generate(**inputs, streamer=clock, **kwargs)
        if i > 0:  # the first run warms up
            prefill.append(clock.times[1] - clock.times[0])
            per_token.append((clock.times[-1] - clock.times[1]) / (len(clock.times) - 2))
    return {"prefill_ms": 1e3 * statistics.median(prefill), "ms_per_token": 1e3 * statistics.median(per_token)}


__all__ = [
    "TensorMemoryTracker",
    "generation_ms_per_token",
    "interleaved_step_times",
    "peak_memory_bytes",
    "resident_bytes",
]
