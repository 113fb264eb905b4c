"""Prepare for pruning against DepGraph+SL, fxmeta l2 and random, at an equal epoch budget.

ResNet20 / ResNet56 (``fxmeta.models``, 1 input channel) on scikit-learn's digits at
16x16 (one fixed train / val / test split). Every base network (one per seed) gets the
same number of training epochs after its base training, split in two stages:

1. ``pre_epochs`` epochs of the method's own stage:
   - ``prepared``: ``fxmeta.prepare`` at the target (the prunability objective);
   - ``DepGraph+SL``: Torch-Pruning's group-norm sparsity learning (``GroupNormPruner``
     ``regularize`` after every backward, SGD without weight decay, lr x0.1 at 60 / 80 %,
     best validation epoch), then its own pruning: GroupMagnitudeImportance(p=2,
     normalizer="max"), global, 400 iterative steps until fxmeta's FLOPs count reaches the
     target;
   - ``fxmeta-l2`` and ``random``: plain training epochs (same lr as the prepare stage),
     then fxmeta's prune with l2 / random importance;
   - ``metanet + prepared``: the committed conditioned metanetwork
     (``fxmeta/assets/metanet_digits.pt``, meta-trained on a zoo of other seeds; it takes the
     masked-loss gradient on the first 2 of the shared calibration batches, once per rewrite:
     three times for the committed learned optimiser), then
     ``fxmeta.prepare`` on its output, pruned to the channels the metanetwork was told;
   - ``metanet``: the metanetwork's output alone, pruned the same way: 0 epochs here, so
     its finetune gets ``pre_epochs + finetune_epochs`` epochs (the same total).
2. prune to the target, recompute BatchNorm statistics on the same ``bn_batches``
   training batches for every method, then ``finetune_epochs`` epochs of finetuning
   (``fxmeta.train``, best validation epoch).

Reported per (arch, method, target): test accuracy right after pruning + recalibration,
and after the finetune (mean ± std over seeds), the paired difference prepared −
DepGraph+SL with its standard error, and wall time per stage. Hyper-parameters (the
prepare weight, lr and mask schedule; the SL strength) are chosen on the validation split
of a network of its own (``sweep_seed``, not one of the compared seeds), scored by
validation accuracy right after a prune + recalibration; the finetune lr per family is
the one quality.py chose on validation.

    python -m benchmarks.prepare            # full run; resumable (cells are cached)
    python -m benchmarks.prepare --quick    # spot check, a few minutes

Results: ``benchmarks/results/prepare.{md,json,png}``; caches under
``~/.cache/fxmeta-bench/prepare`` (``--cache``).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks._env import versions as _versions

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("prepared", "DepGraph+SL", "fxmeta-l2", "random", "metanet + prepared", "metanet")
PAIRS = (("prepared", "DepGraph+SL"), ("metanet + prepared", "prepared"), ("metanet + prepared", "DepGraph+SL"),
         ("metanet", "fxmeta-l2"), ("metanet", "DepGraph+SL"))
METANET = Path(__file__).resolve().parent.parent / "fxmeta" / "assets" / "metanet_digits.pt"


@dataclass(frozen=True)
class Settings:
    archs: tuple[str, ...] = ("resnet20", "resnet56")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    targets: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    image_size: int = 16
    data: str = "digits"  # or "mnist5k" (benchmarks.prunability --data mnist5k)
    base_epochs: int = 20
    base_lrs: tuple[tuple[str, float], ...] = (("resnet20", 0.1), ("resnet56", 0.05))  # as quality.py
    batch_size: int = 128
    pre_epochs: int = 5
    finetune_epochs: int = 5
    finetune_lrs: tuple[tuple[str, float], ...] = (("resnet20", 0.05), ("resnet56", 0.01))  # quality.py, on val
    bn_batches: int = 20
    sweep_seed: int = 100
    # a base network whose training failed (validation accuracy below this) is no network to prune:
    # it is replaced by the next spare seed, decided on validation accuracy only
    min_base_val: float = 0.9
    spare_seeds: tuple[int, ...] = (5, 6, 7)
    sweep_arch: str = "resnet20"  # the choices made on it serve every family
    sweep_targets: tuple[float, ...] = (4.0, 8.0)
    # (weight, lr, mask_every): the prepare grid; weight 1 / lr 0.01 / once per epoch first
    prepare_grid: tuple[tuple[float, float, int], ...] = (
        (1.0, 0.01, 0), (0.5, 0.01, 0), (2.0, 0.01, 0), (1.0, 0.05, 0), (1.0, 0.01, 4))
    sl_lr: float = 0.01
    sl_regs: tuple[float, ...] = (5e-4, 5e-3, 5e-2)
    tp_steps: int = 400
    # the metanetwork rows (the ResNet20 metanetwork, transferred to ResNet56 at two targets: its cells
    # cost ~2.5 min each there)
    metanet_targets: tuple[tuple[str, tuple[float, ...]], ...] = (("resnet20", (2.0, 4.0, 8.0, 16.0)),
                                                                  ("resnet56", (4.0, 8.0)))

    def runs(self, arch: str, method: str, target: float) -> bool:
        return not method.startswith("metanet") or target in dict(self.metanet_targets).get(arch, ())

    def lr_of(self, table: tuple, arch: str) -> float:
        return dict(table)[arch]


FULL = Settings()
QUICK = Settings(archs=("resnet20",), seeds=(0, 1), targets=(4.0, 8.0), base_epochs=4, pre_epochs=2,
                 finetune_epochs=1, prepare_grid=((1.0, 0.01, 0), (2.0, 0.01, 0)), sl_regs=(5e-3,),
                 sweep_targets=(4.0,), bn_batches=5, metanet_targets=(("resnet20", (4.0,)),))


def _rewrites() -> str:
    """How the committed metanetwork rewrites (from its config)."""
    from fxmeta.metanet import load_metanet

    config = load_metanet(str(METANET)).config
    head = f", a gradient-step head (start lr {config.step_lr:g})" if config.step_lr else ""
    return f"{config.steps} rewrite{'s' if config.steps > 1 else ''} per use{head}"


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:10]


def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Bench:
    """Data, caches and the shared pieces of every cell."""

    def __init__(self, s: Settings, cache: Path) -> None:
        from fxmeta.training.data import load_data, make_loaders

        self.s = s
        self.cache = cache
        self.data = load_data(s.data, seed=0, image_size=s.image_size)
        self.example = torch.zeros(1, *self.data.input_shape)
        self.loaders = make_loaders(self.data, s.batch_size, seed=0)
        # the same calibration batches for every method and cell
        gen = torch.Generator().manual_seed(12345)
        loader = torch.utils.data.DataLoader(self.data.train, batch_size=s.batch_size, shuffle=True, generator=gen)
        self.calibration = [batch for _, batch in zip(range(s.bn_batches), loader)]

    def train_config(self, epochs: int, lr: float, seed: int, **kw: Any):
        from fxmeta.training.loop import TrainConfig

        return TrainConfig(epochs=epochs, lr=lr, batch_size=self.s.batch_size, seed=seed, device="cpu",
                           progress=False, **kw)

    def cached_model(self, name: str, parts: Any, build) -> tuple[torch.nn.Module, dict]:
        """A trained network and its info, from the cache or ``build() -> (model, info)``."""
        path = self.cache / "models" / f"{name}-{_key(parts)}.pt"
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            model, info = build(only_architecture=True)
            model.load_state_dict(state)
            return model.eval(), json.loads(meta.read_text())
        model, info = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        meta.write_text(json.dumps(info))
        return model.eval(), info

    def base(self, arch: str, seed: int) -> torch.nn.Module:
        from fxmeta.models import get_model
        from fxmeta.training.loop import train

        s = self.s

        def build(only_architecture: bool = False):
            torch.manual_seed(seed)
            model = get_model(arch, num_classes=10, in_channels=1)
            if only_architecture:
                return model, {}
            t0 = time.perf_counter()
            result = train(model, self.data, self.train_config(s.base_epochs, s.lr_of(s.base_lrs, arch), seed))
            info = {"val_acc": result.best_val_acc, "test_acc": result.test["acc"],
                    "seconds": time.perf_counter() - t0}
            say(f"{arch} seed {seed}: base val {info['val_acc']:.4f} test {info['test_acc']:.4f} "
                f"({info['seconds']:.0f} s)")
            return result.model.cpu(), info

        parts = [arch, seed, s.base_epochs, s.base_lrs, s.batch_size, s.image_size]
        model, _ = self.cached_model(f"base-{arch}-s{seed}", parts + ([s.data] if s.data != "digits" else []), build)
        return model

    def usable_seeds(self, arch: str) -> tuple[list[int], dict[int, float]]:
        """``s.seeds`` with every base network below ``min_base_val`` replaced by a spare seed."""
        from fxmeta.errors import FxmetaError

        used, rejected = [], {}
        spares = [sd for sd in self.s.spare_seeds if sd not in self.s.seeds]
        for seed in self.s.seeds:
            while True:
                try:
                    self.base(arch, seed)
                    val = self.base_info(arch, seed)["val_acc"]
                except FxmetaError as exc:  # e.g. training diverged
                    say(f"{arch} seed {seed}: base training failed: {exc}")
                    val = 0.0
                if val >= self.s.min_base_val:
                    used.append(seed)
                    break
                rejected[seed] = val
                if not spares:
                    raise SystemExit(f"{arch}: base network seed {seed} reached only {val:.3f} val acc and no "
                                     "spare seed is left")
                seed = spares.pop(0)
        return used, rejected

    def base_info(self, arch: str, seed: int) -> dict:
        path = next((self.cache / "models").glob(f"base-{arch}-s{seed}-*.json"))
        return json.loads(path.read_text())

    # ------------------------------------------------------------------ pre-stages

    def pre_stage(self, arch: str, seed: int, method: str, target: float, hp: dict) -> tuple[torch.nn.Module, dict]:
        """The network after the method's own ``pre_epochs`` epochs (cached)."""
        from benchmarks.tp_baselines import SparsityLearning
        from fxmeta.training.loop import train
        from fxmeta.training.prepare import prepare

        s = self.s
        epochs = s.pre_epochs
        parts = [arch, seed, method, hp, epochs, s.batch_size, s.base_epochs, s.base_lrs]
        if s.data != "digits":
            parts.append(s.data)
        per_target = method in ("prepared", "metanet + prepared", "metanet")
        if per_target:
            parts.append(target)
        if method.startswith("metanet"):
            parts += [_file_digest(METANET), s.bn_batches]

        def build(only_architecture: bool = False):
            model = copy.deepcopy(self.base(arch, seed))
            if only_architecture:
                return model, {}
            t0 = time.perf_counter()
            if method.startswith("metanet"):
                model, importance = self.rewrite(model, target)
                if method == "metanet":
                    return model, {"seconds": time.perf_counter() - t0, "epoch_seconds": []}
                config = self.train_config(epochs, hp["lr"], seed)
                result = prepare(model, self.example, self.data, config, [target], weight=hp["weight"],
                                 mask_every=hp["mask_every"], importance=importance)
            elif method == "prepared":
                config = self.train_config(epochs, hp["lr"], seed)
                result = prepare(model, self.example, self.data, config, [target], weight=hp["weight"],
                                 mask_every=hp["mask_every"])
            elif method == "DepGraph+SL":
                config = self.train_config(epochs, s.sl_lr, seed, weight_decay=0.0, schedule="step",
                                           milestones=(int(0.6 * epochs), int(0.8 * epochs)))
                result = train(model, self.data, config, SparsityLearning(model, self.example, hp["reg"], s.tp_steps))
            else:  # plain epochs
                result = train(model, self.data, self.train_config(epochs, hp["lr"], seed))
            seconds = time.perf_counter() - t0
            return result.model.cpu(), {"seconds": seconds, "epoch_seconds": [h["seconds"] for h in result.history]}

        tag = f"pre-{arch}-s{seed}-{method.replace(' + ', '+')}" + (f"-{target:g}x" if per_target else "")
        if method.startswith("metanet"):  # the rewritten network is a GraphModule: rebuilt, not loaded
            model, info = build()
            return model, info
        return self.cached_model(tag, parts, build)

    def rewrite(self, model: torch.nn.Module, target: float) -> tuple[torch.nn.Module, Any]:
        """The committed metanetwork's output for a prune to ``target`` and the importance that prunes
        it to the channels it was told (``fxmeta.metanet.rewriting.apply_for_prune``)."""
        from fxmeta.metanet import load_metanet
        from fxmeta.metanet.rewriting import apply_for_prune

        if not hasattr(self, "_metanet"):
            self._metanet = load_metanet(str(METANET))
        return apply_for_prune(self._metanet, model, self.example, target, self.calibration)

    def told_importance(self, arch: str, seed: int, target: float) -> Any:
        """The importance that removes the channels the metanetwork was told for this base network."""
        from fxmeta.ir.lowering import lower
        from fxmeta.metanet.condition import Condition

        return Condition(lower(self.base(arch, seed), self.example), self.example, target).importance()

    # ------------------------------------------------------------------------ cells

    def prune(self, model: torch.nn.Module, method: str, target: float, hp: dict, seed: int) -> dict:
        from fxmeta.errors import PruningError
        from fxmeta.pruning.pruner import prune

        t0 = time.perf_counter()
        if method == "DepGraph+SL":
            from benchmarks.quality.baselines import tp_progressive

            ctx = SimpleNamespace(example=self.example)
            found = tp_progressive(copy.deepcopy(model), ctx, hp["reg"], [target])[target]
            if "error" in found:
                return {"error": found["error"]}
            return {"module": found["module"], "seconds": time.perf_counter() - t0}
        try:
            importance = hp.get("importance") or ("random" if method == "random" else "l2")
            result = prune(model, self.example, speedup=target, importance=importance, seed=seed)
        except PruningError as exc:
            return {"error": str(exc)}
        return {"module": result.module, "seconds": time.perf_counter() - t0}

    def after_prune(self, module: torch.nn.Module) -> tuple[float, float, float]:
        """(test acc as pruned, val and test acc after BatchNorm recalibration), in place."""
        from fxmeta.training.loop import evaluate, recalibrate_bn

        raw = evaluate(module, self.loaders.test)["acc"]
        recalibrate_bn(module, self.calibration, len(self.calibration))
        return raw, evaluate(module, self.loaders.val)["acc"], evaluate(module, self.loaders.test)["acc"]

    def cell(self, arch: str, seed: int, method: str, target: float, hp: dict) -> dict:
        from fxmeta.pruning.flops import count_flops, count_params
        from fxmeta.training.loop import train

        s = self.s
        parts = [hp, s.image_size, s.base_epochs, s.base_lrs, s.batch_size, s.pre_epochs, s.finetune_epochs,
                 s.finetune_lrs, s.bn_batches, s.sl_lr, s.tp_steps]
        if method.startswith("metanet"):
            parts.append(_file_digest(METANET))
        path = self.cache / "cells" / f"{arch}-s{seed}-{method.replace(' + ', '+')}-{target:g}x-{_key(parts)}.json"
        if path.is_file():
            return json.loads(path.read_text())
        start, pre = self.pre_stage(arch, seed, method, target, hp)
        record: dict[str, Any] = {"arch": arch, "seed": seed, "method": method, "target": target, "hp": hp,
                                  "pre_seconds": pre["seconds"], "pre_epoch_seconds": pre["epoch_seconds"]}
        prune_hp = {**hp, "importance": self.told_importance(arch, seed, target)} if method.startswith("metanet") \
            else hp
        got = self.prune(start, method, target, prune_hp, seed)
        if "error" in got:
            record["error"] = got["error"]
        else:
            module = got["module"]
            record["prune_seconds"] = got["seconds"]
            record["flops_speedup"] = count_flops(start, self.example) / max(count_flops(module, self.example), 1)
            record["params_ratio"] = count_params(module) / count_params(start)
            raw, val, test = self.after_prune(module)
            record.update(pruned_test_acc=raw, recal_val_acc=val, recal_test_acc=test)
            for p in module.parameters():
                p.requires_grad_(True)
            t0 = time.perf_counter()
            epochs = s.finetune_epochs + (s.pre_epochs if method == "metanet" else 0)  # the same total budget
            tuned = train(module, self.data, self.train_config(epochs, s.lr_of(s.finetune_lrs, arch), seed))
            record.update(finetune_seconds=time.perf_counter() - t0, finetuned_val_acc=tuned.best_val_acc,
                          finetuned_test_acc=tuned.test["acc"])
            say(f"{arch} s{seed} {method:>11} {target:>4g}x: {record['flops_speedup']:.2f}x, "
                f"right after {raw:.4f} -> recalibrated {test:.4f} -> finetuned {tuned.test['acc']:.4f} "
                f"(pre-stage {pre['seconds']:.0f} s)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        return record

    def sweep_score(self, arch: str, method: str, hp: dict) -> float:
        """Validation accuracy right after a prune + recalibration, mean over the sweep targets."""
        seed, scores = self.s.sweep_seed, []
        for target in self.s.sweep_targets:
            start, _ = self.pre_stage(arch, seed, method, target, hp)
            got = self.prune(start, method, target, hp, seed)
            scores.append(0.0 if "error" in got else self.after_prune(got["module"])[1])
        return statistics.fmean(scores)


# ----------------------------------------------------------------------------- choices


def choose(bench: Bench, arch: str, log: dict) -> dict[str, dict]:
    s = bench.s
    prepare_scores = {}
    for weight, lr, every in s.prepare_grid:
        hp = {"weight": weight, "lr": lr, "mask_every": every}
        prepare_scores[json.dumps(hp)] = bench.sweep_score(arch, "prepared", hp)
        say(f"{arch} sweep prepared {hp}: val {prepare_scores[json.dumps(hp)]:.4f}")
    best_prepare = json.loads(max(prepare_scores, key=lambda k: prepare_scores[k]))
    # plain epochs for l2 / random use the prepare stage's lr: the same optimiser on the plain loss
    plain_lr = best_prepare["lr"]
    sl_scores = {}
    for reg in s.sl_regs:
        sl_scores[reg] = bench.sweep_score(arch, "DepGraph+SL", {"reg": reg})
        say(f"{arch} sweep DepGraph+SL reg {reg:g}: val {sl_scores[reg]:.4f}")
    best_reg = max(sl_scores, key=lambda r: (sl_scores[r], -r))
    log[arch] = {"prepare": prepare_scores, "sl_reg": {str(k): v for k, v in sl_scores.items()},
                 "chosen": {"prepared": best_prepare, "DepGraph+SL": {"reg": best_reg}}}
    return {"prepared": best_prepare, "metanet + prepared": best_prepare, "metanet": {},
            "DepGraph+SL": {"reg": best_reg}, "fxmeta-l2": {"lr": plain_lr},
            "random": {"lr": plain_lr}}


# ------------------------------------------------------------------------------ report


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(m: float, sd: float | None = None) -> str:
    if math.isnan(m):
        return "—"
    return f"{100 * m:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def paired(cells: list[dict], arch: str, target: float, key: str, a: str, b: str) -> tuple[float, float, int]:
    """Mean and standard error of a − b over the seeds both reached."""
    by = {(c["method"], c["seed"]): c for c in cells if c["arch"] == arch and c["target"] == target and key in c}
    diffs = [by[(a, sd)][key] - by[(b, sd)][key] for m, sd in by if m == a and (b, sd) in by]
    if not diffs:
        return float("nan"), float("nan"), 0
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return statistics.fmean(diffs), se, len(diffs)


def write_report(bench: Bench, cells: list[dict], choices: dict, sweep: dict, meta: dict, out: Path,
                 seeds_of: dict[str, tuple[list[int], dict[int, float]]]) -> None:
    s = bench.s
    lines = ["# Prepare for pruning vs DepGraph+SL, fxmeta l2 and random (equal epoch budget)", ""]
    lines += [f"- command: `{meta['command']}`", f"- date: {meta['date']}",
              f"- machine: {meta['machine']}, torch threads = {meta['threads']}",
              f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
              f"- base networks: seeds {'; '.join(f'{a} ' + ', '.join(map(str, u)) for a, (u, _) in seeds_of.items())}"
              f"; sweep network: seed {s.sweep_seed}"
              + "".join(f"; {a} seed {sd} replaced by a spare seed: its training failed (val acc {100 * v:.1f} % < "
                        f"{100 * s.min_base_val:.0f} %)" for a, (_, rej) in seeds_of.items() for sd, v in rej.items()),
              f"- load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}",
              f"- run wall time: {meta['minutes']:.1f} min", ""]
    lines += ["## Setup", "",
              f"- data: scikit-learn digits at {s.image_size}x{s.image_size}, {bench.data.description}",
              f"- base networks: fxmeta {', '.join(s.archs)} (in_channels=1), {s.base_epochs} epochs SGD cosine, "
              f"lr {', '.join(f'{a} {lr:g}' for a, lr in s.base_lrs)}, batch {s.batch_size}",
              f"- budget per network after base training: {s.pre_epochs} epochs of the method's own stage + "
              f"{s.finetune_epochs} finetune epochs = {s.pre_epochs + s.finetune_epochs} epochs for every method "
              "(prepare / sparsity learning / plain epochs, then the same finetune: cosine, best val epoch, "
              f"lr {', '.join(f'{a} {lr:g}' for a, lr in s.finetune_lrs)})",
              f"- right after pruning: BatchNorm statistics recomputed on the same {s.bn_batches} training batches "
              "for every method (no finetune)",
              "- DepGraph+SL: Torch-Pruning GroupNormPruner sparsity learning (SGD lr "
              f"{s.sl_lr:g}, momentum 0.9, no wd, x0.1 at 60/80 %, best val epoch), then its "
              f"GroupMagnitudeImportance(p=2, normalizer='max'), global, {s.tp_steps} steps until fxmeta's FLOPs "
              "count reaches the target; classifier ignored",
              "- prepared: `fxmeta.prepare` at the target (CE + weight x CE of the network with the channels a prune "
              "to the target removes masked, BatchNorm on batch statistics, mask from fxmeta's l2 selection), "
              "last epoch kept, then fxmeta prune (l2)",
              "- metanet + prepared / metanet: the committed conditioned metanetwork (fxmeta/assets/metanet_digits.pt, "
              "meta-trained on ResNet20s of other seeds; its gradient input on the first 2 of the shared calibration "
              f"batches, {_rewrites()}), then {s.pre_epochs} prepare epochs on its output / none, pruned to the channels the "
              f"metanetwork was told; `metanet` finetunes {s.pre_epochs + s.finetune_epochs} epochs (the same total). "
              "Targets: " + "; ".join(f"{a} {', '.join(f'{t:g}x' for t in ts)}" for a, ts in s.metanet_targets), ""]
    lines += ["## Hyper-parameters, chosen on validation (never test)", "",
              f"Scored on the sweep network (seed {s.sweep_seed}): validation accuracy right after a prune + "
              f"recalibration, mean over {', '.join(f'{t:g}x' for t in s.sweep_targets)}.", "",
              "| arch | method | setting | val score |", "|---|---|---|---|"]
    for arch, entry in sweep.items():
        for hp, score in entry["prepare"].items():
            mark = " **(chosen)**" if json.loads(hp) == entry["chosen"]["prepared"] else ""
            lines.append(f"| {arch} | prepared | {hp}{mark} | {pct(score)} |")
        for reg, score in entry["sl_reg"].items():
            mark = " **(chosen)**" if float(reg) == entry["chosen"]["DepGraph+SL"]["reg"] else ""
            lines.append(f"| {arch} | DepGraph+SL | reg {reg}{mark} | {pct(score)} |")
    for arch in s.archs:
        if arch not in sweep:
            lines.append(f"| {arch} | all | the {s.sweep_arch} choices | — |")
    lines.append("")
    lines += ["## Test accuracy (%), mean ± std over seeds", ""]
    for arch in s.archs:
        base_acc = [bench.base_info(arch, sd)["test_acc"] for sd in seeds_of[arch][0]]
        lines += [f"### {arch} (unpruned: {pct(*_mean_std(base_acc))})", "",
                  "| target | method | n | FLOPs x | right after prune + recal | after finetune | pre-stage s | "
                  "finetune s |", "|---|---|---|---|---|---|---|---|"]
        for target in s.targets:
            for method in METHODS:
                group = [c for c in cells if (c["arch"], c["method"], c["target"]) == (arch, method, target)]
                ok = [c for c in group if "error" not in c]
                if not group:
                    continue
                if not ok:
                    lines.append(f"| {target:g}x | {method} | 0 | — | not reached: {group[0]['error'][:80]} | | | |")
                    continue
                stat = {k: _mean_std([c[k] for c in ok]) for k in ("flops_speedup", "recal_test_acc",
                                                                   "finetuned_test_acc", "pre_seconds",
                                                                   "finetune_seconds")}
                lines.append(f"| {target:g}x | {method} | {len(ok)} | {stat['flops_speedup'][0]:.2f} | "
                             f"{pct(*stat['recal_test_acc'])} | {pct(*stat['finetuned_test_acc'])} | "
                             f"{stat['pre_seconds'][0]:.0f} | {stat['finetune_seconds'][0]:.0f} |")
        lines.append("")
        for first, second in PAIRS:
            rows = [(t, paired(cells, arch, t, "recal_test_acc", first, second),
                     paired(cells, arch, t, "finetuned_test_acc", first, second)) for t in s.targets]
            rows = [r for r in rows if r[1][2] > 1]
            if not rows:
                continue
            lines += [f"{first} − {second}, paired over seeds ({arch}):", "",
                      "| target | right after prune + recal (pts ± SE) | after finetune (pts ± SE) | n |",
                      "|---|---|---|---|"]
            for target, a, b in rows:
                lines.append(f"| {target:g}x | {100 * a[0]:+.2f} ± {100 * a[1]:.2f} | {100 * b[0]:+.2f} ± "
                             f"{100 * b[1]:.2f} | {a[2]} |")
            lines.append("")
    lines += ["## Cost of one epoch", ""]
    for arch in s.archs:
        per = {}
        for method in METHODS:
            epochs = [e for c in cells if c["arch"] == arch and c["method"] == method for e in c["pre_epoch_seconds"]]
            per[method] = statistics.median(epochs) if epochs else float("nan")
        ratio = per["prepared"] / per["fxmeta-l2"] if per["fxmeta-l2"] else float("nan")
        lines.append(f"- {arch}: median epoch of the pre-stage: prepared {per['prepared']:.2f} s, DepGraph+SL "
                     f"{per['DepGraph+SL']:.2f} s, plain {per['fxmeta-l2']:.2f} s; prepared / plain = {ratio:.2f}x "
                     "(includes the per-epoch validation pass of the training loop)")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"meta": meta, "settings": asdict(s), "choices": choices,
                                                      "sweep": sweep, "cells": cells}, indent=1))
    write_plot(cells, s, out.with_suffix(".png"))


def write_plot(cells: list[dict], s: Settings, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(len(s.archs), 2, figsize=(10, 3.6 * len(s.archs)), squeeze=False)
    for row, arch in enumerate(s.archs):
        for col, (key, title) in enumerate((("recal_test_acc", "right after prune + BN recalibration"),
                                            ("finetuned_test_acc", f"after {s.finetune_epochs} finetune epochs"))):
            ax = axes[row][col]
            for method in METHODS:
                xs, ms, sds = [], [], []
                for t in s.targets:
                    vals = [c[key] for c in cells if (c["arch"], c["method"], c["target"]) == (arch, method, t)
                            and key in c]
                    if vals:
                        m, sd = _mean_std(vals)
                        xs.append(t)
                        ms.append(100 * m)
                        sds.append(100 * sd)
                if xs:
                    ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=method)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(s.targets), [f"{t:g}x" for t in s.targets])
            ax.set_title(f"{arch}: {title}", fontsize=10)
            ax.set_xlabel("FLOPs speed-up")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small spot check (written under the cache folder)")
    p.add_argument("--archs", help="comma-separated subset of the families")
    p.add_argument("--seeds", help="comma-separated subset of the seeds (to split a run across processes; the "
                                   "cache joins them, and a run over all seeds then writes the whole table)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"), help="cache folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    if args.archs:
        s = replace(s, archs=tuple(args.archs.split(",")))
    if args.seeds:
        s = replace(s, seeds=tuple(int(v) for v in args.seeds.split(",")))
    cache = Path(args.cache) / ("quick" if args.quick else "full")
    bench = Bench(s, cache)
    t0, load_start = time.time(), "/".join(f"{x:.2f}" for x in os.getloadavg())
    sweep: dict = {}
    chosen_for = choose(bench, s.sweep_arch, sweep)
    cells, seeds_of = [], {}
    for arch in s.archs:
        seeds_of[arch] = bench.usable_seeds(arch)
        for seed in seeds_of[arch][0]:
            for target in s.targets:
                for method in METHODS:
                    if s.runs(arch, method, target):
                        cells.append(bench.cell(arch, seed, method, target, chosen_for[method]))
    meta = {"command": "python -m benchmarks.prepare" + (" --quick" if args.quick else "")
            + (f" --archs {args.archs}" if args.archs else "") + (f" --seeds {args.seeds}" if args.seeds else "")
            + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "threads": args.threads, "versions": _versions(), "load_start": load_start,
            "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()), "minutes": (time.time() - t0) / 60}
    out = (cache / "prepare") if args.quick else RESULTS / "prepare"
    write_report(bench, cells, chosen_for, sweep, meta, out, seeds_of)
    say(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
