"""Calibrated pruning on Fashion-MNIST: importance from data and weight compensation.

    python -m benchmarks.calibrated [--quick] [--stage bases|cells|report|all]

Base networks (ResNet20 and VGG11 in their CIFAR form, one input channel) are trained on
Fashion-MNIST's 54,000 training images (its fixed 6,000 validation images choose the
epoch), cached under ``~/.cache/fxmeta-bench/calibrated``. Every prune is measured right
after the prune + BatchNorm recalibration, with no training, on the validation split (where
every choice is made) and the official 10,000 test images (reported only). Images are
downsampled to 14x14 by default (``--image-size 28`` for the full resolution) to fit the
2-core budget; the report says which was used.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from fxmeta.pruning.spec import CALIBRATED as CALIBRATED_DEFAULTS

from .calibrated_metanet import metanet_cells, metanet_section
from .calibrated_sweep import sweep, sweep_table, sweep_verdict
from .common import cache_dir, cached_cell, header, key, line_plot, mean_se, pct, say, table
from .tp_baselines import ConvFlops, SparsityLearning, tp_importance, tp_pruner, tp_to_target

ARCHS = ("resnet20", "vgg11")
BASE_RECIPE = {"epochs": 8, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "schedule": "cosine"}


def load_splits(image_size: int):
    from fxmeta.training.data import load_data

    return load_data("fashion-mnist", image_size=None if image_size == 28 else image_size)


def base_network(arch: str, seed: int, image_size: int, data: Any) -> tuple[torch.nn.Module, dict]:
    """A trained base network (cached) and its record: recipe, val / test accuracy, seconds."""
    from fxmeta.models import get_model
    from fxmeta.training.data import make_loaders
    from fxmeta.training.loop import TrainConfig, evaluate, train

    folder = cache_dir("calibrated") / "bases"
    folder.mkdir(exist_ok=True)
    stem = folder / f"{arch}-s{seed}-{image_size}px-{key(BASE_RECIPE)}"
    model = get_model(arch, num_classes=10, in_channels=1)
    if Path(f"{stem}.json").is_file():
        model.load_state_dict(torch.load(f"{stem}.pt", weights_only=True))
        return model.eval(), json.loads(Path(f"{stem}.json").read_text())
    say(f"{arch} seed {seed}: training the base network ({BASE_RECIPE}) at {image_size}px")
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=10, in_channels=1)
    config = TrainConfig(epochs=BASE_RECIPE["epochs"], lr=BASE_RECIPE["lr"], batch_size=BASE_RECIPE["batch_size"],
                         weight_decay=BASE_RECIPE["weight_decay"], seed=seed, device="cpu", progress=False)
    t0 = time.perf_counter()
    result = train(model, data, config)
    torch.save(result.model.state_dict(), f"{stem}.pt")
    loaders = make_loaders(data, 512, seed=0)
    record = {"arch": arch, "seed": seed, "image_size": image_size, "recipe": BASE_RECIPE,
              "best_epoch": result.best_epoch, "val_acc": evaluate(result.model, loaders.val)["acc"],
              "test_acc": evaluate(result.model, loaders.test)["acc"], "seconds": time.perf_counter() - t0}
    Path(f"{stem}.json").write_text(json.dumps(record, indent=1))
    say(f"{arch} seed {seed}: val {record['val_acc']:.4f} test {record['test_acc']:.4f} in {record['seconds']:.0f} s")
    return result.model.eval(), record


# ----------------------------------------------------------------------------------- cells

TARGETS = (2.0, 4.0, 8.0)
ALLOC = "uniform"  # fxmeta's rows: the allocation the sweep chose on validation (``--stage sweep``)
IMPORTANCES = ("l2", "taylor", "activation")
COMPENSATIONS = ("none", "bias", "lstsq")
TP_METHODS = ("magnitude", "taylor", "hessian")
CALIB = {"batches": 8, "batch_size": 128}  # what fxmeta's prune reads (its --calib-batches default)
RECAL = {"batches": 20, "batch_size": 128}  # BatchNorm recalibration after every prune (transform's default)
HESSIAN_SAMPLES = 256  # per-sample backward passes for Torch-Pruning's Hessian importance
TP_STEPS = 400  # Torch-Pruning's --iterative-steps default


class Bench:
    """The data, loaders and per-seed batches every cell of one image size shares."""

    def __init__(self, image_size: int) -> None:
        from fxmeta.training.data import make_loaders

        self.image_size = image_size
        self.data = load_splits(image_size)
        self.loaders = make_loaders(self.data, 1000, seed=0)
        self.example = torch.zeros(1, 1, image_size, image_size)
        self.cache = cache_dir("calibrated") / "cells"
        self.cache.mkdir(exist_ok=True)

    def calibration(self, seed: int) -> list:
        from fxmeta.training.data import calibration_set

        return calibration_set(self.data.train, CALIB["batches"], CALIB["batch_size"], seed=seed)

    def recal_batches(self, seed: int) -> list:
        from fxmeta.training.data import calibration_set

        return calibration_set(self.data.train, RECAL["batches"], RECAL["batch_size"], seed=10_000 + seed)

    def score(self, module: torch.nn.Module, seed: int, recalibrate: bool = True) -> dict:
        """Validation and test accuracy (after BatchNorm recalibration on training batches)."""
        from fxmeta.training.loop import evaluate, recalibrate_bn

        out = {}
        if recalibrate:
            out["val_no_recal"] = evaluate(module, self.loaders.val)["acc"]
            out["test_no_recal"] = evaluate(module, self.loaders.test)["acc"]
            recalibrate_bn(module, self.recal_batches(seed), RECAL["batches"])
        out["val"] = evaluate(module, self.loaders.val)["acc"]
        out["test"] = evaluate(module, self.loaders.test)["acc"]
        return out


def fxmeta_cells(bench: Bench, arch: str, seed: int, base: torch.nn.Module) -> list[dict]:
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec

    cells = []
    calibration = bench.calibration(seed)
    rows = [(imp, comp, ALLOC) for imp in IMPORTANCES for comp in COMPENSATIONS] + [
        ("l2", "none", "global"), ("activation", "lstsq", "global"), ("random", "none", ALLOC)]
    for importance, compensate, allocation in rows:
        for target in TARGETS:
            parts = {"arch": arch, "seed": seed, "size": bench.image_size, "family": "fxmeta",
                     "importance": importance, "compensate": compensate, "target": target, "calib": CALIB,
                     "recal": RECAL, **({"allocation": allocation} if allocation != "global" else {})}

            def run(importance=importance, compensate=compensate, target=target, allocation=allocation):
                t0 = time.perf_counter()
                spec = PruneSpec(target, importance=importance, compensate=compensate, seed=seed,
                                 allocation=allocation)
                result = fxmeta.prune(base, bench.example, spec=spec, calibration=calibration)
                prune_s = time.perf_counter() - t0
                return {"speedup": result.speedup, "prune_seconds": round(prune_s, 2),
                        "params_ratio": result.params_ratio, **bench.score(result.module.eval(), seed)}

            cells.append(cached_cell(bench.cache, parts, run))
            c = cells[-1]
            say(f"{arch} s{seed} {importance}+{compensate} {allocation} {target:g}x: val {c['val']:.4f} test {c['test']:.4f} "
                f"(no recal {c['val_no_recal']:.4f}; prune {c['prune_seconds']} s)")
    return cells


def tp_cells(bench: Bench, arch: str, seed: int, base: torch.nn.Module) -> list[dict]:
    """Torch-Pruning (real code): global pruning stepped until each FLOPs target is met, then the same
    BatchNorm recalibration as fxmeta's rows."""
    import copy

    from fxmeta.pruning.flops import count_flops

    cells = []
    calibration = bench.calibration(seed)
    for method in TP_METHODS:
        parts = {"arch": arch, "seed": seed, "size": bench.image_size, "family": "torch-pruning", "importance": method,
                 "compensate": "none", "calib": CALIB, "recal": RECAL, "steps": TP_STEPS,
                 **({"samples": HESSIAN_SAMPLES} if method == "hessian" else {})}
        todo = [t for t in TARGETS if not (bench.cache / f"{key({**parts, 'target': t})}.json").is_file()]
        states: dict[float, tuple] = {}
        if todo:
            t0 = time.perf_counter()
            model = copy.deepcopy(base)
            pruner = tp_pruner(model, bench.example, tp_importance(method, model, calibration, HESSIAN_SAMPLES),
                               TP_STEPS)
            base_flops = count_flops(model, bench.example)
            quick = ConvFlops(model, bench.example)
            pending = sorted(todo)
            while pending and pruner.current_step < pruner.iterative_steps:
                pruner.step()
                if base_flops / max(quick(), 1) >= pending[0]:
                    measured = base_flops / max(count_flops(model, bench.example), 1)
                    while pending and measured >= pending[0]:
                        states[pending.pop(0)] = (copy.deepcopy(model).eval(), time.perf_counter() - t0, measured)
            for t in pending:
                states[t] = (None, time.perf_counter() - t0, base_flops / max(count_flops(model, bench.example), 1))
        for target in TARGETS:
            def run(target=target, states=states):
                module, seconds, measured = states[target]
                if module is None:
                    return {"error": f"Torch-Pruning stopped at {measured:.2f}x after {TP_STEPS} steps"}
                module.zero_grad(set_to_none=True)
                return {"speedup": measured, "prune_seconds": round(seconds, 2), **bench.score(module, seed)}

            cells.append(cached_cell(bench.cache, {**parts, "target": target}, run))
            c = cells[-1]
            say(f"{arch} s{seed} TP {method} {target:g}x: " + (c.get("error") or f"val {c['val']:.4f} test {c['test']:.4f}"))
    return cells


# ------------------------------------------------------------------------------- k epochs

FT = {"epochs": 1, "lr": 0.01, "batch_size": 128, "weight_decay": 5e-4}  # every method's finetune after the prune
SL_REG = 5e-4  # Torch-Pruning's group-sparsity regulariser default (its CIFAR recipe)
FT_TARGETS = (4.0, 8.0)


def _train_config(seed: int, epochs: int):
    from fxmeta.training.loop import TrainConfig

    return TrainConfig(epochs=epochs, lr=FT["lr"], batch_size=FT["batch_size"], weight_decay=FT["weight_decay"],
                       seed=seed, device="cpu", progress=False, keep="best")


def finetuned(bench: Bench, module: torch.nn.Module, seed: int, teacher: torch.nn.Module | None = None) -> dict:
    """``FT`` epochs of plain finetuning (the best validation epoch kept), then val / test accuracy; with a
    ``teacher``, the finetune is on the KL divergence to its outputs instead (``fxmeta transform --distill``)."""
    from fxmeta.training.distill import DistillObjective
    from fxmeta.training.loop import evaluate, train

    objective = DistillObjective(teacher) if teacher is not None else None
    result = train(module, bench.data, _train_config(seed, FT["epochs"]), objective)
    prefix = "kd" if teacher is not None else "ft"
    return {f"{prefix}_val": evaluate(result.model, bench.loaders.val)["acc"],
            f"{prefix}_test": evaluate(result.model, bench.loaders.test)["acc"]}


def best_or_start(c: dict) -> dict:
    """A finetuned cell under ``fxmeta transform``'s rule of keeping, "best-or-start": the pruned network
    itself ("val" / "test") is kept when the finetuned one does not beat it on validation. The cells were
    trained under "best" (of the ``FT`` epochs); the training is the same under either rule, so applying
    it to the recorded validation accuracies gives exactly what training under it would."""
    out = dict(c)
    for prefix in ("ft", "kd"):
        if f"{prefix}_val" in c and "val" in c and not c[f"{prefix}_val"] > c["val"]:
            out[f"{prefix}_val"], out[f"{prefix}_test"], out[f"{prefix}_kept_start"] = c["val"], c["test"], True
    return out


def ft_cells(bench: Bench, arch: str, seed: int, base: torch.nn.Module, tp_best: dict) -> list[dict]:
    """After the prune, ``FT`` epochs of finetuning for every method: fxmeta's data default and l2 (one-shot),
    Torch-Pruning's best importance (chosen on validation), fxmeta prepare (k epochs before the prune)
    and DepGraph+SL (k sparsity-learning epochs before the prune): the same k epochs after the prune for
    all, k more before it for the last two."""
    import copy
    from functools import partial

    import fxmeta
    from fxmeta.pruning.spec import PruneSpec, recalibrates
    from fxmeta.training.loop import evaluate, recalibrate_bn, train

    calibration = bench.calibration(seed)

    def at(target: float) -> list[dict]:
        cells = []
        tp_label = tp_best[(arch, target)]
        common = {"stage": "ft", "arch": arch, "seed": seed, "size": bench.image_size, "target": target, "ft": FT,
                  "calib": CALIB, "recal": RECAL, "calibrated": CALIBRATED_DEFAULTS}

        def one_shot(spec, teacher=None):
            module = fxmeta.prune(base, bench.example, spec=spec, calibration=calibration).module.eval()
            if recalibrates(spec):
                recalibrate_bn(module, bench.recal_batches(seed), RECAL["batches"])
            return {"val": evaluate(module, bench.loaders.val)["acc"], "test": evaluate(module, bench.loaders.test)["acc"],
                    "pre_epochs": 0, **finetuned(bench, module, seed, teacher)}

        rows = {"fxmeta calibrated default": lambda teacher=None: one_shot(PruneSpec(target).resolved(with_data=True),
                                                                           teacher),
                "fxmeta l2 + none (global)": lambda teacher=None: one_shot(PruneSpec(target).resolved(with_data=False),
                                                                           teacher)}

        def prepared(teacher=None):
            model = copy.deepcopy(base)
            fxmeta.prepare(model, bench.example, bench.data, _train_config(seed, FT["epochs"]), [target])
            module = fxmeta.prune(model.eval(), bench.example, speedup=target).module.eval()
            recalibrate_bn(module, bench.recal_batches(seed), RECAL["batches"])
            return {"val": evaluate(module, bench.loaders.val)["acc"], "test": evaluate(module, bench.loaders.test)["acc"],
                    "pre_epochs": FT["epochs"], **finetuned(bench, module, seed, teacher)}

        def sparsity_learning(teacher=None):
            model = copy.deepcopy(base)
            objective = SparsityLearning(model, bench.example, SL_REG, TP_STEPS)
            train(model, bench.data, _train_config(seed, FT["epochs"]), objective)
            module = tp_to_target(objective.pruner, model.eval(), bench.example, target)
            if module is None:
                return {"error": f"Torch-Pruning did not reach {target:g}x"}
            recalibrate_bn(module, bench.recal_batches(seed), RECAL["batches"])
            return {"val": evaluate(module, bench.loaders.val)["acc"], "test": evaluate(module, bench.loaders.test)["acc"],
                    "pre_epochs": FT["epochs"], **finetuned(bench, module, seed, teacher)}

        def tp_row(teacher=None):
            method = tp_label.split()[-1]
            model = copy.deepcopy(base)
            pruner = tp_pruner(model, bench.example, tp_importance(method, model, calibration, HESSIAN_SAMPLES),
                               TP_STEPS)
            module = tp_to_target(pruner, model.eval(), bench.example, target)
            if module is None:
                return {"error": f"Torch-Pruning did not reach {target:g}x"}
            module.zero_grad(set_to_none=True)
            recalibrate_bn(module, bench.recal_batches(seed), RECAL["batches"])
            return {"val": evaluate(module, bench.loaders.val)["acc"], "test": evaluate(module, bench.loaders.test)["acc"],
                    "pre_epochs": 0, **finetuned(bench, module, seed, teacher)}

        rows.update({"fxmeta prepare (l2)": prepared, "DepGraph+SL (Torch-Pruning)": sparsity_learning,
                     f"{tp_label} (best on val)": tp_row})
        for label, run in rows.items():
            cell_key = {**common, "row": label, **({"tp": tp_label} if "best" in label else {}),
                        **({"reg": SL_REG} if "SL" in label else {})}
            c = cached_cell(bench.cache, cell_key, run)
            if "error" not in c:  # the same prune, finetuned by distillation from the base network (a cell of its own)
                kd = cached_cell(bench.cache, {**cell_key, "finetune": "distill"}, partial(run, teacher=base))
                c = best_or_start({**c, **{k: v for k, v in kd.items() if k.startswith("kd_")}})
            cells.append(c)
            say(f"ft {arch} s{seed} {target:g}x {label}: " + (c.get("error") or
                f"pruned test {c['test']:.4f} -> finetuned val {c['ft_val']:.4f} test {c['ft_test']:.4f}, "
                f"by distillation val {c['kd_val']:.4f} test {c['kd_test']:.4f}"))
        return cells

    return [c for target in FT_TARGETS for c in at(target)]


# ----------------------------------------------------------------------------------- sweep

# ---------------------------------------------------------------------------------- report


def _label(c: dict) -> str:
    if c["family"] == "torch-pruning":
        return f"Torch-Pruning {c['importance']}"
    allocation = c.get("allocation", "global")
    return (f"fxmeta {c['importance']}" + ("" if c["importance"] == "random" else f" + {c['compensate']}")
            + ("" if allocation == ALLOC else f", {allocation}"))


def _score(c: dict, split: str, recal: bool | None = None) -> float | None:
    """A cell's accuracy as the product measures it: after BatchNorm recalibration, except after lstsq
    (``fxmeta.pruning.spec.recalibrates``); ``recal`` forces one or the other."""
    if recal is None:
        recal = c.get("compensate") != "lstsq"
    return c.get(split if recal else f"{split}_no_recal")


def _values(cells: list[dict], label: str, arch: str | None, target: float, split: str,
            recal: bool | None = None) -> list[float]:
    return [v for c in cells if _label(c) == label and (arch is None or c["arch"] == arch)
            and c["target"] == target and (v := _score(c, split, recal)) is not None]


def choose(cells: list[dict], archs: list[str]) -> dict:
    """Every choice, on validation accuracy only: fxmeta's data default (the importance + compensation with
    the best mean over families, seeds and targets) and Torch-Pruning's best importance per family and target."""
    fx_labels = sorted({_label(c) for c in cells if c["family"] == "fxmeta" and c["importance"] != "random"})
    ranking = []
    for label in fx_labels:
        vals = [v for a in archs for t in TARGETS for v in _values(cells, label, a, t, "val")]
        ranking.append((sum(vals) / len(vals), label))
    ranking.sort(reverse=True)
    tp_best = {}
    for arch in archs:
        for t in TARGETS:
            options = [(mean_se(_values(cells, f"Torch-Pruning {m}", arch, t, "val"))[0], f"Torch-Pruning {m}")
                       for m in TP_METHODS if _values(cells, f"Torch-Pruning {m}", arch, t, "val")]
            tp_best[(arch, t)] = max(options)[1] if options else None
    return {"ranking": ranking, "default": ranking[0][1], "tp_best": tp_best}


def _ft_section(ft: list[dict], archs: list[str], seeds: list[int]) -> list[str]:
    lines = []
    for arch in sorted({c["arch"] for c in ft}):
        rows = []
        labels = list(dict.fromkeys(c["row"] for c in ft if c["arch"] == arch))
        for label in labels:
            row = [label]
            for t in FT_TARGETS:
                cs = [c for c in ft if c["arch"] == arch and c["row"] == label and c["target"] == t and "ft_test" in c]
                kd = [c["kd_test"] for c in cs if "kd_test" in c]
                row += ([pct([c["test"] for c in cs]), pct([c["ft_test"] for c in cs]), pct(kd) if kd else "—"]
                        if cs else ["—", "—", "—"])
            pre = [c.get("pre_epochs", 0) for c in ft if c["row"] == label]
            row.append(f"{max(pre) if pre else 0} + {FT['epochs']}")
            rows.append(row)
        head = ["method"] + [h for t in FT_TARGETS for h in (f"{t:g}x right after", f"{t:g}x after finetune",
                                                             f"{t:g}x after a distillation finetune")]
        lines += [f"### {arch}", "", table(head + ["epochs before + after the prune"], rows), ""]
        d, sl = "fxmeta calibrated default", "DepGraph+SL (Torch-Pruning)"
        checks = []
        for t in FT_TARGETS:
            def m(label, key, t=t, arch=arch):
                return 100 * mean_se([c[key] for c in ft if c["arch"] == arch and c["row"] == label
                                      and c["target"] == t and key in c])[0]
            for label in (d, "fxmeta prepare (l2)"):
                checks.append(f"{t:g}x {label} vs DepGraph+SL: right after {m(label, 'test') - m(sl, 'test'):+.1f} "
                              f"(target ≥ +20), after the finetune {m(label, 'ft_test') - m(sl, 'ft_test'):+.1f} "
                              f"(target ≥ +0.5); after a distillation finetune {m(label, 'kd_test') - m(sl, 'kd_test'):+.1f}")
        lines += ["- " + c for c in checks] + [""]
    return lines


def write_report(cells: list[dict], bases: dict, ft: list[dict], sweeps: list[dict], meta: list[dict], args,
                 out: Path) -> None:
    import os

    archs, seeds = args.archs, args.seeds
    chosen = choose(cells, archs)
    default = (f"fxmeta {CALIBRATED_DEFAULTS['importance']} + {CALIBRATED_DEFAULTS['compensate']}"
               + ("" if CALIBRATED_DEFAULTS["allocation"] == ALLOC else f", {CALIBRATED_DEFAULTS['allocation']}"))
    lstsq = [label for _, label in chosen["ranking"] if "lstsq" in label]
    recal_rows = [[label, f"{100 * mean_se([v for a in archs for t in TARGETS for v in _values(cells, label, a, t, 'val', False)])[0]:.2f}",
                   f"{100 * mean_se([v for a in archs for t in TARGETS for v in _values(cells, label, a, t, 'val', True)])[0]:.2f}"]
                  for label in lstsq]
    lines = ["# Calibrated pruning on Fashion-MNIST", "",
             header(f"python -m benchmarks.calibrated --image-size {args.image_size} --threads {args.threads}"
                    + (" --quick" if args.quick else ""), args.threads, ",".join(map(str, seeds))), "",
             "## Setup", "",
             "- Data: Fashion-MNIST from Debian's `dataset-fashion-mnist` (`--data fashion-mnist`): a fixed stratified "
             "54,000 / 6,000 train / validation split of the official 60,000 training images, the official 10,000 "
             f"as test. Images bilinearly resized to {args.image_size}x{args.image_size}"
             + (" (to fit the 2-core budget; `--image-size 28` for full resolution)." if args.image_size != 28 else "."),
             f"- Base networks: {', '.join(archs)} (CIFAR-style, one input channel), seeds {seeds}, recipe "
             f"{BASE_RECIPE} (SGD, momentum 0.9, the epoch with the best validation accuracy kept), trained by "
             "this script and cached in `~/.cache/fxmeta-bench/calibrated`.",
             f"- Every prune reads the same calibration set per seed: {CALIB['batches']} batches of "
             f"{CALIB['batch_size']} drawn from the training split with the base seed (`--calib-batches` default). "
             f"After a prune BatchNorm statistics are recomputed on {RECAL['batches']} other training batches of "
             f"{RECAL['batch_size']}, except after lstsq (the product's rule, `fxmeta.pruning.spec.recalibrates`, "
             "justified below); then validation and test accuracy, no training.",
             f"- Torch-Pruning {__import__('torch_pruning').__version__} as real code: `MetaPruner`, global pruning, "
             f"{TP_STEPS} iterative steps until each FLOPs target is met (the last Linear ignored, as fxmeta never "
             "prunes outputs), then the same recalibration; Taylor with the gradient of the loss summed over the "
             f"calibration batches (its recipe), Hessian with squared per-sample gradients over {HESSIAN_SAMPLES} "
             "calibration samples (TP 1.6.1's `accumulate_grad` keeps only the last sample, a key mismatch; its "
             "accumulator is filled here with the sum, its scoring code used as is).",
             "- Every choice is made on the validation split; the test split is reported only.", "",
             "## Base networks", "",
             table(["family", "val", "test", "per seed (test)"],
                   [[a, pct([bases[(a, s)]["val_acc"] for s in seeds]), pct([bases[(a, s)]["test_acc"] for s in seeds]),
                     " / ".join(f"{100 * bases[(a, s)]['test_acc']:.1f}" for s in seeds)] for a in archs]), "",
             "## The choices (validation only)", ""]
    if sweeps:
        lines += [f"**lstsq's settings** at 4x on {', '.join(sorted({c['arch'] for c in sweeps}))} seeds "
                  f"{sorted({c['seed'] for c in sweeps})} (mean validation accuracy, %); the allocation fxmeta's rows "
                  f"use ({ALLOC}) and the library's defaults come from here:", "", sweep_table(sweeps), "",
                  sweep_verdict(sweeps, ALLOC, CALIB["batches"]), ""]
    lines += ["**Recalibration after lstsq** (mean validation accuracy over families, seeds and targets, %):", "",
              table(["setting", "stored BN statistics", "BN recalibrated"], recal_rows), "",
              "**fxmeta's data default**: mean validation accuracy over families, seeds and the 2/4/8x targets, "
              "right after the prune (recalibrated unless lstsq):", "",
              table(["fxmeta setting", "mean val"], [[label, f"{100 * v:.2f}"] for v, label in chosen["ranking"]]), "",
              f"→ best on validation: **{chosen['default']}**; the library's data default (`CALIBRATED` in "
              f"`fxmeta/pruning/spec.py`) is **{default}** "
              + ("(the same)." if chosen["default"] == default else "(**not** the validation choice).")]
    lines.append("")
    for arch in archs:
        base_test = [bases[(arch, s)]["test_acc"] for s in seeds]
        head = ["method"] + [f"{t:g}x test" for t in TARGETS] + ["prune s (4x)"]
        labels = ([f"fxmeta {i} + {c}" for i in IMPORTANCES for c in COMPENSATIONS]
                  + ["fxmeta l2 + none, global", "fxmeta activation + lstsq, global", "fxmeta random"]
                  + [f"Torch-Pruning {m}" for m in TP_METHODS])
        rows = [["unpruned"] + [pct(base_test)] * len(TARGETS) + ["—"]]
        for label in labels:
            secs = [c.get("prune_seconds") for c in cells if _label(c) == label and c["arch"] == arch
                    and c["target"] == 4.0 and "prune_seconds" in c]
            row = [label + (" (default)" if label == default else "")]
            for t in TARGETS:
                vals = _values(cells, label, arch, t, "test")
                row.append(pct(vals) + (" ★" if chosen["tp_best"].get((arch, t)) == label else "") if vals else "—")
            row.append(f"{sum(secs) / len(secs):.1f}" if secs else "—")
            rows.append(row)
        lines += [f"## {arch}: test accuracy right after the prune (no training)", "",
                  f"Mean ± SE over seeds {seeds}, %. fxmeta rows use the `{ALLOC}` allocation unless they say "
                  "`global`. ★: Torch-Pruning's best importance at that target, chosen on validation. Prune "
                  "seconds include calibration and compensation (one thread, other work on the machine).", "",
                  table(head, rows), ""]
        checks = []
        for t, limit in ((2.0, 2.0), (4.0, 8.0)):
            gap = 100 * (mean_se(base_test)[0] - mean_se(_values(cells, default, arch, t, "test"))[0])
            checks.append(f"{t:g}x: {gap:.1f} points below the unpruned network (target ≤ {limit:g}: "
                          f"{'met' if gap <= limit else 'missed'})")
        tp = chosen["tp_best"].get((arch, 4.0))
        if tp:
            edge = 100 * (mean_se(_values(cells, default, arch, 4.0, "test"))[0]
                          - mean_se(_values(cells, tp, arch, 4.0, "test"))[0])
            checks.append(f"4x vs {tp}: {edge:+.1f} points (target ≥ +30: {'met' if edge >= 30 else 'missed'})")
        lines += [f"The default on {arch}: " + "; ".join(checks) + ".", ""]
    if ft:
        lines += [f"## {FT['epochs']} epoch(s) of training on the network", "",
                  f"Every method: after the prune, {FT['epochs']} epoch(s) of finetuning ({FT}; SGD, cosine, the best "
                  "validation epoch kept, or the pruned network itself where no epoch beats it: `fxmeta transform`'s "
                  f"rule; it kept {sum(c.get('ft_kept_start', False) for c in ft)} of {len(ft)} pruned networks as "
                  f"they were, {sum(c.get('kd_kept_start', False) for c in ft)} under distillation); fxmeta prepare "
                  "and DepGraph+SL also train "
                  f"{FT['epochs']} epoch(s) before the prune (prepare: the prunability objective, weight 1; SL: "
                  f"Torch-Pruning's `GroupNormPruner.regularize`, reg {SL_REG:g}, its default; neither tuned here). "
                  "*After a distillation finetune*: the same pruned network, finetuned the same way on the KL "
                  "divergence to the base network's outputs instead of the labels (`fxmeta transform --distill`, "
                  "temperature 1). Test accuracy, mean ± SE, %.", ""]
        lines += _ft_section(ft, archs, seeds)
    if meta:
        def ft_values(row: str) -> Any:
            return lambda a, t, k: [c[k] for c in ft if c["arch"] == a and c["row"] == row and c["target"] == t and k in c]
        lines += metanet_section(meta, {f"{default} (default)": lambda a, t, k: _values(cells, default, a, t, "test")
                                        if k == "test" else ft_values("fxmeta calibrated default")(a, t, k),
                                        "DepGraph+SL (Torch-Pruning)": ft_values("DepGraph+SL (Torch-Pruning)")},
                                 TARGETS, FT_TARGETS, FT["epochs"])
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"cells": cells, "ft": ft, "sweep": sweeps, "metanet": meta,
                                                    "bases": {f"{a}-{s}": b for (a, s), b in bases.items()},
                                                    "choice": {"ranking": chosen["ranking"],
                                                               "default": chosen["default"]}}, indent=1))
    write_plot(cells, bases, archs, seeds, chosen, out.with_suffix(".png"))
    say(f"wrote {out} (load {os.getloadavg()[0]:.1f})")


def write_plot(cells, bases, archs, seeds, chosen, path: Path) -> None:
    labels = [chosen["default"], "fxmeta l2 + none, global", "fxmeta random"] + [f"Torch-Pruning {m}" for m in TP_METHODS]
    panels = {f"Fashion-MNIST {arch}": {label: [(t, 100 * mean_se(_values(cells, label, arch, t, "test"))[0])
                                                for t in TARGETS if _values(cells, label, arch, t, "test")]
                                        for label in dict.fromkeys(labels)} for arch in archs}
    line_plot(path, panels, {f"Fashion-MNIST {a}": 100 * mean_se([bases[(a, s)]["test_acc"] for s in seeds])[0]
                             for a in archs}, "FLOPs speed-up", "test accuracy after the prune (%)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("bases", "sweep", "cells", "ft", "report", "all"))
    p.add_argument("--quick", action="store_true", help="one seed, ResNet20 only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--image-size", type=int, default=14, choices=(14, 28))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ft-archs", nargs="+", default=["resnet20"], choices=ARCHS,
                   help="families that get the k-epoch comparison (default: resnet20)")
    p.add_argument("--sweep-archs", nargs="+", default=["resnet20"], choices=ARCHS)
    p.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.archs = args.seeds[:1], ["resnet20"]
    data = load_splits(args.image_size)
    for arch in args.archs:
        for seed in args.seeds:
            base_network(arch, seed, args.image_size, data)
    if args.stage == "bases":
        return
    bench = Bench(args.image_size)
    if args.stage == "sweep":
        bases = {(a, s): base_network(a, s, args.image_size, bench.data)[0] for a in args.archs for s in args.seeds}
        for arch in args.archs:
            sweep(bench, arch, args.seeds, bases, CALIB, RECAL)
        return
    cells, bases = [], {}
    for arch in args.archs:
        for seed in args.seeds:
            base, bases[(arch, seed)] = base_network(arch, seed, args.image_size, bench.data)
            cells += fxmeta_cells(bench, arch, seed, base)
            cells += tp_cells(bench, arch, seed, base)
    if args.stage == "cells":
        return
    chosen = choose(cells, args.archs)
    ft = []
    if args.stage in ("ft", "all", "report"):
        for arch in [a for a in args.archs if a in args.ft_archs]:
            for seed in args.seeds:
                ft += ft_cells(bench, arch, seed, base_network(arch, seed, args.image_size, bench.data)[0],
                               chosen["tp_best"])
    meta = [best_or_start(c) for arch in args.archs for seed in args.seeds if args.stage in ("ft", "all", "report")
            for c in metanet_cells(bench, arch, seed, base_network(arch, seed, args.image_size, bench.data)[0], TARGETS,
                                   FT_TARGETS if arch in args.ft_archs else (), {"calib": CALIB, "recal": RECAL, "ft": FT},
                                   finetuned)]
    if args.stage == "ft":
        return
    sweeps = []
    for arch in [a for a in args.archs if a in args.sweep_archs]:
        sweeps += sweep(bench, arch, [s for s in args.seeds if s in args.sweep_seeds],
                        {(arch, s): base_network(arch, s, args.image_size, bench.data)[0] for s in args.seeds
                         if s in args.sweep_seeds}, CALIB, RECAL)
    name = "calibrated_quick.md" if args.quick else "calibrated.md"
    write_report(cells, bases, ft, sweeps, meta, args, Path(__file__).parent / "results" / name)


if __name__ == "__main__":
    main()
