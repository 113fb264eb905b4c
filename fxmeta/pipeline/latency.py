"""Measured inference latency: warm-up, then the median of timed repeats at a fixed thread count.

FLOPs say how much arithmetic a model does; latency says whether a pruned model is
actually faster on a real device (small layers, odd channel counts and Python overhead
can eat a FLOPs reduction). Both are reported side by side.
"""
from __future__ import annotations

import copy
import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..tracing import as_tuple, eval_mode


@dataclass
class Latency:
    """Median and spread of the timed forward passes, and the conditions they ran under."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    batch: int
    threads: int
    device: str

    def describe(self) -> str:
        return f"{self.device}, batch {self.batch}, {self.threads} thread{'s' * (self.threads != 1)}"


def _batched(x: Any, batch: int | None, device: torch.device) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    if batch is not None and x.dim() > 0 and x.shape[0] != batch:
        reps = -(-batch // x.shape[0])
        x = x.repeat(reps, *([1] * (x.dim() - 1)))[:batch]
    return x.to(device)


def _params_device(model: nn.Module) -> torch.device | None:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


def set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, tolerating torch.export modules, whose mode is fixed at export.

    This sets every submodule to ``training``; to run a model and give it back as it was,
    use ``fxmeta.tracing.eval_mode`` instead.
    """
    try:
        model.train(training)
    except NotImplementedError:
        pass  # torch.export modules fix train/eval behaviour when exported


def measure_latency(
    model: nn.Module,
    example_input: Any,
    *,
    device: str | torch.device = "cpu",
    threads: int = 1,
    batch: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    max_seconds: float = 10.0,
) -> Latency:
    """Time ``model``'s forward pass in eval mode under ``torch.inference_mode``.

    ``threads`` fixes torch's intra-op thread count while timing (restored afterwards),
    so numbers are comparable across runs; ``batch`` repeats the example input along
    dim 0. Repeats stop early after ``max_seconds`` (at least 5 are always timed). The
    model is not changed: it is copied when it lives on another device.
    """
    return compare_latency([model], example_input, device=device, threads=threads, batch=batch, warmup=warmup,
                           repeats=repeats, max_seconds=max_seconds)[0]


def compare_latency(
    models: Sequence[nn.Module],
    example_input: Any,
    *,
    device: str | torch.device = "cpu",
    threads: int = 1,
    batch: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    max_seconds: float = 10.0,
) -> list[Latency]:
    """``measure_latency`` for several models, timed in alternation (one call of each per
    round), so that a machine whose load changes while timing slows all of them alike."""
    if threads < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need threads >= 1, warmup >= 0, repeats >= 1; got {threads}, {warmup}, {repeats}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    models = [m if _params_device(m) in (None, device) else copy.deepcopy(m).to(device) for m in models]
    args = tuple(_batched(a, batch, device) for a in as_tuple(example_input))
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode(), eval_mode(*models):
            for m in models:
                for _ in range(warmup):
                    m(*args)
            sync()
            budget_end = time.perf_counter() + max_seconds
            while len(times[0]) < repeats and (len(times[0]) < 5 or time.perf_counter() < budget_end):
                for m, record in zip(models, times):
                    t0 = time.perf_counter()
                    m(*args)
                    sync()
                    record.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(old_threads)
    return [_summary(t, warmup, int(first.shape[0]) if first is not None else 1, threads, str(device)) for t in times]


def _summary(times: list[float], warmup: int, batch: int, threads: int, device: str) -> Latency:
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return Latency(median_ms=statistics.median(times), p10_ms=deciles[0], p90_ms=deciles[-1], repeats=len(times),
                   warmup=warmup, batch=batch, threads=threads, device=device)
