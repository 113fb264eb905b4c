"""The allocation of a learned optimiser's prune, chosen on validation and confirmed on fresh networks.

``benchmarks.allocation`` chose the allocation by a proxy (l2 alone and 10 SGD steps on the
zoo members' validation split) and the learned optimiser meta-trained under that choice
("global-mean") was not the better one. This benchmark fixes a rule on the thing that ships and
tests it on base networks that no earlier choice or report has seen:

1. **Rule** (validation only): a 10-rewrite learned optimiser (``benchmarks.prunability``'s
   ResNet56-zoo recipe) is meta-trained on the ResNet56 zoo's 8 training members under each
   allocation ("global", "global-mean", "uniform"). The one whose checkpoint score is highest
   (``meta_train``'s own criterion: the zoo's 2 held-out members' validation accuracy after a
   4x prune + recalibration) is **the chosen learned optimiser**, and its allocation the chosen
   allocation. Nothing else enters the choice.
2. **Confirmation** (test split): fresh held-out base networks, seeds 10-14 (spares 15-17 under
   ``benchmarks.prepare``'s spare-seed rule), disjoint from the zoo (1000+), from the sweep
   network (100) and from the seeds 0-7 of every earlier table. At 2/3/4/8x right after a prune
   + recalibration, no finetune: fxmeta-l2, random and 10 SGD steps on the masked loss (lr per
   allocation on the zoo's held-out members, as ``benchmarks.allocation``) under every
   allocation, and every learned optimiser under its own allocation.

    python -m benchmarks.allocation_confirm                  # resumable; shares benchmarks.allocation's cache
    python -m benchmarks.allocation_confirm --stage metanet --allocations uniform   # one meta-training
Results: ``benchmarks/results/allocation_confirm.{md,json}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks._env import versions
from benchmarks.allocation_cells import (
    ALLOCATIONS,
    ARCH,
    METHODS,
    STEPS,
    TARGETS,
    cell,
    control_lr,
    metanet_name,
    start_scores,
)
from benchmarks.common import say
from benchmarks.digits import FULL, Bench, cache_key, mean_std
from benchmarks.zoo import Settings, build_zoo_once, meta_train_once

RESULTS = Path(__file__).resolve().parent / "results"
CONFIRM = dataclasses.replace(FULL, seeds=(10, 11, 12, 13, 14), spare_seeds=(15, 16, 17))
TARGET_2X = 0.90  # the target for a 2x prune at 0 epochs on the network


def metanets_once(s: Settings, zoo: Path, cache: Path, zoo_seconds: float, allocations: tuple[str, ...]) -> dict:
    name, options = next(o for o in s.own_objectives if o[0].endswith("T10"))
    out = {}
    for allocation in allocations:
        run = f"{name} {ARCH} {allocation}"  # benchmarks.allocation's names: its runs are reused
        info = meta_train_once(s, zoo, run, {**dict(options), "allocation": allocation}, cache)
        info.update(zoo=str(zoo), zoo_seconds=zoo_seconds, key=cache_key([info["best_epoch"], info["options"]]),
                    start_scores=start_scores(cache, run))
        out[allocation] = info
    return out


def _col(cells: list[dict], method: str, allocation: str, target: float) -> dict[int, float]:
    return {c["seed"]: c["recal_test_acc"] for c in cells if c["method"] == method and c["allocation"] == allocation
            and c["target"] == target and "recal_test_acc" in c}


def _diff(a: dict[int, float], b: dict[int, float]) -> str:
    d = [100 * (a[sd] - b[sd]) for sd in a if sd in b]
    return f"{statistics.mean(d):+.2f} ± {statistics.stdev(d) / len(d) ** 0.5:.2f}" if len(d) >= 2 else "—"


def _ms(values: dict[int, float]) -> str:
    m, sd = mean_std(list(values.values()))
    return f"{100 * m:.2f} ± {100 * sd:.2f}" if values else "—"


def write_report(meta: dict, metanets: dict, chosen: str, lrs: dict, cells: list[dict], rejected: dict,
                 out: Path) -> None:
    steps = f"{STEPS} gradient steps"
    lines = [f"# Allocation of the learned optimiser's prune: choice on validation, confirmation on fresh {ARCH}s",
             "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['machine']}, torch threads = {meta['threads']}", f"- versions: {meta['versions']}",
             f"- fresh held-out base networks (spare-seed rule, base val ≥ {CONFIRM.min_base_val:g}): seeds "
             f"{meta['seeds']}" + (f"; replaced: {rejected}" if rejected else "") + "; zoo seeds 1000..1009",
             f"- load average at start / end: {meta['load_start']} / {meta['load_end']}; run wall time "
             f"{meta['minutes']:.1f} min (cached cells and metanetworks are reused; their own times are below)",
             f"- compute in the cells: {sum(c.get('seconds', 0.0) for c in cells) / 60:.1f} min (one thread); "
             f"meta-training {sum(m['seconds'] for m in metanets.values()) / 60:.1f} min; the zoo "
             f"{next(iter(metanets.values()))['zoo_seconds'] / 60:.1f} min", "",
             "## Rule: the learned optimisers' own validation score (no test network)", "",
             "| allocation | meta-training min | best epoch | held-out zoo val at 4x (%) | before: l2 alone | "
             "before: SGD at the best start lr |", "|---|---|---|---|---|---|"]
    for allocation, info in metanets.items():
        mark = " **(chosen)**" if allocation == chosen else ""
        start = info["start_scores"]
        lines.append(f"| {allocation}{mark} | {info['seconds'] / 60:.1f} | {info['best_epoch']} | "
                     f"{100 * info['best_score']:.2f} | {100 * info['baseline']:.2f} | "
                     + (f"{100 * max(start.values()):.2f}" if start else "?") + " |")
    lines += ["", f"- every learned optimiser: {next(iter(metanets.values()))['options']} with its allocation",
              f"- {steps}' lr per allocation (best on the zoo's held-out members' val at 4x): "
              + ", ".join(f"{a} {lr:g}" for a, lr in lrs.items()), "",
              "## Fresh base networks: test accuracy (%) right after prune + recalibration, no finetune", "",
              "| target | method | " + " | ".join(ALLOCATIONS) + " | n |", "|---|---|" + "---|" * len(ALLOCATIONS) + "---|"]
    for target in TARGETS:
        for method in METHODS + tuple(map(metanet_name, metanets)):
            cols = {a: _col(cells, method, a, target) for a in ALLOCATIONS}
            lines.append(f"| {target:g}x | {method} | " + " | ".join(_ms(v) for v in cols.values())
                         + f" | {max(map(len, cols.values()))} |")
    best = metanet_name(chosen)
    lines += ["", f"The chosen learned optimiser ({best}) against the others, paired over the seeds (pts ± SE):", "",
              f"| target | chosen | − {steps} ({chosen}) | − fxmeta-l2 (global, the default) | − {steps} (global) | "
              "− the best other baseline row |", "|---|---|---|---|---|---|"]
    verdict = []
    for target in TARGETS:
        ours = _col(cells, best, chosen, target)
        rows = {(m, a): _col(cells, m, a, target) for m in METHODS for a in ALLOCATIONS}
        rows.update({(metanet_name(a), a): _col(cells, metanet_name(a), a, target) for a in metanets if a != chosen})
        rival = max((k for k in rows if rows[k]), key=lambda k: statistics.fmean(rows[k].values()))
        lines.append(f"| {target:g}x | {_ms(ours)} | {_diff(ours, rows[(steps, chosen)])} | "
                     f"{_diff(ours, rows[('fxmeta-l2', 'global')])} | {_diff(ours, rows[(steps, 'global')])} | "
                     f"{_diff(ours, rows[rival])} vs {rival[0]} ({rival[1]}) |")
        if target == 2.0 and ours:
            mean = statistics.fmean(ours.values())
            verdict.append(f"- 2x target (≥ {100 * TARGET_2X:.0f} % mean over the fresh networks): "
                           f"{100 * mean:.2f} % — {'met' if mean >= TARGET_2X else 'missed'}")
        if target == 4.0 and ours:
            l2 = rows[("fxmeta-l2", "global")]
            gain = statistics.fmean(100 * (ours[sd] - l2[sd]) for sd in ours if sd in l2)
            verdict.append(f"- 4x target (≥ fxmeta-l2 + 15 pts): {gain:+.2f} pts — {'met' if gain >= 15 else 'missed'}")
    lines += [""] + verdict
    errors = [c for c in cells if "error" in c]
    if errors:
        lines += ["", "Errors: " + "; ".join(f"{c['method']} s{c['seed']} {c['target']:g}x: {c['error']}"
                                            for c in errors)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "meta": meta, "chosen": chosen, "lrs": lrs, "cells": cells, "rejected": rejected,
        "metanets": {a: {k: v for k, v in m.items() if k != "metanet"} for a, m in metanets.items()}}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.allocation_confirm", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"))
    p.add_argument("--stage", choices=["zoo", "bases", "metanet", "controls", "all"], default="all",
                   help="zoo / bases: build only those; metanet: meta-train (see --allocations) and measure; controls: the "
                        "cells without a learned optimiser; all: the report")
    p.add_argument("--allocations", default=",".join(ALLOCATIONS),
                   help="with --stage metanet: the allocations to meta-train under (comma-separated)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, load_start = time.time(), "/".join(f"{x:.2f}" for x in os.getloadavg())
    s, cache = Settings(), Path(args.cache) / "full"
    bench = Bench(CONFIRM, cache)
    if args.stage == "bases":
        bench.usable_seeds(ARCH)
        return
    zoo, zoo_seconds = build_zoo_once(s, cache, ARCH)
    if args.stage == "zoo":
        return
    if args.stage == "metanet":
        unknown = set(args.allocations.split(",")) - set(ALLOCATIONS)
        if unknown:
            p.error(f"unknown allocation(s) {sorted(unknown)}; choose from {', '.join(ALLOCATIONS)}")
        metanets = metanets_once(s, zoo, cache, zoo_seconds, tuple(args.allocations.split(",")))
        seeds = bench.usable_seeds(ARCH)[0]
        for allocation, info in metanets.items():  # its cells on the fresh networks, for the report to reuse
            lr = control_lr(bench, zoo, allocation, s)[0]
            for seed in seeds:
                for target in TARGETS:
                    cell(bench, seed, metanet_name(allocation), allocation, target, lr, info)
        return
    seeds, rejected = bench.usable_seeds(ARCH)
    lrs = {a: control_lr(bench, zoo, a, s)[0] for a in ALLOCATIONS}
    cells = [cell(bench, seed, method, allocation, target, lrs[allocation], None)
             for seed in seeds for target in TARGETS for method in METHODS for allocation in ALLOCATIONS]
    if args.stage == "controls":
        return
    metanets = metanets_once(s, zoo, cache, zoo_seconds, ALLOCATIONS)
    chosen = max(metanets, key=lambda a: metanets[a]["best_score"])
    say(f"learned optimiser chosen on the held-out zoo members' validation: meta-trained under {chosen}")
    cells += [cell(bench, seed, metanet_name(allocation), allocation, target, lrs[allocation], info)
              for seed in seeds for target in TARGETS for allocation, info in metanets.items()]
    meta = {"command": "python -m benchmarks.allocation_confirm"
                       + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "threads": args.threads, "versions": versions(), "seeds": ", ".join(map(str, seeds)),
            "load_start": load_start, "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()),
            "minutes": (time.time() - t0) / 60}
    write_report(meta, metanets, chosen, lrs, cells, rejected, RESULTS / "allocation_confirm")
    say(f"wrote {RESULTS / 'allocation_confirm.md'}")


if __name__ == "__main__":
    main()
