"""Pruned-and-recovered against trained-from-scratch, as the training budget grows.

    python -m benchmarks.llm --stage budget [--threads 2]

``benchmarks.llm`` compares, at 50 % of the non-embedding parameters removed, fxmeta's prune +
a recovery on 5 % of the pretraining tokens with a model of about the pruned size trained from
scratch on the pretraining tokens plus those 5 %. This script asks the two questions that
comparison mixes: with the same training budget B for both (B = 5 %, 20 %, 100 % of the dense
model's pretraining tokens), which is better, the pruned model recovered on B tokens (fxmeta's
default with data, activation + lstsq, recovered by distillation from the dense model) or the
small model trained from scratch on B tokens? And how large must B be before the recovered
model matches the control trained on everything?

Every learning rate is chosen on validation: the recovery's from ``PRUNED_LRS``, the
from-scratch training's from ``SCRATCH_LRS`` (the dense recipe otherwise, its warm-up capped
at a tenth of the steps); the table gives test perplexity (the same fixed draw as ``llm.md``)
over the dense model's. One calibration draw and data order (seed 0). Models and cells are
cached with ``benchmarks.llm``'s (which passes itself in: a library of it, not a benchmark). Writes
benchmarks/results/llm_budget.md.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import ModuleType

from .common import cache_dir, header, say, table

BUDGETS = (0.05, 0.2, 1.0)  # training tokens, as a fraction of the dense model's pretraining tokens
PRUNED = "fxmeta:activation:lstsq+distill"
FRACTION = 0.5
PRUNED_LRS = (1e-3, 3e-3)
SCRATCH_LRS = (3e-3, 1e-2)


def scratch(llm: ModuleType, data: dict, tokens: int, lr: float, threads: int) -> dict:
    """The small model trained from scratch on ``tokens`` at peak ``lr`` (cached); its record with the test draw."""
    steps = math.ceil(tokens / (llm.TRAIN["batch"] * llm.BLOCK))
    recipe = dict(llm.TRAIN, lr=lr, warmup=min(llm.TRAIN["warmup"], max(1, steps // 10)))
    key = hashlib.sha256(json.dumps([llm.SCRATCH, recipe, tokens, data["sha256"]]).encode()).hexdigest()[:10]
    folder = cache_dir("llm") / f"scratch-{key}"
    out = llm.train_dense(data, folder, threads, llm.SCRATCH, tokens, recipe)
    if "val_draw" not in out or "test_draw" not in out:
        model = llm.load_dense(folder)
        out["val_draw"] = llm.nll(model, llm.blocks(data["val"], llm.EVAL_BLOCKS["val"], seed=2))
        out["test_draw"] = llm.nll(model, llm.blocks(data["test"], llm.EVAL_BLOCKS["test"], seed=3))
        (folder / "record.json").write_text(json.dumps(out, indent=1))
    return out


def budget_tokens(llm: ModuleType, record: dict, share: float) -> int:
    """``share`` of the dense model's pretraining tokens, in whole batches."""
    unit = llm.TRAIN["batch"] * llm.BLOCK
    return math.ceil(share * record["tokens"] / unit) * unit


def scratch_at(llm: ModuleType, data: dict, record: dict, share: float, threads: int) -> tuple[float, dict]:
    """The from-scratch control trained on ``share`` of the pretraining tokens: the lr of ``SCRATCH_LRS``
    chosen on validation and its record."""
    tokens = budget_tokens(llm, record, share)
    runs = {lr: scratch(llm, data, tokens, lr, threads) for lr in SCRATCH_LRS}
    lr = min(runs, key=lambda lr: runs[lr]["val_draw"])
    return lr, runs[lr]


def budget(llm: ModuleType, folder: Path, data: dict, record: dict, threads: int) -> None:
    """The budget table for the dense model in ``folder`` (its FLOPs targets found), written to llm_budget.md;
    ``llm``: the ``benchmarks.llm`` module (its data, models, recovery cells)."""
    cache = cache_dir("llm") / "cells"
    cache.mkdir(exist_ok=True)
    dense = llm.load_dense(folder)
    dense_val = llm.nll(dense, llm.blocks(data["val"], llm.EVAL_BLOCKS["val"], seed=2))
    dense_test = llm.nll(dense, llm.blocks(data["test"], llm.EVAL_BLOCKS["test"], seed=3))
    rows, found = [], {}
    for share in BUDGETS:
        tokens = budget_tokens(llm, record, share)
        pruned = {lr: llm.recovery_cell(folder, data, PRUNED, FRACTION, record, cache, 0, lr, share) for lr in PRUNED_LRS}
        s_lr, small = scratch_at(llm, data, record, share, threads)
        p_lr = min(pruned, key=lambda lr: pruned[lr]["val"])
        p_ratio, s_ratio = math.exp(pruned[p_lr]["test"] - dense_test), math.exp(small["test_draw"] - dense_test)
        found[share] = (p_ratio, s_ratio)
        say(f"budget {share:g}: pruned {p_ratio:.3f} (lr {p_lr:g}), scratch {s_ratio:.3f} (lr {s_lr:g})")
        rows.append([f"{100 * share:g} % ({tokens / 1e6:.2f}M)", f"{p_ratio:.3f}", f"{p_lr:g}",
                     f"{s_ratio:.3f}", f"{s_lr:g}", "pruned" if p_ratio < s_ratio else "from scratch"])
    full = found[BUDGETS[-1]][1]
    crossing = [b for b in BUDGETS if found[b][0] <= full]
    text = "\n".join([
        "# Language models: pruned and recovered vs trained from scratch, as the budget grows", "",
        header(f"python -m benchmarks.llm --stage budget --threads {threads}", threads, "0 (calibration draw, data order, initialisation)"),
        "",
        f"The dense model of `llm_base.md` ({record['params']:,} non-embedding parameters, {record['tokens'] / 1e6:.2f}M "
        f"pretraining tokens); at {100 * FRACTION:.0f} % of them removed, fxmeta's default with data (activation + "
        f"lstsq) recovered by distillation from the dense model, beside `LlamaForCausalLM` "
        f"{json.dumps({k: llm.SCRATCH[k] for k in ('hidden_size', 'intermediate_size', 'num_attention_heads', 'num_key_value_heads')})} "
        "trained from scratch by the dense recipe, each on the same number of tokens B. Learning rates chosen on "
        f"validation (pruned: {', '.join(f'{lr:g}' for lr in PRUNED_LRS)}; from scratch: "
        f"{', '.join(f'{lr:g}' for lr in SCRATCH_LRS)}, warm-up at most a tenth of the steps). Test perplexity "
        f"over the dense model's (the fixed draw of `llm.md`, dense {math.exp(dense_test):.3f}; validation draw "
        f"{math.exp(dense_val):.3f}).", "",
        table(["training tokens B (of the pretraining)", "pruned + recovered on B", "lr", "from scratch on B", "lr",
               "better"], rows), "",
        f"- At every budget up to {100 * BUDGETS[-1]:g} %: "
        + ("the pruned model is better." if all(p < s for p, s in found.values())
           else "the pruned model is better at " + ", ".join(f"{100 * b:g} %" for b, (p, s) in found.items() if p < s)
           + "; from scratch at " + ", ".join(f"{100 * b:g} %" for b, (p, s) in found.items() if p >= s) + "."),
        f"- Against the control trained from scratch on all {100 * BUDGETS[-1]:g} % ({full:.3f}): the recovered model "
        + (f"matches it from B = {100 * crossing[0]:g} % on." if crossing else
           f"does not match it at any budget measured (best {min(p for p, _ in found.values()):.3f})."), ""])
    out = llm.RESULTS / "llm_budget.md"
    out.write_text(text)
    say(f"wrote {out}")

