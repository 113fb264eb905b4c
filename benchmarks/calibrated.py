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

from .common import cache_dir, header, key, mean_se, pct, table

ARCHS = ("resnet20", "vgg11")
BASE_RECIPE = {"epochs": 8, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "schedule": "cosine"}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


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


def cached_cell(bench: Bench, parts: dict, run) -> dict:
    path = bench.cache / f"{key(parts)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    cell = {**parts, **run(), "seconds": round(time.perf_counter() - t0, 2)}
    path.write_text(json.dumps(cell))
    return cell


def fxmeta_cells(bench: Bench, arch: str, seed: int, base: torch.nn.Module) -> list[dict]:
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec

    cells = []
    calibration = bench.calibration(seed)
    rows = [(imp, comp) for imp in IMPORTANCES for comp in COMPENSATIONS] + [("random", "none")]
    for importance, compensate in rows:
        for target in TARGETS:
            parts = {"arch": arch, "seed": seed, "size": bench.image_size, "family": "fxmeta",
                     "importance": importance, "compensate": compensate, "target": target, "calib": CALIB,
                     "recal": RECAL}

            def run(importance=importance, compensate=compensate, target=target):
                t0 = time.perf_counter()
                spec = PruneSpec(target, importance=importance, compensate=compensate, seed=seed)
                result = fxmeta.prune(base, bench.example, spec=spec, calibration=calibration)
                prune_s = time.perf_counter() - t0
                return {"speedup": result.speedup, "prune_seconds": round(prune_s, 2),
                        "params_ratio": result.params_ratio, **bench.score(result.module.eval(), seed)}

            cells.append(cached_cell(bench, parts, run))
            c = cells[-1]
            say(f"{arch} s{seed} {importance}+{compensate} {target:g}x: val {c['val']:.4f} test {c['test']:.4f} "
                f"(no recal {c['val_no_recal']:.4f}; prune {c['prune_seconds']} s)")
    return cells


class _ConvFlops:
    """2 x multiply-adds of the conv and linear layers from their current widths (FlopCounterMode's count),
    cheap enough to call after every Torch-Pruning step; confirmed by fxmeta's counter at each target."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        import math

        self.model, self.spatial, self.math = model, {}, math
        hooks = [m.register_forward_hook(self._record(n)) for n, m in model.named_modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        with torch.no_grad():
            model.eval()(example)
        for h in hooks:
            h.remove()

    def _record(self, name: str):
        def hook(module, inputs, output):
            self.spatial[name] = self.math.prod(output.shape[2:]) * output.shape[0]
        return hook

    def __call__(self) -> int:
        total = 0
        for name, m in self.model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                total += 2 * m.out_channels * (m.in_channels // m.groups) * self.math.prod(m.kernel_size) \
                    * self.spatial[name]
            elif isinstance(m, torch.nn.Linear):
                total += 2 * m.in_features * m.out_features * self.spatial[name]
        return total


def _tp_importance(method: str, model: torch.nn.Module, calibration: list) -> object:
    """Torch-Pruning's importance object, with the gradients it reads already on the model."""
    import torch.nn.functional as F
    import torch_pruning as tp

    if method == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    model.eval()
    model.zero_grad()
    if method == "taylor":  # TP's recipe: loss.backward() on calibration data, then prune
        for x, y in calibration:
            F.cross_entropy(model(x), y).backward()
        return tp.importance.GroupTaylorImportance()
    imp = tp.importance.GroupHessianImportance()
    # TP 1.6.1's accumulate_grad tests `name not in` a dict keyed by parameters, so it keeps only the
    # last sample's squared gradient; its scoring code is used as is, with the accumulator filled here
    # with the sum over the samples.
    xs = torch.cat([x for x, _ in calibration])[:HESSIAN_SAMPLES]
    ys = torch.cat([y for _, y in calibration])[:HESSIAN_SAMPLES]
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    for i in range(len(xs)):
        grads = torch.autograd.grad(F.cross_entropy(model(xs[i:i + 1]), ys[i:i + 1]), params)
        for acc, g in zip(sums, grads):
            acc += g.pow(2)
    for p, acc in zip(params, sums):
        imp._accu_grad[p] = acc
        imp._counter[p] = len(xs)
        p.grad = acc.clone() / len(xs)
    return imp


def tp_cells(bench: Bench, arch: str, seed: int, base: torch.nn.Module) -> list[dict]:
    """Torch-Pruning (real code): global pruning stepped until each FLOPs target is met, then the same
    BatchNorm recalibration as fxmeta's rows."""
    import copy

    import torch_pruning as tp

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
            importance = _tp_importance(method, model, calibration)
            ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 10]
            pruner = tp.pruner.MetaPruner(model, bench.example, importance=importance, global_pruning=True,
                                          iterative_steps=TP_STEPS, pruning_ratio=1.0, max_pruning_ratio=1.0,
                                          ignored_layers=ignored)
            base_flops = count_flops(model, bench.example)
            quick = _ConvFlops(model, bench.example)
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

            cells.append(cached_cell(bench, {**parts, "target": target}, run))
            c = cells[-1]
            say(f"{arch} s{seed} TP {method} {target:g}x: " + (c.get("error") or f"val {c['val']:.4f} test {c['test']:.4f}"))
    return cells


# ----------------------------------------------------------------------------------- sweep

SWEEP = {"importance": ("l2", "activation"), "ridge": (1e-4, 1e-3, 1e-2, 1e-1), "calib_batches": (8, 32),
         "allocation": ("global", "uniform")}


def sweep(bench: Bench, arch: str, seeds: list[int], bases: dict, target: float = 4.0) -> list[dict]:
    """lstsq's settings on the validation split only (test is never read): ridge, calibration batches and
    the allocation, for l2 and activation importance, at ``target``."""
    import itertools

    import fxmeta
    from fxmeta.pruning.spec import PruneSpec
    from fxmeta.training.data import calibration_set
    from fxmeta.training.loop import evaluate, recalibrate_bn

    out = []
    for seed in seeds:
        base = bases[(arch, seed)]
        for importance, ridge, batches, allocation in itertools.product(*SWEEP.values()):
            parts = {"stage": "sweep", "arch": arch, "seed": seed, "size": bench.image_size, "importance": importance,
                     "ridge": ridge, "calib_batches": batches, "allocation": allocation, "target": target}

            def run(importance=importance, ridge=ridge, batches=batches, allocation=allocation, seed=seed,
                    base=base):
                calibration = calibration_set(bench.data.train, batches, CALIB["batch_size"], seed=seed)
                spec = PruneSpec(target, importance=importance, compensate="lstsq", ridge=ridge, allocation=allocation)
                module = fxmeta.prune(base, bench.example, spec=spec, calibration=calibration).module.eval()
                no_recal = evaluate(module, bench.loaders.val)["acc"]
                recalibrate_bn(module, bench.recal_batches(seed), RECAL["batches"])
                return {"val_no_recal": no_recal, "val": evaluate(module, bench.loaders.val)["acc"]}

            out.append(cached_cell(bench, parts, run))
            c = out[-1]
            say(f"sweep {arch} s{seed} {importance} ridge {ridge:g} batches {batches} {allocation}: "
                f"val {c['val']:.4f} (no recal {c['val_no_recal']:.4f})")
    return out


# ---------------------------------------------------------------------------------- report


def _label(c: dict) -> str:
    if c["family"] == "torch-pruning":
        return f"Torch-Pruning {c['importance']}"
    return f"fxmeta {c['importance']}" + ("" if c["importance"] == "random" else f" + {c['compensate']}")


def _values(cells: list[dict], label: str, arch: str | None, target: float, split: str) -> list[float]:
    return [c[split] for c in cells if _label(c) == label and (arch is None or c["arch"] == arch)
            and c["target"] == target and split in c]


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


def write_report(cells: list[dict], bases: dict, archs: list[str], seeds: list[int], args, out: Path) -> None:
    import os

    from fxmeta.pruning.spec import CALIBRATED

    chosen = choose(cells, archs)
    lines = ["# Calibrated pruning on Fashion-MNIST", "",
             header(f"python -m benchmarks.calibrated --image-size {args.image_size} --threads {args.threads}"
                    + (" --quick" if args.quick else ""), args.threads, ",".join(map(str, seeds))), "",
             "## Setup", "",
             f"- Data: Fashion-MNIST from Debian's `dataset-fashion-mnist` (`--data fashion-mnist`): a fixed stratified "
             f"54,000 / 6,000 train / validation split of the official 60,000 training images, the official 10,000 "
             f"as test. Images bilinearly resized to {args.image_size}x{args.image_size}"
             + (" (to fit the 2-core budget; `--image-size 28` for full resolution)." if args.image_size != 28 else "."),
             f"- Base networks: {', '.join(archs)} (CIFAR-style, one input channel), seeds {seeds}, recipe "
             f"{BASE_RECIPE} (SGD, momentum 0.9, the epoch with the best validation accuracy kept), trained by "
             "this script and cached in `~/.cache/fxmeta-bench/calibrated`.",
             f"- Every prune reads the same calibration set per seed: {CALIB['batches']} batches of "
             f"{CALIB['batch_size']} drawn from the training split with the base seed (`--calib-batches` default). "
             f"After every prune, of every method, BatchNorm statistics are recomputed on {RECAL['batches']} other "
             f"training batches of {RECAL['batch_size']}; then validation and test accuracy, no training at all.",
             f"- Torch-Pruning {__import__('torch_pruning').__version__} as real code: `MetaPruner`, global pruning, "
             f"{TP_STEPS} iterative steps until each FLOPs target is met (the last Linear ignored, as fxmeta never "
             "prunes outputs); Taylor with the gradient of the loss summed over the calibration batches (its "
             f"recipe), Hessian with squared per-sample gradients over {HESSIAN_SAMPLES} calibration samples "
             "(TP 1.6.1's `accumulate_grad` keeps only the last sample, a key mismatch; its accumulator is filled "
             "here with the sum, its scoring code used as is).",
             "- Every choice is made on the validation split; the test split is reported only.", "",
             "## Base networks", "",
             table(["family", "val", "test", "per seed (test)"],
                   [[a, pct([bases[(a, s)]["val_acc"] for s in seeds]), pct([bases[(a, s)]["test_acc"] for s in seeds]),
                     " / ".join(f"{100 * bases[(a, s)]['test_acc']:.1f}" for s in seeds)] for a in archs]), "",
             "## The choice (validation)", "",
             "Mean validation accuracy over families, seeds and the 2/4/8x targets, right after prune + "
             "recalibration:", "",
             table(["fxmeta setting", "mean val"], [[label, f"{100 * v:.2f}"] for v, label in chosen["ranking"]]), "",
             f"→ **{chosen['default']}** is the best on validation; the library's data default is "
             f"`{CALIBRATED['importance']} + {CALIBRATED['compensate']}` "
             + ("(the same)." if chosen["default"] == f"fxmeta {CALIBRATED['importance']} + {CALIBRATED['compensate']}"
                else "(**not** the validation choice: see below)."), ""]
    for arch in archs:
        base_test = [bases[(arch, s)]["test_acc"] for s in seeds]
        head = ["method"] + [f"{t:g}x test" for t in TARGETS] + ["prune s (4x)"]
        labels = ([f"fxmeta {i} + {c}" for i in IMPORTANCES for c in COMPENSATIONS] + ["fxmeta random"]
                  + [f"Torch-Pruning {m}" for m in TP_METHODS])
        rows = [["unpruned"] + [pct(base_test)] * len(TARGETS) + ["—"]]
        for label in labels:
            secs = [c.get("prune_seconds") for c in cells if _label(c) == label and c["arch"] == arch
                    and c["target"] == 4.0 and "prune_seconds" in c]
            mark = " (default)" if label == chosen["default"] else ""
            row = [label + mark]
            for t in TARGETS:
                vals = _values(cells, label, arch, t, "test")
                best = chosen["tp_best"].get((arch, t)) == label
                row.append(pct(vals) + (" ★" if best else "") if vals else "—")
            row.append(f"{sum(secs) / len(secs):.1f}" if secs else "—")
            rows.append(row)
        lines += [f"## {arch}: test accuracy right after the prune + recalibration (no training)", "",
                  f"Mean ± SE over seeds {seeds}, %. ★: Torch-Pruning's best importance at that target, chosen on "
                  "validation.", "", table(head, rows), ""]
        d = chosen["default"]
        checks = []
        for t, limit in ((2.0, 2.0), (4.0, 8.0)):
            gap = 100 * (mean_se(base_test)[0] - mean_se(_values(cells, d, arch, t, "test"))[0])
            checks.append(f"{t:g}x: {gap:.1f} points below the unpruned network (target ≤ {limit:g}: "
                          f"{'met' if gap <= limit else 'missed'})")
        tp = chosen["tp_best"].get((arch, 4.0))
        if tp:
            edge = 100 * (mean_se(_values(cells, d, arch, 4.0, "test"))[0] - mean_se(_values(cells, tp, arch, 4.0,
                                                                                              "test"))[0])
            checks.append(f"4x vs {tp} (+ the same recalibration): {edge:+.1f} points (target ≥ +30: "
                          f"{'met' if edge >= 30 else 'missed'})")
        lines += [f"{d} on {arch}: " + "; ".join(checks) + ".", ""]
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"cells": cells, "bases": {f"{a}-{s}": b for (a, s), b in
                                                                               bases.items()},
                                                    "choice": {"ranking": chosen["ranking"],
                                                               "default": chosen["default"]}}, indent=1))
    write_plot(cells, bases, archs, seeds, chosen, out.with_suffix(".png"))
    say(f"wrote {out} (load {os.getloadavg()[0]:.1f})")


def write_plot(cells, bases, archs, seeds, chosen, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        labels = [chosen["default"], "fxmeta l2 + none", "fxmeta random"] + [f"Torch-Pruning {m}" for m in TP_METHODS]
        for label in dict.fromkeys(labels):
            pts = [(t, 100 * mean_se(_values(cells, label, arch, t, "test"))[0]) for t in TARGETS
                   if _values(cells, label, arch, t, "test")]
            if pts:
                ax.plot(*zip(*pts), "o-", label=label)
        ax.axhline(100 * mean_se([bases[(arch, s)]["test_acc"] for s in seeds])[0], color="k", ls=":", label="unpruned")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("FLOPs speed-up")
        ax.set_ylabel("test accuracy after prune + recal (%)")
        ax.set_title(f"Fashion-MNIST {arch}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("bases", "sweep", "cells", "report", "all"))
    p.add_argument("--quick", action="store_true", help="one seed, ResNet20 only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--image-size", type=int, default=14, choices=(14, 28))
    p.add_argument("--threads", type=int, default=1)
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
            sweep(bench, arch, args.seeds, bases)
        return
    cells, bases = [], {}
    for arch in args.archs:
        for seed in args.seeds:
            base, bases[(arch, seed)] = base_network(arch, seed, args.image_size, bench.data)
            cells += fxmeta_cells(bench, arch, seed, base)
            cells += tp_cells(bench, arch, seed, base)
    if args.stage == "cells":
        return
    name = "calibrated_quick.md" if args.quick else "calibrated.md"
    write_report(cells, bases, args.archs, args.seeds, args, Path(__file__).parent / "results" / name)


if __name__ == "__main__":
    main()
