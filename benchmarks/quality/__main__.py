"""Pruning quality: fxmeta with and without the metanetwork against Torch-Pruning, side by side.

ResNet20 / ResNet56 (``fxmeta.models``, 1 input channel) on scikit-learn's digits,
bilinearly upsampled to 16x16, one fixed train / val / test split (``load_data`` seed 0).
For every base network (one per seed) and FLOPs target, five methods prune the same
network and get the same finetune (``fxmeta.training.loop``: epochs, schedule, lr, data order;
best epoch on the validation split):

1. ``ours``: lower -> metanetwork -> raise -> fxmeta prune (l2) -> finetune. The
   metanetwork is meta-trained (``fxmeta.metatrain.loop``) on a zoo (``fxmeta.metatrain.zoo``) of the
   same family built from other seeds than the base networks.
2. ``fxmeta-l2``: fxmeta prune (l2 group importance), no metanetwork.
3. ``DepGraph+SL``: Torch-Pruning GroupNormPruner with sparsity learning, as its CIFAR
   recipe (reproduce/main.py, ``--method group_sl --global-pruning --reg 5e-4``): SGD
   momentum 0.9 without weight decay, ``pruner.regularize`` after every backward, lr
   x0.1 at 60% and 80% of the epochs, best validation epoch kept; then
   GroupMagnitudeImportance(p=2, normalizer="max"), 400 iterative steps stepped until
   the FLOPs target is met (``progressive_pruning``).
4. ``TP-magnitude``: Torch-Pruning MagnitudePruner with GroupMagnitudeImportance(p=2),
   global, same stepping, no sparsity learning.
5. ``random``: fxmeta prune with random importance.

FLOPs are counted with ``fxmeta.pruning.flops.count_flops`` for every method (also inside the
Torch-Pruning stepping loop). Hyper-parameters are chosen on the validation split of the
first seed, never on test: the finetune lr (with fxmeta-l2), the SL regularisation
strength, and the metanetwork's checkpoint (by ``meta_train`` on held-out zoo members).

    python -m benchmarks.quality            # full run, ~1 h on 2 cores; resumable
    python -m benchmarks.quality --quick    # spot check, < 10 min

Caches (base networks, zoos, metanetworks, SL models, finished cells) live under
``~/.cache/fxmeta-bench/quality`` (``--cache``); an interrupted run continues where it
stopped. Results: ``benchmarks/results/quality.{md,json,png}`` and the run's log
``quality_log.txt`` (the quick mode writes under the cache folder instead).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .baselines import build_bases, build_metanet
from .cells import _cell_path, choose_finetune_lr, choose_sl_reg, run_cell
from .report import (
    _cpu_minutes,
    _versions,
    aggregate,
    results_section,
    write_markdown,
    write_plot,
)
from .settings import (
    FULL,
    HERE,
    METHODS,
    QUICK,
    Context,
    Tee,
    _write_json,
    digits16,
    say,
)

# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small spot check (< 10 min): resnet20, 1 seed, 4x/8x")
    parser.add_argument("--targets", help="comma-separated FLOPs targets (default: 2,3,4,8; quick: 4,8)")
    parser.add_argument("--archs", help="comma-separated architectures (default: resnet20,resnet56)")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/quality"))
    parser.add_argument("--out", help="results folder (default: benchmarks/results; quick: CACHE/quick-results)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.targets:
        s = replace(s, targets=tuple(float(t) for t in args.targets.split(",")))
    if args.archs:
        s = replace(s, archs=tuple(args.archs.split(",")))
    s.check()
    cache = Path(args.cache)
    out = Path(args.out) if args.out else (cache / "quick-results" if args.quick else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "quality_log.txt", "a")  # an interrupted run's log is kept; the resumed run appends
    sys.stdout, sys.stderr = Tee(sys.__stdout__, log), Tee(sys.__stderr__, log)
    command = "python -m benchmarks.quality" + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    say(f"{command}: settings {asdict(s)}; threads {torch.get_num_threads()}; load {load_start:.2f}")

    from fxmeta.training.data import make_loaders

    splits = digits16(0)
    ctx = Context(s, cache, splits, make_loaders(splits, s.batch_size, seed=0), torch.zeros(1, *splits.input_shape))
    cells: list[dict] = []
    for arch in s.archs:
        build_bases(ctx, arch)
        build_metanet(ctx, arch)
        lr = choose_finetune_lr(ctx, arch)
        reg = choose_sl_reg(ctx, arch, lr)
        for seed in s.seeds:
            for method in METHODS:
                for t in s.targets:
                    path = _cell_path(ctx, arch, seed, method, t, lr, reg if method == "DepGraph+SL" else None)
                    if path.is_file():
                        ctx.reused.append(f"{arch} s{seed} {method} {t:g}x")
                    cells.append(run_cell(ctx, arch, seed, method, t, lr, reg if method == "DepGraph+SL" else None))
        ctx.ours_inputs.clear()
    rows = aggregate(cells, ctx)
    meta = {"command": command, "settings": asdict(s), "threads": torch.get_num_threads(), "versions": _versions(),
            "wall_minutes": (time.perf_counter() - started) / 60, "cpu_minutes": _cpu_minutes(),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "reused": ctx.reused}
    chosen = {a: {k: {**v, "val_scores": {str(x): y for x, y in v["val_scores"].items()}} for k, v in c.items()}
              for a, c in ctx.chosen.items()}
    metanets = {a: {k: v for k, v in m.items() if k != "metanet"} for a, m in ctx.metanets.items()}
    bases = {f"{a} s{sd}": {k: v for k, v in b.items() if k != "model"} | {"latency_ms": ctx.latencies[(a, sd)]}
             for (a, sd), b in ctx.bases.items()}
    _write_json(out / "quality.json", {**meta, "chosen": chosen, "metanets": metanets, "bases": bases,
                                       "rows": rows, "cells": cells})
    write_markdown(out / "quality.md", rows, ctx, meta)
    base_acc = {a: statistics.fmean(b["test_acc"] for (arch, _), b in ctx.bases.items() if arch == a)
                for a in s.archs}
    write_plot(out / "quality.png", rows, s, base_acc)
    say(f"done in {meta['wall_minutes']:.1f} min: {out / 'quality.md'}")
    print("\n".join(results_section(rows, s)))


if __name__ == "__main__":
    main()
