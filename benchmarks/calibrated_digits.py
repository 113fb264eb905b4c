"""Calibrated pruning on digits ResNet20 / ResNet56, beside ``prepare.md``.

    python -m benchmarks.calibrated_digits [--quick] [--threads 1]

The setting of ``benchmarks.prepare`` (``benchmarks.digits``: its base networks, seeds, FLOPs
targets, 20 shared calibration batches, finetune recipe and cache, so both tables prune the same
networks). Right after the prune, no training: fxmeta l2 / taylor / activation x none / bias /
lstsq (uniform allocation, the first 8 shared batches as calibration), fxmeta l2 global (prepare's
``fxmeta-l2``), random, and Torch-Pruning 1.6 as real code (magnitude, Taylor, Hessian importance,
global, the classifier left alone); BatchNorm recomputed on the 20 shared batches after every prune
except lstsq (the product's rule, ``fxmeta.pruning.spec.recalibrates``). With training, at equal
total budget (prepare's 5 + 5 epochs): the calibrated default then 10 finetune epochs, beside
prepare's ``prepared`` and ``DepGraph+SL`` cells (the same cached cells ``benchmarks.prepare``
computes, with its hyper-parameters chosen on validation). Writes
``benchmarks/results/calibrated_digits.md``; test accuracy is reported, never used to choose.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from .common import header, mean_se, say, table
from .digits import FINETUNE_KEEP, FULL, QUICK, Bench, cache_key, choose
from .tp_baselines import tp_importance, tp_pruner, tp_to_target

FXMETA = [(imp, comp, "uniform") for imp in ("l2", "taylor", "activation") for comp in ("none", "bias", "lstsq")] \
    + [("l2", "none", "global"), ("random", "none", "uniform")]
TP = ("magnitude", "taylor", "hessian")
CALIB_BATCHES = 8  # fxmeta's --calib-batches default
DEFAULT = ("activation", "lstsq", "uniform")  # the product's default with data (CALIBRATED)


def _label(row: tuple) -> str:
    if row[0] == "tp":
        return f"Torch-Pruning {row[1]}"
    imp, comp, alloc = row
    if imp == "random":
        return "fxmeta random"
    return f"fxmeta {imp} + {comp}" + (", global" if alloc == "global" else "") + \
        (" (default)" if row == DEFAULT else "")


def oneshot_cell(bench: Bench, arch: str, seed: int, row: tuple, target: float) -> dict:
    """Validation / test accuracy right after one prune of the base network (cached)."""
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec, recalibrates
    from fxmeta.training.loop import evaluate, recalibrate_bn

    s = bench.s
    parts = ["oneshot", arch, seed, list(row), target, CALIB_BATCHES, s.bn_batches, s.base_epochs, s.base_lrs,
             s.batch_size, s.image_size, s.tp_steps]
    path = bench.cache / "calibrated" / f"{arch}-s{seed}-{'-'.join(row)}-{target:g}x-{cache_key(parts)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    base = bench.base(arch, seed)
    calibration = bench.calibration[:CALIB_BATCHES]
    t0 = time.perf_counter()
    recal = True
    if row[0] == "tp":
        model = copy.deepcopy(base)
        pruner = tp_pruner(model, bench.example, tp_importance(row[1], model, calibration), s.tp_steps)
        module = tp_to_target(pruner, model, bench.example, target)
        if module is not None:
            module.zero_grad(set_to_none=True)
    else:
        imp, comp, alloc = row
        spec = PruneSpec(target, importance=imp, compensate=comp, allocation=alloc, seed=seed)
        module = fxmeta.prune(base, bench.example, spec=spec, calibration=calibration).module.eval()
        recal = recalibrates(spec)
    seconds = time.perf_counter() - t0
    if module is None:
        cell = {"error": f"Torch-Pruning did not reach {target:g}x in {s.tp_steps} steps"}
    else:
        if recal:
            recalibrate_bn(module, bench.calibration, len(bench.calibration))
        cell = {"val": evaluate(module, bench.loaders.val)["acc"], "test": evaluate(module, bench.loaders.test)["acc"],
                "prune_seconds": round(seconds, 2), "recalibrated": recal}
    cell.update(arch=arch, seed=seed, row=list(row), target=target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))
    return cell


def finetune_cell(bench: Bench, arch: str, seed: int, target: float) -> dict:
    """The calibrated default, then prepare's finetune for its whole budget (pre + finetune epochs)."""
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec
    from fxmeta.training.loop import evaluate, train

    s = bench.s
    epochs = s.pre_epochs + s.finetune_epochs
    parts = ["finetune", arch, seed, target, CALIB_BATCHES, epochs, s.finetune_lrs, s.base_epochs, s.base_lrs,
             s.batch_size, s.image_size, FINETUNE_KEEP]
    path = bench.cache / "calibrated" / f"{arch}-s{seed}-default-ft-{target:g}x-{cache_key(parts)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    spec = PruneSpec(target, importance=DEFAULT[0], compensate=DEFAULT[1], allocation=DEFAULT[2], seed=seed)
    module = fxmeta.prune(bench.base(arch, seed), bench.example, spec=spec,
                          calibration=bench.calibration[:CALIB_BATCHES]).module
    right_after = evaluate(module.eval(), bench.loaders.test)["acc"]
    for p in module.parameters():
        p.requires_grad_(True)
    tuned = train(module, bench.data, bench.train_config(epochs, s.lr_of(s.finetune_lrs, arch), seed,
                                                         keep=FINETUNE_KEEP))
    cell = {"arch": arch, "seed": seed, "target": target, "right_after_test": right_after,
            "finetuned_val": tuned.best_val_acc, "finetuned_test": tuned.test["acc"], "epochs": epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))
    say(f"{arch} s{seed} calibrated {target:g}x: right after {right_after:.4f} -> finetuned {tuned.test['acc']:.4f}")
    return cell


def _pm(values: list[float]) -> str:
    if not values:
        return "—"
    m, se = mean_se(values)
    return f"{100 * m:.1f} ± {100 * se:.1f}"


def write_report(bench: Bench, oneshot: list[dict], tuned: list[dict], prepare_cells: list[dict], seeds: dict,
                 args: argparse.Namespace, out: Path) -> None:
    s = bench.s
    lines = [f"# Calibrated pruning on digits {' / '.join(s.archs)} (beside prepare.md)", "",
             header("python -m benchmarks.calibrated_digits" + (" --quick" if args.quick else "")
                    + (f" --threads {args.threads}" if args.threads != 1 else "")
                    + (f" --archs {args.archs}" if args.archs else ""), args.threads,
                    "; ".join(f"{a} {', '.join(map(str, v))}" for a, v in seeds.items())), "",
             f"Setting: `benchmarks.prepare`'s (scikit-learn digits at {s.image_size}x{s.image_size}, "
             f"{bench.data.description}; its cached base networks, FLOPs targets and {s.bn_batches} shared training "
             f"batches of {s.batch_size}). Calibration: the first {min(CALIB_BATCHES, s.bn_batches)} of those batches. Right after the "
             f"prune: BatchNorm recomputed on the {s.bn_batches} batches, except after lstsq (the product's rule). "
             "Torch-Pruning: `MetaPruner`, global, "
             f"{s.tp_steps} steps until fxmeta's FLOPs count reaches the target, the classifier left alone; Taylor "
             "with the loss gradient summed over the calibration batches, Hessian with squared per-sample gradients "
             "over 256 samples (as in `calibrated.md`). The prepared and DepGraph+SL rows are `benchmarks.prepare`'s "
             "cells (`digits.Bench.cell`, its hyper-parameters chosen on its validation sweep), computed on the same "
             "cache as the rest of this table; `prepare.md` itself was written from an earlier run, so its figures can "
             "differ from these. Every finetune here counts the pruned network as its epoch 0 (the product's rule). "
             "Test accuracy, mean ± SE over seeds, %; nothing here is chosen on test.", ""]
    for arch in s.archs:
        targets = sorted({c["target"] for c in oneshot if c["arch"] == arch})
        unpruned = _pm([bench.base_info(arch, seed)["test_acc"] for seed in seeds[arch]])
        rows = [["unpruned"] + [unpruned] * len(targets)]
        for row in [tuple(r) for r in FXMETA] + [("tp", m) for m in TP]:
            cells = [c for c in oneshot if c["arch"] == arch and tuple(c["row"]) == row]
            rows.append([_label(row)] + [_pm([c["test"] for c in cells if c["target"] == t and "test" in c])
                                         for t in targets])
        lines += [f"## {arch}: right after the prune (no training)", "",
                  table(["method"] + [f"{t:g}x" for t in targets], rows), ""]
        budget = s.pre_epochs + s.finetune_epochs
        ft_rows = [[f"fxmeta calibrated default, then {budget} finetune epochs"]
                   + [f"{_pm([c['right_after_test'] for c in tuned if c['arch'] == arch and c['target'] == t])} → "
                      f"{_pm([c['finetuned_test'] for c in tuned if c['arch'] == arch and c['target'] == t])}"
                      for t in targets]]
        for method in ("prepared", "DepGraph+SL"):
            mine = [c for c in prepare_cells if c["arch"] == arch and c["method"] == method and "error" not in c]
            ft_rows.append([f"{method} ({s.pre_epochs} epochs before the prune, {s.finetune_epochs} after)"]
                           + [f"{_pm([c['recal_test_acc'] for c in mine if c['target'] == t])} → "
                              f"{_pm([c['finetuned_test_acc'] for c in mine if c['target'] == t])}" for t in targets])
        lines += [f"## {arch}: right after → after the finetune, {budget} epochs on the network for every row", "",
                  table(["method"] + [f"{t:g}x" for t in targets], ft_rows), ""]
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    lines += [f"Load average at the end: {load}.", ""]
    out.write_text("\n".join(lines))
    say(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrated_digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="prepare's quick setting (written under the cache folder)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--archs", help="comma-separated subset of the families (the report covers those)")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"),
                   help="benchmarks.prepare's cache folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    if args.archs:
        s = replace(s, archs=tuple(args.archs.split(",")))
    cache = Path(args.cache) / ("quick" if args.quick else "full")
    bench = Bench(s, cache)
    chosen = choose(bench, s.sweep_arch, {})
    oneshot, tuned, prepare_cells, seeds = [], [], [], {}
    for arch in s.archs:
        seeds[arch] = bench.usable_seeds(arch)[0]
        for seed in seeds[arch]:
            for target in s.targets:
                for row in [tuple(r) for r in FXMETA] + [("tp", m) for m in TP]:
                    c = oneshot_cell(bench, arch, seed, row, target)
                    oneshot.append(c)
                    say(f"{arch} s{seed} {_label(row)} {target:g}x: " + (c.get("error") or f"test {c['test']:.4f}"))
                tuned.append(finetune_cell(bench, arch, seed, target))
                for method in ("prepared", "DepGraph+SL"):
                    prepare_cells.append(bench.cell(arch, seed, method, target, chosen[method]))
    out = (cache / "calibrated_digits.md") if args.quick else Path(__file__).parent / "results" / "calibrated_digits.md"
    write_report(bench, oneshot, tuned, prepare_cells, seeds, args, out)


if __name__ == "__main__":
    main()
