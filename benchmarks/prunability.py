"""Prunability on held-out networks: accuracy right after pruning + BatchNorm recalibration.

The metanetwork's promise is a network that keeps its accuracy right after channels are
removed, from one forward pass. This measures it on base networks no metanetwork saw
(``benchmarks.prepare``'s base networks, seeds 0-4; the zoo uses seeds 1000+), at
2/3/4/8x, with BatchNorm recomputed on the same training batches for every method and no
finetune:

- ``metanet (prunable)``: meta-trained with ``objective="prunable"`` (the generated
  network's cross-entropy + the cross-entropy of the generated network with the channels
  a prune to a drawn target removes masked out), then fxmeta prune (l2);
- ``metanet (reference)``: meta-trained with the reference objective (cross-entropy +
  group-sparsity penalty), then fxmeta prune (l2);
- ``metanet (prunable r1)`` / ``metanet (nodes r1 4x)``: the prunable objective with
  ratio 1 from zero-initialised decoders, all tables / node tables only (the sweep);
- ``metanet (conditioned ...)``: told the prune (``fxmeta.metanet.condition``); the ``step T``
  ones are learned optimisers: a gradient-step head that starts as SGD, T rewrites unrolled;
- ``fxmeta-l2`` and ``random``: the base network pruned as it is;
- ``DepGraph+SL``: after its sparsity-learning epochs (``benchmarks.prepare``'s, cached);
- ``one gradient step`` / ``T gradient steps``: the conditioned metanetwork's data alone, without
  it: T SGD steps on the masked loss (the same fixed prune, the same 2 calibration batches every
  step), lr from ``STEP_LRS`` chosen per T on the held-out zoo members' validation split, then
  the same prune; a metanetwork that rewrites T times is compared with T steps;
- ``prepared``: ``fxmeta.prepare`` for 5 epochs on the network itself (and, on ResNet20, for 1
  epoch alone and after the best metanetwork), the per-network
  oracle the metanetwork should amortise.

The metanetworks come from a zoo of ResNet20s (8 training + 2 held-out members); the
checkpoint is chosen by ``meta_train`` on the held-out members' validation accuracy
after a prune to ``select_speedup`` + recalibration (validation only, never test). The
ResNet20 metanetworks are also applied to ResNet56 base networks (transfer). A zoo of
ResNet56s (same seeds and split) gives the ``resnet56 zoo`` learned optimisers, measured on
ResNet56 only; the SGD controls' lr on ResNet56 is chosen on that zoo's held-out members.

    python -m benchmarks.prunability                 # resumable; caches under ~/.cache/fxmeta-bench
    python -m benchmarks.prunability --data mnist5k  # the same metanetworks on mnist5k ResNet20s
Results: ``benchmarks/results/prunability{,_mnist5k}.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._env import versions
from benchmarks.common import say
from benchmarks.digits import FULL as PREPARE
from benchmarks.digits import Bench, cache_key, choose, mean_std, pct, prepare_settings
from benchmarks.zoo import STEP_LRS, Settings, build_zoo_once, gradient_step, meta_train_once, rewrite_for

RESULTS = Path(__file__).resolve().parent / "results"
GRAD_STEP = "one gradient step"
STEP_COUNTS = (1, 3, 10)  # the T-step SGD controls (a T-rewrite metanetwork is paired with T steps)
FIXED_1 = "prepared 1 epoch, prune fixed first"  # the mask of the original weights, trained for and then pruned


def steps_name(steps: int) -> str:
    return GRAD_STEP if steps == 1 else f"{steps} gradient steps"


STEP_METHODS = {steps_name(t): t for t in STEP_COUNTS}
BASELINES = ("fxmeta-l2", "DepGraph+SL", "random", "prepared", *STEP_METHODS)
PREPARE_1 = "prepared 1 epoch"


def one_epoch_methods(s: "Settings", trained: dict) -> tuple[str, ...]:
    """k = 1 on the family itself: one prepare epoch alone, and after the metanetwork with the best
    held-out zoo score (validation) among those that rewrite once and after every learned optimiser
    (a gradient-step head), to see whether the metanetwork amortises part of prepare; and after the
    T-step SGD controls of the same data."""
    once = [m for m in trained if trained[m]["metanet"].config.steps == 1 and not trained[m]["metanet"].config.step_lr]
    chosen = [max(once, key=lambda m: trained[m]["best_score"])] if once else []
    chosen += [m for m in trained if trained[m]["metanet"].config.step_lr and m not in own_methods(s)]
    controls = dict.fromkeys((GRAD_STEP, *(steps_name(trained[m]["metanet"].config.steps) for m in chosen)))
    return (PREPARE_1, FIXED_1, *(f"{m} + {PREPARE_1}" for m in chosen), *(f"{c} + {PREPARE_1}" for c in controls))


def own_name(name: str, arch: str) -> str:
    return f"metanet ({name}, {arch} zoo)"


def own_methods(s: "Settings") -> dict[str, str]:
    """The metanetworks meta-trained on a zoo of the family they are measured on: {method: arch}."""
    return {own_name(name, arch): arch for arch in s.own_zoos for name, _ in s.own_objectives}


def methods(s: "Settings", arch: str | None = None) -> tuple[str, ...]:
    own = tuple(m for m, a in own_methods(s).items() if a == arch)
    return (*(f"metanet ({name})" for name, _ in s.objectives), *own, *BASELINES)


def choose_step_lr(bench: Bench, s: Settings, zoo: Path, steps: int = 1) -> tuple[dict, dict]:
    """The T-step control's lr: the best mean validation accuracy on the held-out zoo members after a
    prune to ``select_speedup`` + recalibration (the data the metanetworks' checkpoints are chosen on)."""
    from fxmeta.io.files import load
    from fxmeta.metatrain.zoo import load_zoo
    from fxmeta.training.loop import evaluate, recalibrate_bn

    parts = [str(zoo), STEP_LRS, s.select_speedup] + ([steps] if steps != 1 else [])
    path = bench.cache / "prunability-cells" / f"step-lr-{cache_key(parts)}.json"
    if path.is_file():
        scores = json.loads(path.read_text())
    else:
        held_out = load_zoo(zoo, trust=True)
        members = [load(held_out.path(m), trust=True).eval() for m in held_out.split("val")]
        scores = {}
        for lr in STEP_LRS:
            accs = []
            for member in members:
                module, importance = gradient_step(member, bench, s.select_speedup, lr, steps)
                got = bench.prune(module, "fxmeta-l2", s.select_speedup, {"importance": importance}, 0)
                recalibrate_bn(got["module"], bench.calibration, len(bench.calibration))
                accs.append(evaluate(got["module"], bench.loaders.val)["acc"])
            scores[str(lr)] = statistics.fmean(accs)
            say(f"{steps_name(steps)}, lr {lr:g}: held-out zoo val {scores[str(lr)]:.4f}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scores))
    best = max(scores, key=scores.get)
    return {"lr": float(best)}, scores


def cell(bench: Bench, arch: str, seed: int, method: str, target: float, hp: dict, metanets: dict) -> dict:
    from fxmeta.errors import FxmetaError

    metanet_key = metanets.get(method.split(" + ")[0], {}).get("key")
    path = bench.cache / "prunability-cells" / f"{arch}-s{seed}-{method.replace(' ', '_')}-{target:g}x-" \
                                               f"{cache_key([hp, metanet_key])}.json"
    if path.is_file():
        return json.loads(path.read_text())
    record: dict[str, Any] = {"arch": arch, "seed": seed, "method": method, "target": target}
    base = bench.base(arch, seed)
    t0 = time.perf_counter()
    try:
        if method.endswith(PREPARE_1) or method == FIXED_1:  # one prepare epoch (on a rewritten network)
            import copy

            from fxmeta.training.prepare import prepare

            start, importance = copy.deepcopy(base), "l2"
            if method.startswith("metanet"):
                start, importance = rewrite_for(metanets[method.split(" + ")[0]]["metanet"], bench, start, target)
            elif method.split(" + ")[0] in STEP_METHODS:  # the control: the same data as steps, then the epoch
                start, importance = gradient_step(start, bench, target, hp["step_lr"],
                                                  STEP_METHODS[method.split(" + ")[0]])
            elif method == FIXED_1:  # what the two above share: the prune fixed from the original weights
                importance = bench.told_importance(arch, seed, target)
            config = bench.train_config(1, hp["lr"], seed)
            start = prepare(start, bench.example, bench.data, config, [target], importance=importance,
                            **prepare_settings(hp)).model.cpu()
            kind, prune_hp = "fxmeta-l2", {"importance": importance}
        elif method.startswith("metanet"):
            start, importance = rewrite_for(metanets[method]["metanet"], bench, base, target)
            kind, prune_hp = "fxmeta-l2", {"importance": importance}
        elif method in STEP_METHODS:
            start, importance = gradient_step(base, bench, target, hp["lr"], STEP_METHODS[method])
            kind, prune_hp = "fxmeta-l2", {"importance": importance}
        elif method in ("DepGraph+SL", "prepared"):
            start, _ = bench.pre_stage(arch, seed, method, target, hp)
            kind, prune_hp = method, hp
        else:
            start, kind, prune_hp = base, method, {}
        got = bench.prune(start, kind, target, prune_hp, seed)
    except FxmetaError as exc:
        got = {"error": str(exc)}
    if "error" in got:
        record["error"] = got["error"]
    else:
        raw, val, test = bench.after_prune(got["module"])
        record.update(pruned_test_acc=raw, recal_val_acc=val, recal_test_acc=test,
                      seconds=time.perf_counter() - t0)
        say(f"{arch} s{seed} {method:>19} {target:g}x: right after {raw:.4f} -> recalibrated {test:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def write_report(s: Settings, cells: list[dict], meta: dict, trained: dict, zoo_seconds: float, seeds: dict,
                 out: Path) -> None:
    used = "; ".join(f"{arch} {', '.join(map(str, sd))}" for arch, sd in seeds.items())
    lines = ["# Prunability on held-out networks: accuracy right after pruning + BatchNorm recalibration", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}, "
             f"torch threads = {meta['threads']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
             f"- held-out base networks (benchmarks.prepare's, with its spare-seed rule): seeds {used}; zoo seeds "
             f"{s.zoo_seed}..{s.zoo_seed + s.zoo_count - 1}",
             f"- load average at start / end: {meta['load_start']} / {meta['load_end']}; run wall time "
             f"{meta['minutes']:.1f} min", "",
             "## Setup", "",
             f"- zoo: {s.zoo_count} fxmeta {s.family} on digits 16x16 ({s.zoo_count - s.zoo_val} training, "
             f"{s.zoo_val} held out), {s.zoo_epochs} epochs lr {s.zoo_lr:g}, no pre-pruning; built in "
             f"{zoo_seconds / 60:.1f} min",
             *(f"- {arch} zoo (for the `{arch} zoo` metanetwork and the gradient-step controls' lr on {arch}): "
               f"{s.zoo_count} fxmeta {arch}, same split and seeds, lr {PREPARE.lr_of(PREPARE.base_lrs, arch):g} "
               f"(its base networks' recipe); built in {info['zoo_seconds'] / 60:.1f} min"
               for arch, info in {v["arch"]: v for v in trained.values() if v.get("arch", s.family) != s.family}.items()),
             f"- metanetwork: width {s.width}, depth {s.depth}, ratio {s.ratio:g} unless the objective sets it, "
             f"{s.meta_epochs} epochs (one step per training member per epoch), {s.batches_per_step} batches per step; "
             f"checkpoint chosen on the held-out zoo members' validation accuracy after a {s.select_speedup:g}x "
             "prune + recalibration (`fxmeta.training.curve`)",
             *([f"- data of the base networks: {meta['data']}"] if "data" in meta else []),
             "- every method: fxmeta's BatchNorm recalibration on the same 20 training batches right after "
             f"pruning, no finetune; test split ({meta.get('test_images', 360)} images) unless noted",
             *(f"- {name}: SGD on the masked loss, lr {text}" for name, text in meta.get("step_lr", {}).items()),
             "",
             "## The objective sweep (choices on held-out zoo members' validation split only)", "",
             "| objective | settings | meta-training min | best epoch | held-out zoo score (val) | score by epoch "
             "(epoch 0 = no metanet) | zoo + meta-training per network pruned, s |", "|---|---|---|---|---|---|---|"]
    for name, info in trained.items():
        own = info.get("arch", s.family) != s.family  # pruned only on its own family
        n_pruned = sum(len(sd) for arch, sd in seeds.items() if not own or arch == info["arch"]) * len(s.targets)
        cost = info.get("zoo_seconds", zoo_seconds) + info["seconds"]
        curve = " ".join(f"{100 * h['score']:.0f}" for h in [{"score": info.get("baseline", float("nan"))},
                                                              *info["history"]])
        lines.append(f"| {name} | {info['options']} | {info['seconds'] / 60:.1f} | {info['best_epoch']} | "
                     f"{pct(info['best_score'])} | {curve} | {cost / n_pruned:.0f} |")
    lines.append("")
    all_methods = (*methods(s), *(m for m in own_methods(s) if m in trained), *one_epoch_methods(s, trained))
    budget = {m: "0 (+ amortised meta-training)" for m in all_methods if m.startswith("metanet")}
    budget.update({m: f"0 + {_grads(trained[m]['metanet'].config.steps)} on "
                      f"{trained[m]['metanet'].config.condition_batches} batches (+ amortised meta-training)"
                   for m in all_methods if m.startswith("metanet (conditioned") and m in trained})
    budget.update({m: ("0 + 1 (prepare)" if m.startswith("metanet") else
                       f"0 + {_grads(STEP_METHODS[m.split(' + ')[0]])} on 2 batches + 1 (prepare)"
                       if m.split(" + ")[0] in STEP_METHODS else "1 (prepare)")
                   for m in one_epoch_methods(s, trained)})
    budget.update({m: f"0 + {_grads(t)} on 2 batches" for m, t in STEP_METHODS.items()})
    budget.update({"fxmeta-l2": "0", "random": "0",
                   "DepGraph+SL": f"{PREPARE.pre_epochs} (sparsity learning)",
                   "prepared": f"{PREPARE.pre_epochs} (prepare)"})
    for arch in (s.family, *s.transfer):
        own = [m for m, a in own_methods(s).items() if a == arch and m in trained]
        lines += [f"## {arch}" + (f" (transfer: metanetworks meta-trained on {s.family}"
                                  + (f"; {', '.join(own)} on {arch}s of the zoo's seeds" if own else "") + ")"
                                  if arch != s.family else ""),
                  "", "| target | method | epochs on the network | n | test acc right after prune + recal (%) | "
                      "diff to best baseline (pts ± SE) |", "|---|---|---|---|---|---|"]
        for target in s.targets:
            group = {m: [c for c in cells if (c["arch"], c["method"], c["target"]) == (arch, m, target)
                         and "error" not in c] for m in all_methods}
            baselines = ("fxmeta-l2", "DepGraph+SL", "random")
            # the baseline every method is compared with: chosen on validation, never on test
            best = max(baselines, key=lambda m: statistics.fmean([c["recal_val_acc"] for c in group[m]])
                       if group[m] else -1)
            for method in all_methods:
                ok = group[method]
                if not ok:
                    errs = [c.get("error", "") for c in cells if (c["arch"], c["method"], c["target"])
                            == (arch, method, target)]
                    if errs:
                        lines.append(f"| {target:g}x | {method} | {budget[method]} | 0 | failed: {errs[0][:90]} | |")
                    continue
                m, sd = mean_std([c["recal_test_acc"] for c in ok])
                refs = []
                if method.startswith("metanet") or method.startswith("prepared") or \
                        method.split(" + ")[0] in STEP_METHODS:
                    # a metanetwork before one prepare epoch is compared with that epoch alone (the oracle)
                    refs.append(PREPARE_1 if method.endswith(" + " + PREPARE_1) or method == FIXED_1 else best)
                    if method.endswith(" + " + PREPARE_1):
                        refs.append(FIXED_1)  # the same fixed prune, trained for without anything before it
                if method.startswith("metanet (conditioned"):  # the same data without the metanetwork
                    steps = trained[method.split(" + ")[0]]["metanet"].config.steps
                    refs.append(f"{steps_name(steps)} + {PREPARE_1}" if method.endswith(" + " + PREPARE_1) else
                                steps_name(steps))
                diffs = []
                for ref in refs:
                    by = {c["seed"]: c["recal_test_acc"] for c in group.get(ref, [])}
                    d = [c["recal_test_acc"] - by[c["seed"]] for c in ok if c["seed"] in by]
                    if len(d) > 1:
                        diffs.append(f"{100 * statistics.fmean(d):+.2f} ± "
                                     f"{100 * statistics.stdev(d) / len(d) ** 0.5:.2f} vs {ref}")
                diff = "; ".join(diffs)
                lines.append(f"| {target:g}x | {method} | {budget[method]} | {len(ok)} | {pct(m, sd)} | {diff} |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "trained": {k: {kk: vv for kk, vv in v.items()
                                                                                  if kk != "metanet"}
                                                                              for k, v in trained.items()},
                                                    "cells": cells}, indent=1))
    _plot(s, cells, out.with_suffix(".png"))


def _grads(steps: int) -> str:
    return "gradient" if steps == 1 else f"{steps} gradients"


def _plot(s: Settings, cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = (s.family, *s.transfer)
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for method in methods(s, arch):
            xs, ms, sds = [], [], []
            for target in s.targets:
                acc = [c["recal_test_acc"] for c in cells if (c["arch"], c["method"], c["target"]) ==
                       (arch, method, target) and "error" not in c]
                if acc:
                    xs.append(target)
                    ms.append(100 * statistics.fmean(acc))
                    sds.append(100 * statistics.stdev(acc) if len(acc) > 1 else 0.0)
            if xs:  # metanetworks solid, baselines dashed; 20 colours, so no two lines share one
                index = methods(s, arch).index(method)
                ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=method, color=plt.cm.tab20(index % 20),
                            linestyle="-" if method.startswith("metanet") else "--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(s.targets), [f"{t:g}x" for t in s.targets])
        ax.set_xlabel("FLOPs speed-up target")
        ax.set_ylabel("test acc right after prune + recal (%)")
        ax.set_title(arch + (" (transfer)" if arch != s.family else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prunability", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"))
    p.add_argument("--no-transfer", action="store_true", help="skip the ResNet56 transfer rows")
    p.add_argument("--data", choices=["digits", "mnist5k"], default="digits",
                   help="mnist5k: the digits-trained metanetworks on ResNet20s trained on mnist5k (at 16x16), against "
                        "the baselines that need no prepare epochs; written to prunability_mnist5k.{md,json,png}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Settings(transfer=() if args.no_transfer else Settings.transfer)
    cache = Path(args.cache) / "full"
    bench = Bench(PREPARE, cache)
    t0, load_start = time.time(), "/".join(f"{x:.2f}" for x in os.getloadavg())
    zoo, zoo_seconds = build_zoo_once(s, cache)
    trained = {f"metanet ({name})": meta_train_once(s, zoo, name, dict(options), cache)
               for name, options in s.objectives}
    chosen = choose(bench, PREPARE.sweep_arch, {})  # benchmarks.prepare's validation choices (cached)
    step_scores = {}
    for name, steps in STEP_METHODS.items():
        chosen[name], scores = choose_step_lr(bench, s, zoo, steps)
        step_scores[name] = (s.family, scores)
    for info in trained.values():
        info.update(zoo=str(zoo), zoo_seconds=zoo_seconds, arch=s.family)
    if args.data != "digits":
        return other_data(args, s, cache, chosen, _keyed(trained), trained, zoo_seconds, t0, load_start)
    own_chosen = {}  # per family with its own zoo: the controls' lr chosen there
    for arch in (a for a in s.own_zoos if a in s.transfer):
        own_zoo, own_seconds = build_zoo_once(s, cache, arch)
        for name, options in s.own_objectives:
            trained[own_name(name, arch)] = {**meta_train_once(s, own_zoo, f"{name} {arch}", dict(options), cache),
                                             "zoo": str(own_zoo), "zoo_seconds": own_seconds, "arch": arch}
        own_chosen[arch] = {}
        for name, steps in STEP_METHODS.items():
            own_chosen[arch][name], scores = choose_step_lr(bench, s, own_zoo, steps)
            step_scores[f"{name} on {arch}"] = (arch, scores)
    metanets = _keyed(trained)
    seeds = {arch: bench.usable_seeds(arch)[0] for arch in (s.family, *s.transfer)}
    cells = []
    for arch in (s.family, *s.transfer):
        arch_chosen = {**chosen, **own_chosen.get(arch, {})}
        for seed in seeds[arch]:
            for target in s.targets:
                for method in methods(s, arch):
                    cells.append(cell(bench, arch, seed, method, target, arch_chosen.get(method, {}), metanets))
    for seed in seeds[s.family]:
        for target in s.targets:
            for method in one_epoch_methods(s, trained):
                control = method.split(" + ")[0]
                hp = chosen["prepared"] if control not in STEP_METHODS else \
                    {**chosen["prepared"], "step_lr": chosen[control]["lr"]}
                cells.append(cell(bench, s.family, seed, method, target, hp, metanets))
    meta = {"command": "python -m benchmarks.prunability" + (" --no-transfer" if args.no_transfer else "")
            + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
            "versions": versions(), "load_start": load_start,
            "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()), "minutes": (time.time() - t0) / 60,
            "step_lr": {name: f"{max(scores, key=scores.get)} (held-out {family} zoo val at {s.select_speedup:g}x "
                        "by lr: " + ", ".join(f"{lr}: {100 * v:.1f}" for lr, v in scores.items()) + ")"
                        for name, (family, scores) in step_scores.items()}}
    write_report(s, cells, meta, trained, zoo_seconds, seeds, RESULTS / "prunability")
    say(f"wrote {RESULTS / 'prunability.md'}")


def _keyed(trained: dict) -> dict:
    """The metanetworks with the key their cells are cached under (checkpoint, settings, zoo)."""
    return {m: {**info, "key": cache_key([info["best_epoch"], info["options"], info["zoo"]])}
            for m, info in trained.items()}


def other_data(args, s: Settings, cache: Path, chosen: dict, metanets: dict, trained: dict, zoo_seconds: float,
               t0: float, load_start: str) -> None:
    """Held-out ResNet20s trained on another dataset (mnist5k at 16x16): the digits-trained metanetworks
    transferred across data, against the baselines that spend no epoch on the network (and DepGraph+SL,
    with the settings chosen on digits). Every choice was made on digits; nothing is tuned here."""
    from dataclasses import replace

    bench = Bench(replace(PREPARE, data=args.data), cache / args.data)
    s = replace(s, transfer=())
    seeds = {s.family: bench.usable_seeds(s.family)[0]}
    skip = ("prepared",)  # 5 prepare epochs per cell: not run here (the digits table has it)
    cells = [cell(bench, s.family, seed, method, target, chosen.get(method, {}), metanets)
             for seed in seeds[s.family] for target in s.targets for method in methods(s) if method not in skip]
    meta = {"command": f"python -m benchmarks.prunability --data {args.data}"
            + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
            "versions": versions(), "load_start": load_start,
            "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()), "minutes": (time.time() - t0) / 60,
            "test_images": len(bench.data.test),
            "data": f"{args.data} at 16x16 ({bench.data.description}); base networks trained on it, metanetworks "
                    "meta-trained on the digits zoo (transfer across data), every setting chosen on digits; "
                    "`prepared` and the one-epoch rows are not run on this data",
            "step_lr": {name: f"{chosen[name]['lr']:g} (chosen on the digits zoo)" for name in STEP_METHODS}}
    write_report(s, cells, meta, trained, zoo_seconds, seeds, RESULTS / f"prunability_{args.data}")
    say(f"wrote {RESULTS / f'prunability_{args.data}.md'}")


if __name__ == "__main__":
    main()
