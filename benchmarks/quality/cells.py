"""One cell of the grid: prune one base network with one method to one target, finetune, measure."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from ..tp_baselines import tp_progressive
from .baselines import metanet_output, sparsity_learning
from .settings import (
    TP_STEPS,
    Context,
    _eval,
    _key,
    _paired_latency,
    _read_json,
    _tag,
    _write_json,
    say,
)

# ----------------------------------------------------------------------------------- cells


def _prune_fxmeta(module: torch.nn.Module, ctx: Context, target: float, importance: str, seed: int) -> dict:
    from fxmeta.errors import PruningError
    from fxmeta.pruning.pruner import prune

    t0 = time.perf_counter()
    try:
        result = prune(module, ctx.example, speedup=target, importance=importance, seed=seed)
    except PruningError as exc:
        return {"error": f"fxmeta: {exc}"}
    return {"module": result.module, "seconds": time.perf_counter() - t0}


def _cell_path(ctx: Context, arch: str, seed: int, method: str, target: float, lr: float, reg: float | None) -> Path:
    s = ctx.s
    parts = [ctx.base_settings(arch), arch, seed, method, target, lr, s.finetune_epochs, s.latency_batch]
    if method == "DepGraph+SL":
        parts += [reg, s.sl_epochs, s.sl_lr]
    if method == "ours":
        parts += [ctx.metanets[arch]["zoo_settings"], ctx.metanets[arch]["meta_settings"]]
    name = f"{arch}-s{seed}-{method}-{_tag(target)}x-lr{_tag(lr)}" + (f"-reg{_tag(reg)}" if reg is not None else "")
    return ctx.cache / "cells" / f"{name}-{_key(parts)}.json"


def pruned_for(ctx: Context, arch: str, seed: int, method: str, target: float, reg: float | None) -> dict:
    """The pruned network of a method before finetuning, with its method-specific cost."""
    base = ctx.bases[(arch, seed)]["model"]
    if method == "ours":
        module, meta_fwd, info = metanet_output(ctx, arch, seed)
        out = _prune_fxmeta(module, ctx, target, "l2", seed)
        return {**out, **info, "extra_seconds": meta_fwd}  # + zoo and meta-training, amortised in aggregate()
    if method == "fxmeta-l2":
        return {**_prune_fxmeta(base, ctx, target, "l2", seed), "extra_seconds": 0.0}
    if method == "random":
        return {**_prune_fxmeta(base, ctx, target, "random", seed), "extra_seconds": 0.0}
    memo_key = (arch, seed, method, reg)
    if memo_key not in ctx.tp_memo:
        if method == "DepGraph+SL":
            start, sl_seconds, sl_info = sparsity_learning(ctx, arch, seed, reg)
        else:
            start, sl_seconds, sl_info = copy.deepcopy(base), 0.0, {}
        # the stepping reaches every target of the run on the way: one pass serves them all
        found = tp_progressive(copy.deepcopy(start), ctx.example, reg if method == "DepGraph+SL" else None,
                               list(ctx.s.targets), TP_STEPS)
        for entry in found.values():
            entry["extra_seconds"] = sl_seconds
            if sl_info:
                entry["sl"] = {k: v for k, v in sl_info.items() if k != "seconds"}
        ctx.tp_memo.clear()  # one base network's copies at a time
        ctx.tp_memo[memo_key] = found
    entry = dict(ctx.tp_memo[memo_key][target])
    if "module" in entry:
        entry["module"] = copy.deepcopy(entry["module"])  # finetuning must not touch the kept copy
    return entry


def run_cell(ctx: Context, arch: str, seed: int, method: str, target: float, lr: float,
             reg: float | None = None) -> dict:
    """Prune, measure, finetune, measure: one (network, method, target) result, cached."""
    from fxmeta.pruning.flops import count_flops, count_params
    from fxmeta.training.loop import TrainConfig, train

    path = _cell_path(ctx, arch, seed, method, target, lr, reg)
    cached = _read_json(path)
    if cached is not None:
        return cached
    record: dict[str, Any] = {"arch": arch, "seed": seed, "method": method, "target": target, "finetune_lr": lr,
                              "sl_reg": reg}
    base = ctx.bases[(arch, seed)]["model"]
    got = pruned_for(ctx, arch, seed, method, target, reg)
    if "error" in got:
        record["error"] = got["error"]
        say(f"{arch} s{seed} {method} {target:g}x: not reached: {got['error']}")
        _write_json(path, record)
        return record
    module = got.pop("module")
    record.update({k: v for k, v in got.items() if k not in ("seconds", "extra_seconds")})
    flops0, flops1 = count_flops(base, ctx.example), count_flops(module, ctx.example)
    record.update(flops_speedup=flops0 / max(flops1, 1), params_ratio=count_params(module) / count_params(base),
                  flops=flops1)
    record["base_latency_ms"], record["latency_ms"] = _paired_latency(base, module, ctx)
    record["latency_speedup"] = record["base_latency_ms"] / record["latency_ms"]
    record["pruned_val_acc"], record["pruned_test_acc"] = _eval(module, ctx)
    t0 = time.perf_counter()
    for p in module.parameters():
        p.requires_grad_(True)
    tuned = train(module, ctx.splits, TrainConfig(epochs=ctx.s.finetune_epochs, lr=lr, batch_size=ctx.s.batch_size,
                                                  seed=seed, device="cpu", progress=False))
    finetune_seconds = time.perf_counter() - t0
    record.update(finetune_best_epoch=tuned.best_epoch, finetuned_val_acc=tuned.best_val_acc,
                  finetuned_test_acc=tuned.test["acc"], prune_seconds=got["seconds"],
                  finetune_seconds=finetune_seconds, method_seconds=got["extra_seconds"])
    say(f"{arch} s{seed} {method:>12} {target:>4g}x: {record['flops_speedup']:.2f}x FLOPs, "
        f"params {record['params_ratio']:.3f}, latency {record['latency_speedup']:.2f}x, "
        f"acc pruned {record['pruned_test_acc']:.4f} -> finetuned {record['finetuned_test_acc']:.4f} "
        f"(val {record['finetuned_val_acc']:.4f}), prune {got['seconds']:.1f} s + finetune {finetune_seconds:.0f} s "
        f"+ method-specific {got['extra_seconds']:.0f} s")
    _write_json(path, record)
    return record


# ------------------------------------------------------------------------------- selection


def _val_score(cells: list[dict]) -> float:
    """Mean validation accuracy after finetuning; a target not reached scores 0."""
    return sum(c.get("finetuned_val_acc", 0.0) for c in cells) / len(cells)


def choose_finetune_lr(ctx: Context, arch: str) -> float:
    s = ctx.s
    seed = s.seeds[0]
    scores = {lr: _val_score([run_cell(ctx, arch, seed, "fxmeta-l2", t, lr) for t in s.select_targets])
              for lr in s.finetune_lrs}
    best = max(scores, key=lambda lr: (scores[lr], -lr))
    ctx.chosen.setdefault(arch, {})["finetune_lr"] = {"chosen": best, "val_scores": scores,
                                                      "how": f"fxmeta-l2, seed {seed}, mean val acc after finetune "
                                                             f"at {', '.join(f'{t:g}x' for t in s.select_targets)}"}
    say(f"{arch}: finetune lr {best:g} chosen on val ({scores})")
    return best


def choose_sl_reg(ctx: Context, arch: str, lr: float) -> float:
    s = ctx.s
    seed = s.seeds[0]
    cells = {reg: [run_cell(ctx, arch, seed, "DepGraph+SL", t, lr, reg) for t in s.select_targets]
             for reg in s.sl_regs}
    scores = {reg: _val_score(c) for reg, c in cells.items()}
    best = max(scores, key=lambda reg: (scores[reg], -reg))
    grid_seconds = sum(next((x["method_seconds"] for x in c if "method_seconds" in x), 0.0) for c in cells.values())
    ctx.chosen.setdefault(arch, {})["sl_reg"] = {"chosen": best, "val_scores": scores, "grid_seconds": grid_seconds,
                                                 "how": f"DepGraph+SL, seed {seed}, mean val acc after finetune "
                                                        f"at {', '.join(f'{t:g}x' for t in s.select_targets)}"}
    say(f"{arch}: SL reg {best:g} chosen on val ({scores})")
    return best


