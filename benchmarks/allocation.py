"""How a prune spreads its removal over the channel groups, on digits ResNet56s.

``fxmeta.prune(..., allocation=)``: "global" (each group's scores divided by its largest, one
ranking across all groups: the default), "global-mean" (divided by the group's mean) or
"uniform" (every group loses the same fraction, weakest units first). On ResNet56 the global
ranking takes most of the removal from a few groups; how much that costs is measured here:

1. **Choice** (validation split of the ResNet56 zoo's 10 members, none of them a test network):
   accuracy right after a prune + BatchNorm recalibration at ``choice_targets``, for l2 alone
   and for 10 SGD steps on the masked loss (at ``CHOICE_LRS``). The allocation with the best mean
   over both methods and targets is chosen.
2. **Report** (the held-out base networks of ``benchmarks.prepare``, test split, 2/3/4/8x):
   fxmeta-l2, random and 10 gradient steps (lr chosen per allocation on the zoo's held-out
   members) under every allocation; ResNet56-zoo learned optimisers (10 rewrites,
   ``benchmarks.prunability``'s recipe) meta-trained under the chosen allocation and under
   "uniform", each measured under its own; at 2x the per-network oracle (5 prepare epochs,
   "global" and the chosen one); pairs over seeds with their standard error.

    python -m benchmarks.allocation          # resumable; caches beside benchmarks.prunability's
Results: ``benchmarks/results/allocation.{md,json}``.
"""
from __future__ import annotations

import argparse
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
    PREPARED,
    PREPARED_TARGETS,
    STEPS,
    TARGETS,
    cell,
    choice_cell,
    control_lr,
    metanet_name,
    start_scores,
)
from benchmarks.common import say
from benchmarks.digits import FULL as PREPARE
from benchmarks.digits import Bench, cache_key, mean_std
from benchmarks.zoo import STEP_LRS, Settings, build_zoo_once, meta_train_once

RESULTS = Path(__file__).resolve().parent / "results"
CHOICE_TARGETS = (2.0, 4.0)
# the 10 SGD steps' lr: benchmarks.prunability's choice for them on this zoo's held-out members (global allocation)
CHOICE_LRS = (0.03,)
# learned optimisers (10 rewrites, benchmarks.prunability's ResNet56-zoo recipe) meta-trained under the chosen
# allocation and under uniform (Torch-Pruning's local pruning); each is measured under its own allocation
META_ALLOCATIONS = ("chosen", "uniform")


def choose(bench: Bench, zoo: Path) -> dict:
    """Per allocation: l2's and the best-lr steps' mean validation score over the zoo members and the
    choice targets; the chosen allocation; the steps' lr per allocation."""
    from fxmeta.metatrain.zoo import load_zoo

    loaded = load_zoo(zoo, trust=True)
    members = [Path(loaded.path(m)) for m in loaded.members]
    table = {}
    for allocation in ALLOCATIONS:
        l2 = statistics.mean(choice_cell(bench, m, allocation, t, None) for m in members for t in CHOICE_TARGETS)
        by_lr = {lr: statistics.mean(choice_cell(bench, m, allocation, t, lr) for m in members for t in CHOICE_TARGETS)
                 for lr in CHOICE_LRS}
        lr = max(by_lr, key=by_lr.get)
        table[allocation] = {"l2": l2, "steps_by_lr": by_lr, "lr": lr, "score": (l2 + by_lr[lr]) / 2}
    chosen = max(table, key=lambda a: table[a]["score"])
    return {"members": len(members), "table": table, "chosen": chosen}


def _paired(cells: list[dict], method: str, a: str, b: str, target: float) -> tuple[float, float, int]:
    by = {(c["seed"], c["allocation"]): c.get("recal_test_acc") for c in cells
          if c["method"] == method and c["target"] == target}
    diffs = [100 * (by[(sd, a)] - by[(sd, b)]) for sd, al in by if al == a
             and by.get((sd, b)) is not None and by[(sd, a)] is not None]
    if len(diffs) < 2:
        return float("nan"), float("nan"), len(diffs)
    return statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5, len(diffs)


def write_report(choice: dict, cells: list[dict], meta: dict, metanets: dict, out: Path) -> None:
    chosen = choice["chosen"]
    lines = [f"# Allocation of a prune over the channel groups, digits {ARCH}", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['machine']}, torch threads = {meta['threads']}", f"- versions: {meta['versions']}",
             f"- held-out base networks (benchmarks.prepare's, spare-seed rule): seeds {meta['seeds']}; "
             f"zoo seeds 1000..1009",
             f"- load average at start / end: {meta['load_start']} / {meta['load_end']}; "
             f"run wall time {meta['minutes']:.1f} min (cells and metanetworks found in the cache are reused; "
             "their own times are in the lines below and in the cells)",
             f"- compute in the cells: {sum(c.get('seconds', 0.0) for c in cells) / 60:.1f} min (one thread); "
             f"meta-training {sum(m['seconds'] for m in metanets.values()) / 60:.1f} min; the zoo "
             f"{next(iter(metanets.values()))['zoo_seconds'] / 60:.1f} min", "",
             "## Choice (zoo members' validation split; no test network)", "",
             f"Mean validation accuracy (%) right after a prune + recalibration over the {choice['members']} "
             f"{ARCH} zoo members at {', '.join(f'{t:g}x' for t in CHOICE_TARGETS)}; {STEPS} gradient steps "
             f"at each lr of {list(CHOICE_LRS)}.", "",
             "| allocation | fxmeta-l2 | " + " | ".join(f"{STEPS} steps, lr {lr:g}" for lr in CHOICE_LRS)
             + " | score (l2 + best steps) / 2 |", "|---|---|" + "---|" * len(CHOICE_LRS) + "---|"]
    for allocation, row in choice["table"].items():
        mark = " **(chosen)**" if allocation == chosen else ""
        lines.append(f"| {allocation}{mark} | {100 * row['l2']:.2f} | "
                     + " | ".join(f"{100 * row['steps_by_lr'][lr]:.2f}" for lr in CHOICE_LRS)
                     + f" | {100 * row['score']:.2f} |")
    lines += ["", f"- {STEPS} gradient steps' lr, per allocation, the best of {list(STEP_LRS)} on the zoo's 2 "
              f"held-out members' validation split at 4x: " + "; ".join(
                  f"{a}: {v['lr']:g} (" + ", ".join(f"{lr:g}: {100 * x:.1f}" for lr, x in
                                                     v["held_out_val_by_lr"].items()) + ")"
                  for a, v in choice["control_lr"].items())]
    for allocation, info in metanets.items():
        start = info["start_scores"]
        lines.append(f"- {metanet_name(allocation)}: meta-trained on the zoo's 8 training members, every prune "
                     f"\"{allocation}\" ({info['options']}); {info['seconds'] / 60:.1f} min, best epoch "
                     f"{info['best_epoch']}, held-out members' val at 4x {100 * info['best_score']:.2f}; before "
                     f"meta-training: l2 alone {100 * info['baseline']:.2f}, SGD at its start lr "
                     + (f"{100 * max(start.values()):.2f}" if start else "?") + "; measured under its own allocation")
    lines += [f"- {PREPARED}: under \"global\" and \"{chosen}\" only (—: not run)", "",
              "## Held-out base networks: test accuracy (%) right after prune + recalibration, no finetune", "",
              "| target | method | " + " | ".join(ALLOCATIONS) + " | "
              + " | ".join(f"{a} − global (pts ± SE, paired)" for a in ALLOCATIONS[1:]) + " | n |",
              "|---|---|" + "---|" * (2 * len(ALLOCATIONS)) ]
    steps = f"{STEPS} gradient steps"
    for target in TARGETS:
        for method in METHODS + tuple(map(metanet_name, metanets)) + ((PREPARED,) if target in PREPARED_TARGETS
                                                                     else ()):
            vals, diffs, n = {}, [], 0
            for allocation in ALLOCATIONS:
                got = [c["recal_test_acc"] for c in cells if c["method"] == method and c["target"] == target
                       and c["allocation"] == allocation and "recal_test_acc" in c]
                m, sd = mean_std(got) if got else (float("nan"), float("nan"))
                vals[allocation] = f"{100 * m:.2f} ± {100 * sd:.2f}" if got else "—"
                n = max(n, len(got))
                if allocation != "global":
                    d, se, k = _paired(cells, method, allocation, "global", target)
                    diffs.append(f"{d:+.2f} ± {se:.2f}" if k >= 2 else "—")
            lines.append(f"| {target:g}x | {method} | " + " | ".join(vals.values()) + " | " + " | ".join(diffs)
                         + f" | {n} |")
    lines += ["", f"Each learned optimiser against {steps} under the same allocation (test, pts ± SE, paired):", "",
              "| target | " + " | ".join(metanet_name(a) + f" − {steps}" for a in metanets) + " |",
              "|---|" + "---|" * len(metanets)]
    for target in TARGETS:
        row = []
        for allocation in metanets:
            both = [c for c in cells if c["target"] == target and c["allocation"] == allocation]
            by = {(c["seed"], c["method"]): c.get("recal_test_acc") for c in both}
            d = [100 * (by[(sd, metanet_name(allocation))] - by[(sd, steps)]) for sd, m in by
                 if m == steps and by.get((sd, metanet_name(allocation))) is not None and by[(sd, m)] is not None]
            row.append(f"{statistics.mean(d):+.2f} ± {statistics.stdev(d) / len(d) ** 0.5:.2f}" if len(d) >= 2
                       else "—")
        lines.append(f"| {target:g}x | " + " | ".join(row) + " |")
    errors = [c for c in cells if "error" in c]
    if errors:
        lines += ["", "Errors: " + "; ".join(f"{c['method']} s{c['seed']} {c['target']:g}x: {c['error']}"
                                            for c in errors)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "choice": choice, "cells": cells,
                                                    "metanets": {a: {k: v for k, v in m.items() if k != "metanet"}
                                                                 for a, m in metanets.items()}}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.allocation", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"))
    p.add_argument("--stage", choices=["choice", "metanet", "all"], default="all",
                   help="choice: the zoo's validation scores only; metanet: also meta-train; all: the report")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, load_start = time.time(), "/".join(f"{x:.2f}" for x in os.getloadavg())
    s, cache = Settings(), Path(args.cache) / "full"
    bench = Bench(PREPARE, cache)
    zoo, zoo_seconds = build_zoo_once(s, cache, ARCH)
    choice = choose(bench, zoo)
    say(f"allocation chosen on the zoo's validation split: {choice['chosen']}")
    if args.stage == "choice":
        return
    name, options = next(o for o in s.own_objectives if o[0].endswith("T10"))
    metanets = {}
    for allocation in dict.fromkeys(choice["chosen"] if a == "chosen" else a for a in META_ALLOCATIONS):
        info = meta_train_once(s, zoo, f"{name} {ARCH} {allocation}", {**dict(options), "allocation": allocation},
                               cache)
        info.update(zoo=str(zoo), zoo_seconds=zoo_seconds, key=cache_key([info["best_epoch"], info["options"]]),
                    start_scores=start_scores(cache, f"{name} {ARCH} {allocation}"))
        metanets[allocation] = info
    if args.stage == "metanet":
        return
    seeds = bench.usable_seeds(ARCH)[0]
    lrs = {a: control_lr(bench, zoo, a, s) for a in ALLOCATIONS}
    choice["control_lr"] = {a: {"lr": lr, "held_out_val_by_lr": scores} for a, (lr, scores) in lrs.items()}
    cells = [cell(bench, seed, method, allocation, target, lrs[allocation][0], None)
             for seed in seeds for target in TARGETS
             for method in METHODS + ((PREPARED,) if target in PREPARED_TARGETS else ())
             for allocation in (ALLOCATIONS if method != PREPARED else dict.fromkeys(("global", choice["chosen"])))]
    cells += [cell(bench, seed, metanet_name(allocation), allocation, target, lrs[allocation][0], info)
              for seed in seeds for target in TARGETS for allocation, info in metanets.items()]
    meta = {"command": "python -m benchmarks.allocation" + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "threads": args.threads, "versions": versions(), "seeds": ", ".join(map(str, seeds)),
            "load_start": load_start, "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()),
            "minutes": (time.time() - t0) / 60}
    write_report(choice, cells, meta, metanets, RESULTS / "allocation")
    say(f"wrote {RESULTS / 'allocation.md'}")


if __name__ == "__main__":
    main()
