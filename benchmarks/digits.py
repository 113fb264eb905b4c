"""The digits setup of ``benchmarks.prepare``, shared by the benchmarks built on its base networks
(``prepare``, ``calibrated_digits``, ``prunability``, ``allocation``, ``allocation_confirm``, and the
libraries ``zoo`` and ``allocation_cells``): the settings (``Settings``, ``FULL``, ``QUICK``), the committed metanetwork
(``METANET``), ``Bench`` (the data, the shared calibration batches, and the cached base networks,
pre-stages, prunes and cells every table starts from), ``choose`` (prepare's hyper-parameters, chosen
on validation) and what their reports share: ``cache_key`` (10 hex digits: the caches these benchmarks
wrote are named by it), ``mean_std`` (mean and standard deviation over seeds) and ``pct``.
A library of the benchmarks, not a benchmark."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say

METANET = Path(__file__).resolve().parent.parent / "fxmeta" / "assets" / "metanet_digits.pt"
FAMILIES: dict[str, Any] = {}  # families a benchmark defines itself (name -> factory), beside fxmeta.models


@dataclass(frozen=True)
class Settings:
    archs: tuple[str, ...] = ("resnet20", "resnet56")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    targets: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    image_size: int = 16
    data: str = "digits"  # or "mnist5k" (benchmarks.prunability --data mnist5k), "fashion-mnist"
    train_limit: int | None = None  # a fixed, stratified subset of the training split (None: all of it)
    base_epochs: int = 20
    base_lrs: tuple[tuple[str, float], ...] = (("resnet20", 0.1), ("resnet56", 0.05))  # as quality.py
    batch_size: int = 128
    pre_epochs: int = 5
    finetune_epochs: int = 5
    finetune_lrs: tuple[tuple[str, float], ...] = (("resnet20", 0.05), ("resnet56", 0.01))  # quality.py, on val
    bn_batches: int = 20
    sweep_seeds: tuple[int, ...] = (100,)  # the networks the choices are made on (none of the compared seeds)
    # the score a choice reads on them: validation accuracy right after the prune + recalibration ("prune"),
    # after the prune and the finetune ("finetune": what a user who finetunes ends with), or after the prune and
    # the distillation finetune ("distill": fxmeta transform's default finetune; needs ``distill_finetune``)
    sweep_after: str = "prune"
    # a base network whose training failed (validation accuracy below this) is no network to prune:
    # it is replaced by the next spare seed, decided on validation accuracy only
    min_base_val: float = 0.9
    spare_seeds: tuple[int, ...] = (5, 6, 7)
    sweep_arch: str = "resnet20"  # the choices made on it serve every family
    sweep_targets: tuple[float, ...] = (4.0, 8.0)
    # (weight, lr, mask_every[, sparsity]): the prepare grid; weight 1 / lr 0.01 / once per epoch first
    prepare_grid: tuple[tuple[float, ...], ...] = (
        (1.0, 0.01, 0), (0.5, 0.01, 0), (2.0, 0.01, 0), (1.0, 0.05, 0), (1.0, 0.01, 4))
    sl_lr: float = 0.01
    # every cell also finetuned by distillation from its base network (``fxmeta transform --distill``), with the
    # same settings as the plain finetune: a second recipe for the step after the prune
    distill_finetune: bool = False
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
                 sweep_targets=(4.0,), bn_batches=5, metanet_targets=(("resnet20", (4.0,)),),
                 min_base_val=0.5)  # 4 base epochs reach 0.85-0.9 validation accuracy, below FULL's bar


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:10]


def cache_key(obj: Any) -> str:
    """A short stable digest of plain data (10 hex digits; ``benchmarks.common.key`` has 12)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def training_subset(data: Any, count: int) -> Any:
    """``data`` with ``count`` of its training samples: a fixed draw, stratified by label (validation and
    test untouched)."""
    from dataclasses import replace as with_fields

    from sklearn.model_selection import train_test_split

    train = data.train
    labels = train.tensors[1].tolist() if hasattr(train, "tensors") else [int(train[i][1]) for i in range(len(train))]
    keep, _ = train_test_split(list(range(len(labels))), train_size=count, random_state=0, stratify=labels)
    return with_fields(data, train=torch.utils.data.Subset(data.train, sorted(keep)),
                       description=f"{data.description}; training subset: {count} of {len(labels)}, stratified")


def prepare_settings(hp: dict) -> dict:
    """``fxmeta.prepare``'s keyword arguments from a prepare setting of the grid (``choose``)."""
    return {"weight": hp["weight"], "mask_every": hp["mask_every"], "sparsity": hp.get("sparsity", 0.0)}


FINETUNE_KEEP = "best-or-start"  # the finetune's rule, as fxmeta transform's: the pruned network itself is a candidate


class Bench:
    """Data, caches and the shared pieces of every cell."""

    def __init__(self, s: Settings, cache: Path) -> None:
        from fxmeta.training.data import load_data, make_loaders

        self.s = s
        self.cache = cache
        self.data = load_data(s.data, seed=0, image_size=s.image_size)
        if s.train_limit and s.train_limit < len(self.data.train):
            self.data = training_subset(self.data, s.train_limit)
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
        path = self.cache / "models" / f"{name}-{cache_key(parts)}.pt"
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
            model = (FAMILIES.get(arch) or get_model)(arch, num_classes=10, in_channels=1)
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
        parts += ([s.data] if s.data != "digits" else []) + ([s.train_limit] if s.train_limit else [])
        model, _ = self.cached_model(f"base-{arch}-s{seed}", parts, build)
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
                result = prepare(model, self.example, self.data, config, [target], importance=importance,
                                 **prepare_settings(hp))
            elif method == "prepared":
                config = self.train_config(epochs, hp["lr"], seed)
                result = prepare(model, self.example, self.data, config, [target], **prepare_settings(hp))
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
            from benchmarks.tp_baselines import tp_progressive

            found = tp_progressive(copy.deepcopy(model), self.example, hp["reg"], [target], self.s.tp_steps)[target]
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

    def _cell_path(self, arch: str, seed: int, method: str, target: float, hp: dict, *extra: Any) -> Path:
        """Where a cell's record is cached: keyed by every setting it depends on (and ``extra``)."""
        s = self.s
        parts = [hp, s.image_size, s.base_epochs, s.base_lrs, s.batch_size, s.pre_epochs, s.finetune_epochs,
                 s.finetune_lrs, s.bn_batches, s.sl_lr, s.tp_steps, FINETUNE_KEEP, *extra]
        parts += [s.train_limit] if s.train_limit else []
        if method.startswith("metanet"):
            parts.append(_file_digest(METANET))
        tag = "-kd" if extra else ""
        return self.cache / "cells" / f"{arch}-s{seed}-{method.replace(' + ', '+')}-{target:g}x{tag}-{cache_key(parts)}.json"

    def _pruned(self, arch: str, seed: int, method: str, target: float, hp: dict) -> tuple[torch.nn.Module, dict, dict]:
        """(the network after the method's own stage, that stage's info, the prune's result)."""
        start, pre = self.pre_stage(arch, seed, method, target, hp)
        prune_hp = {**hp, "importance": self.told_importance(arch, seed, target)} if method.startswith("metanet") \
            else hp
        return start, pre, self.prune(start, method, target, prune_hp, seed)

    def _finetune(self, module: torch.nn.Module, arch: str, seed: int, method: str, objective: Any = None) -> Any:
        """The finetune after the prune, in place: ``finetune_epochs`` (the metanetwork row, which had no
        epochs before the prune, gets ``pre_epochs`` more: the same total budget), best-or-start."""
        from fxmeta.training.loop import train

        s = self.s
        for p in module.parameters():
            p.requires_grad_(True)
        epochs = s.finetune_epochs + (s.pre_epochs if method == "metanet" else 0)
        return train(module, self.data, self.train_config(epochs, s.lr_of(s.finetune_lrs, arch), seed,
                                                          keep=FINETUNE_KEEP), objective)

    def cell(self, arch: str, seed: int, method: str, target: float, hp: dict) -> dict:
        from fxmeta.pruning.flops import count_flops, count_params

        path = self._cell_path(arch, seed, method, target, hp)
        if path.is_file():
            return json.loads(path.read_text())
        start, pre, got = self._pruned(arch, seed, method, target, hp)
        record: dict[str, Any] = {"arch": arch, "seed": seed, "method": method, "target": target, "hp": hp,
                                  "pre_seconds": pre["seconds"], "pre_epoch_seconds": pre["epoch_seconds"]}
        if "error" in got:
            record["error"] = got["error"]
        else:
            module = got["module"]
            record["prune_seconds"] = got["seconds"]
            record["flops_speedup"] = count_flops(start, self.example) / max(count_flops(module, self.example), 1)
            record["params_ratio"] = count_params(module) / count_params(start)
            raw, val, test = self.after_prune(module)
            record.update(pruned_test_acc=raw, recal_val_acc=val, recal_test_acc=test)
            t0 = time.perf_counter()
            tuned = self._finetune(module, arch, seed, method)
            record.update(finetune_seconds=time.perf_counter() - t0, finetuned_val_acc=tuned.best_val_acc,
                          finetuned_test_acc=tuned.test["acc"])
            say(f"{arch} s{seed} {method:>11} {target:>4g}x: {record['flops_speedup']:.2f}x, "
                f"right after {raw:.4f} -> recalibrated {test:.4f} -> finetuned {tuned.test['acc']:.4f} "
                f"(pre-stage {pre['seconds']:.0f} s)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        return record

    def distilled(self, arch: str, seed: int, method: str, target: float, hp: dict) -> dict:
        """The cell's pruned network finetuned on the KL divergence to the base network's outputs instead of
        the labels (``fxmeta transform --distill``, temperature 1; the same epochs, lr and rule of keeping)."""
        from fxmeta.training.distill import DistillObjective

        path = self._cell_path(arch, seed, method, target, hp, "distill", 1.0)
        if path.is_file():
            return json.loads(path.read_text())
        _, _, got = self._pruned(arch, seed, method, target, hp)
        record: dict[str, Any] = {}
        if "error" not in got:
            module = got["module"]
            self.after_prune(module)
            t0 = time.perf_counter()
            tuned = self._finetune(module, arch, seed, method, DistillObjective(self.base(arch, seed)))
            record = {"distilled_val_acc": tuned.best_val_acc, "distilled_test_acc": tuned.test["acc"],
                      "distill_seconds": time.perf_counter() - t0}
            say(f"{arch} s{seed} {method:>11} {target:>4g}x: distilled finetune -> {tuned.test['acc']:.4f}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        return record

    def sweep_score(self, arch: str, method: str, hp: dict) -> dict[str, float]:
        """Validation accuracy right after a prune + recalibration (``prune``) and, where ``sweep_after`` is
        ``finetune`` or ``distill``, after the finetune too (``finetune``) and after the distillation finetune
        (``distill``, where ``distill_finetune``): means over the sweep networks and targets."""
        s, pruned, tuned, distilled = self.s, [], [], []
        for seed in s.sweep_seeds:
            for target in s.sweep_targets:
                if s.sweep_after in ("finetune", "distill"):  # the whole cell, as the compared seeds get it (cached)
                    got = self.cell(arch, seed, method, target, hp)
                    pruned.append(got.get("recal_val_acc", 0.0))
                    tuned.append(got.get("finetuned_val_acc", 0.0))
                    if s.distill_finetune:
                        distilled.append(self.distilled(arch, seed, method, target, hp).get("distilled_val_acc", 0.0))
                    continue
                start, _ = self.pre_stage(arch, seed, method, target, hp)
                got = self.prune(start, method, target, hp, seed)
                pruned.append(0.0 if "error" in got else self.after_prune(got["module"])[1])
        return {"prune": statistics.fmean(pruned), **({"finetune": statistics.fmean(tuned)} if tuned else {}),
                **({"distill": statistics.fmean(distilled)} if distilled else {})}


# ----------------------------------------------------------------------------- choices


def choose(bench: Bench, arch: str, log: dict) -> dict[str, dict]:
    s = bench.s
    key = s.sweep_after
    prepare_scores = {}
    for weight, lr, every, *sparsity in s.prepare_grid:
        hp = {"weight": weight, "lr": lr, "mask_every": every}
        if sparsity and sparsity[0]:  # only where set: the settings without it keep their cache keys
            hp["sparsity"] = sparsity[0]
        prepare_scores[json.dumps(hp)] = bench.sweep_score(arch, "prepared", hp)
        say(f"{arch} sweep prepared {hp}: val {prepare_scores[json.dumps(hp)]}")
    best_prepare = json.loads(max(prepare_scores, key=lambda k: prepare_scores[k][key]))
    # plain epochs for l2 / random use the prepare stage's lr: the same optimiser on the plain loss
    plain_lr = best_prepare["lr"]
    sl_scores = {}
    for reg in s.sl_regs:
        sl_scores[reg] = bench.sweep_score(arch, "DepGraph+SL", {"reg": reg})
        say(f"{arch} sweep DepGraph+SL reg {reg:g}: val {sl_scores[reg]}")
    best_reg = max(sl_scores, key=lambda r: (sl_scores[r][key], -r))
    log[arch] = {"prepare": prepare_scores, "sl_reg": {str(k): v for k, v in sl_scores.items()},
                 "chosen": {"prepared": best_prepare, "DepGraph+SL": {"reg": best_reg}}}
    return {"prepared": best_prepare, "metanet + prepared": best_prepare, "metanet": {},
            "DepGraph+SL": {"reg": best_reg}, "fxmeta-l2": {"lr": plain_lr},
            "random": {"lr": plain_lr}}


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(m: float, sd: float | None = None) -> str:
    if math.isnan(m):
        return "—"
    return f"{100 * m:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")
