"""Settings of the quality benchmark: data, methods, grid, and the plumbing every stage shares."""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent
IMAGE_SIZE = 16
DATA_SPEC = "benchmarks.quality:digits16"  # zoo building and meta-training load the data by this name
METHODS = ("ours", "fxmeta-l2", "DepGraph+SL", "TP-magnitude", "random")
LABELS = {
    "ours": "ours (metanet + l2)",
    "fxmeta-l2": "fxmeta l2",
    "DepGraph+SL": "DepGraph+SL (Torch-Pruning)",
    "TP-magnitude": "TP magnitude",
    "random": "random",
}
TP_STEPS = 400  # Torch-Pruning's --iterative-steps default


def digits16(seed: int = 0) -> Any:
    """The digits splits at 16x16 (a data function, so zoo / meta-training can load it by name)."""
    from fxmeta.training.data import load_data

    return load_data("digits", seed=seed, image_size=IMAGE_SIZE)


# ----------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers; the cache keys hash the parts each stage uses."""

    archs: tuple[str, ...] = ("resnet20", "resnet56")
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[float, ...] = (2.0, 3.0, 4.0, 8.0, 12.0, 16.0)  # digits is easy: they separate high up
    base_epochs: int = 20
    # base and zoo training lr per family: ResNet56 at 0.1 diverged in its first epochs for one seed (val acc
    # 54% after 20 epochs); 0.05 trains every seed tried to ~98% val
    base_lrs: tuple[tuple[str, float], ...] = (("resnet20", 0.1), ("resnet56", 0.05))
    batch_size: int = 128
    finetune_epochs: int = 10
    finetune_lrs: tuple[float, ...] = (0.01, 0.05, 0.1)  # grid, chosen on val (fxmeta-l2, first seed)
    select_targets: tuple[float, ...] = (4.0, 8.0)  # targets the grids are scored at
    sl_epochs: int = 10
    sl_lr: float = 0.01
    sl_regs: tuple[float, ...] = (5e-4, 5e-3, 5e-2)  # grid, chosen on val (first seed)
    zoo_seed: int = 1000  # zoo members use seeds zoo_seed, zoo_seed+1, ...: never a base seed
    zoo_count: int = 4
    zoo_val: int = 1
    zoo_epochs: int = 20
    meta_epochs: int = 20
    meta_width: int = 32
    meta_depth: int = 6
    meta_ratio: float = 0.01
    meta_speedup: float = 4.0  # FLOPs target of meta_train's checkpoint selection
    meta_eval_finetune: int = 3  # finetune epochs in that selection (1 left every checkpoint at chance level)
    # grid, chosen on the held-out zoo member: 10 is the reference's; it was set against a cross-entropy summed
    # over CIFAR's 390 batches, meta_train sums over the data's batches (8 here), so 10 * 8 / 390 keeps the
    # reference's balance between the two terms
    meta_regs: tuple[float, ...] = (10.0, 0.2)
    latency_batch: int = 32
    latency_threads: int = 1  # one thread: less disturbed by the other processes on the 2 cores

    def base_lr(self, arch: str) -> float:
        return dict(self.base_lrs).get(arch, 0.1)

    def check(self) -> None:
        if set(self.select_targets) - set(self.targets):
            raise SystemExit("every select target must also be a benchmark target")
        if self.zoo_seed <= max(self.seeds):
            raise SystemExit("zoo seeds must differ from the base networks' seeds")


FULL = Settings()
QUICK = Settings(archs=("resnet20",), seeds=(0,), targets=(4.0, 8.0), base_epochs=4, finetune_epochs=2,
                 finetune_lrs=(0.01, 0.05), select_targets=(8.0,), sl_epochs=2, sl_regs=(5e-4, 5e-2),
                 zoo_count=2, zoo_val=1, zoo_epochs=4, meta_epochs=1, meta_eval_finetune=1, meta_regs=(10.0,),
                 latency_batch=8)


def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _tag(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------------- plumbing


class Tee:
    """Copy of everything printed, into the run's log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


@dataclass
class Context:
    """Shared state of one run: settings, data, caches and what was built on the way."""

    s: Settings
    cache: Path
    splits: Any
    loaders: Any
    example: torch.Tensor
    bases: dict[tuple[str, int], dict] = field(default_factory=dict)
    metanets: dict[str, dict] = field(default_factory=dict)
    ours_inputs: dict[tuple[str, int], tuple[Any, float, dict]] = field(default_factory=dict)
    latencies: dict[tuple[str, int], float] = field(default_factory=dict)
    chosen: dict[str, dict] = field(default_factory=dict)
    tp_memo: dict[tuple, dict[float, dict]] = field(default_factory=dict)  # one base network's TP copies
    reused: list[str] = field(default_factory=list)  # stages loaded from the cache instead of computed

    def base_settings(self, arch: str) -> dict:
        s = self.s
        return {"epochs": s.base_epochs, "lr": s.base_lr(arch), "batch_size": s.batch_size, "image_size": IMAGE_SIZE}


def _eval(model: torch.nn.Module, ctx: Context) -> tuple[float, float]:
    from fxmeta.training.loop import evaluate

    return evaluate(model, ctx.loaders.val)["acc"], evaluate(model, ctx.loaders.test)["acc"]


def _latency_ms(model: torch.nn.Module, ctx: Context, repeats: int = 30) -> float:
    """The 10th percentile of timed runs: on a shared machine the fast runs are the ones the
    other processes did not interrupt, so they show the model's own cost best."""
    from fxmeta.pipeline.latency import measure_latency

    lat = measure_latency(model, ctx.example, threads=ctx.s.latency_threads, batch=ctx.s.latency_batch,
                          warmup=3, repeats=repeats, max_seconds=2.0)
    return lat.p10_ms


def _paired_latency(base: torch.nn.Module, pruned: torch.nn.Module, ctx: Context) -> tuple[float, float]:
    """Median latencies of base and pruned, measured in alternation: the machine is shared, and
    alternating keeps a load change from landing on one side only."""
    b, p = [], []
    for _ in range(3):
        b.append(_latency_ms(base, ctx, repeats=20))
        p.append(_latency_ms(pruned, ctx, repeats=20))
    return statistics.median(b), statistics.median(p)


