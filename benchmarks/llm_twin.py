"""The GPT-2-style twin of ``benchmarks.llm``'s Llama: one-shot structured pruning.

    python -m benchmarks.llm --stage twin [--threads 2]

A ``GPT2LMHeadModel`` (LayerNorm, biases, a GELU MLP, learned positions, tied embeddings; its
``Conv1D`` layers are captured by torch.export as ``torch.addmm``) of about the Llama's size,
trained by the same recipe on the same bytes of the standard library (20x its non-embedding
parameters in tokens) and cached beside it. fxmeta prunes it with every importance x
compensation (uniform allocation, as its Llama rows) and with random scores, to 20 / 30 / 50 % of
the non-embedding parameters (token and position embeddings excluded; the FLOPs target per
fraction found by bisection of the l2 prune, as for the Llama); validation and test perplexity
over the dense model's on the same fixed draws as ``llm.md``, 3 calibration draws for the rows
that read data; and the same re-implemented baselines as ``llm.md`` (FLAP adaptive and uniform,
Wanda-sp, LLM-Pruner's Taylor; ``llm_baselines``, on GPT-2's fused ``c_attn`` and ``Conv1D``
layers) at the same fractions and draws. ``benchmarks.llm`` passes itself in: a library of it,
not a benchmark. Writes benchmarks/results/llm_twin.md.
"""
from __future__ import annotations

import hashlib
import json
import math
from types import ModuleType

from .common import cache_dir, cached_cell, header, mean_se, say, table
from .llm_baselines import non_embedding_params, reimplemented

TWIN = dict(model_type="gpt2", n_embd=128, n_inner=464, n_layer=3, n_head=4, vocab_size=256, n_positions=128,
            tie_word_embeddings=True, use_cache=False, bos_token_id=0, eos_token_id=0)
ROWS = [(imp, comp) for imp in ("l2", "activation", "taylor") for comp in ("none", "bias", "lstsq")] + [("random", "none")]
SEEDS = (0, 1, 2)
BASELINES = ("flap", "flap-uniform", "wanda-sp", "llm-pruner")  # re-implemented (``llm_baselines``)


def params(model) -> int:
    """Non-embedding parameters: all but the token and the position embeddings."""
    return non_embedding_params(model) - model.transformer.wpe.weight.numel()


def twin(llm: ModuleType, data: dict, threads: int) -> None:
    """Train (or load) the twin, prune it every way at every fraction and seed (cells cached), write the report."""
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec

    key = hashlib.sha256(json.dumps([TWIN, llm.TRAIN, data["sha256"]]).encode()).hexdigest()[:10]
    folder = cache_dir("llm") / f"gpt2-{key}"
    record = llm.train_dense(data, folder, threads, TWIN)
    dense = llm.load_dense(folder)
    val_rows, test_rows = (llm.blocks(data["val"], llm.EVAL_BLOCKS["val"], seed=2),
                           llm.blocks(data["test"], llm.EVAL_BLOCKS["test"], seed=3))
    dense_val, dense_test = llm.nll(dense, val_rows), llm.nll(dense, test_rows)
    path = folder / "flops_targets.json"
    if not path.is_file():
        path.write_text(json.dumps({str(k): v for k, v in llm.calibrate_targets(folder, data, params).items()}))
    speedups = {float(k): v for k, v in json.loads(path.read_text()).items()}
    cache = cache_dir("llm") / "cells"
    cache.mkdir(exist_ok=True)
    cells = []
    for fraction in llm.TARGETS:
        for imp, comp in ROWS:
            for seed in SEEDS if (imp, comp) != ("l2", "none") else SEEDS[:1]:  # l2 alone reads no data: one draw
                parts = {"stage": "twin", "model": folder.name, "importance": imp, "compensate": comp,
                         "fraction": fraction, "seed": seed, "calib": llm.CALIB, "eval": llm.EVAL_BLOCKS}

                def run(imp=imp, comp=comp, fraction=fraction, seed=seed) -> dict:
                    model = llm.load_dense(folder)
                    calib = llm.calibration(data, seed)
                    spec = PruneSpec(speedups[fraction], importance=imp, compensate=comp, allocation="uniform", seed=seed)
                    result = fxmeta.prune(model, calib[0][0][:1], spec=spec, calibration=calib)
                    pruned = result.module.eval()
                    return {"removed": 1 - params(pruned) / params(model), "type": type(pruned).__name__,
                            "changed": len(result.plan.get("compensation", {}).get("changed", [])),
                            "val": llm.nll(pruned, val_rows), "test": llm.nll(pruned, test_rows)}

                cells.append(cached_cell(cache, parts, run))
                c = cells[-1]
                say(f"twin {imp}+{comp} {fraction:.0%} seed {seed}: test ppl x{math.exp(c['test'] - dense_test):.3f} "
                    f"removed {c['removed']:.3f}")
        for method in BASELINES:
            for seed in SEEDS:
                parts = {"stage": "twin", "model": folder.name, "method": method, "fraction": fraction, "seed": seed,
                         "calib": llm.CALIB, "eval": llm.EVAL_BLOCKS}

                def run(method=method, fraction=fraction, seed=seed) -> dict:
                    model = llm.load_dense(folder)
                    _, removed, _ = reimplemented(model, llm.calibration(data, seed), fraction, method, seed, params(model))
                    return {"removed": removed / params(model), "val": llm.nll(model, val_rows),
                            "test": llm.nll(model, test_rows)}

                cells.append(cached_cell(cache, parts, run))
                say(f"twin {method} {fraction:.0%} seed {seed}: test ppl x{math.exp(cells[-1]['test'] - dense_test):.3f}")
    write_report(llm, record, cells, dense, dense_val, dense_test, speedups, threads)


def _method(c: dict) -> str:
    return c.get("method") or f"fxmeta:{c['importance']}:{c['compensate']}"


def write_report(llm: ModuleType, record: dict, cells: list[dict], dense, dense_val: float, dense_test: float,
                 speedups: dict, threads: int) -> None:
    def ratios(method: str, split: str, dense_nll: float, fraction: float | None = None) -> list[float]:
        return [math.exp(c[split] - dense_nll) for c in cells
                if _method(c) == method and (fraction is None or c["fraction"] == fraction)]

    def ratio(method: str, fraction: float, split: str, dense_nll: float) -> str:
        m, se = mean_se(ratios(method, split, dense_nll, fraction))
        return f"{m:.3f} ± {se:.3f}"

    def mean_val(method: str) -> float:
        values = ratios(method, "val", dense_val)
        return sum(values) / len(values)

    fxmeta_rows = [f"fxmeta:{imp}:{comp}" for imp, comp in ROWS]
    rows = []
    for method in fxmeta_rows + list(BASELINES):
        removed = [next(c["removed"] for c in cells if _method(c) == method and c["fraction"] == f) for f in llm.TARGETS]
        name = "fxmeta random" if method == "fxmeta:random:none" else llm.label(method)
        rows.append([name] + [ratio(method, f, "val", dense_val) for f in llm.TARGETS]
                    + [ratio(method, f, "test", dense_test) for f in llm.TARGETS]
                    + [" / ".join(f"{100 * r:.1f}" for r in removed)])
    best = min(fxmeta_rows, key=mean_val)
    flap = min(("flap", "flap-uniform"), key=mean_val)  # FLAP's structure chosen on validation
    best_baseline = min(BASELINES, key=mean_val)

    def test_mean(method: str, fraction: float) -> float:
        m, _ = mean_se(ratios(method, "test", dense_test, fraction))
        return m

    ours = "fxmeta:activation:lstsq"
    versus = [f"{int(100 * f)} % {test_mean(ours, f):.3f} vs {test_mean(flap, f):.3f} / {test_mean(best_baseline, f):.3f}"
              for f in llm.TARGETS]
    key = hashlib.sha256(json.dumps([llm.MODEL, llm.TRAIN, record["data"]["sha256"]]).encode()).hexdigest()[:10]
    path = cache_dir("llm") / f"llama-{key}" / "record.json"
    llama = json.loads(path.read_text()) if path.is_file() else None
    tail = record["curve"][-3:]
    default = {f: ratio(ours, f, "test", dense_test) for f in llm.TARGETS}
    text = "\n".join([
        "# Language models: the GPT-2-style twin, one-shot structured pruning", "",
        header(f"python -m benchmarks.llm --stage twin --threads {threads}", threads,
               "calibration draws " + ", ".join(map(str, SEEDS))), "",
        f"Model: `GPT2LMHeadModel` {json.dumps({k: v for k, v in TWIN.items() if k != 'model_type'})}; "
        f"{params(dense):,} non-embedding parameters (token and position embeddings excluded"
        + (f"; `llm.md`'s Llama: {llama['params']:,}" if llama else "")
        + f"); trained by `llm_base.md`'s recipe on {record['tokens'] / 1e6:.2f}M tokens in "
        f"{record['minutes']:.0f} min. Validation loss at the last evaluations: "
        + ", ".join(f"{p['val_loss']:.4f} (step {p['step']})" for p in tail)
        + f"; dense perplexity {math.exp(dense_val):.3f} (val draw) / {math.exp(dense_test):.3f} (test draw).", "",
        f"Each cell: the pruned / dense perplexity ratio on `llm.md`'s fixed draws ({llm.EVAL_BLOCKS['val']} "
        f"validation and {llm.EVAL_BLOCKS['test']} test blocks of {llm.BLOCK} bytes), mean ± SE over the calibration "
        f"draws ({llm.CALIB['batches']} x {llm.CALIB['batch']} training blocks; l2 + none reads no data: one "
        f"draw). FLOPs targets per fraction (bisection of the l2 prune): {json.dumps(speedups)}. The "
        "re-implemented baselines are `llm.md`'s (`benchmarks/llm_baselines.py`), here on GPT-2's fused `c_attn` "
        "and `Conv1D` layers: they remove heads and MLP channels (not the hidden width), as masks, to exactly the "
        "fraction; FLAP's bias compensation goes into `c_proj`.", "",
        table(["method"] + [f"{int(100 * f)} %: val ppl ratio" for f in llm.TARGETS]
              + [f"{int(100 * f)} %: test ppl ratio" for f in llm.TARGETS] + ["params removed"], rows), "",
        "fxmeta's default with data (activation + lstsq, uniform), test: "
        + ", ".join(f"{int(100 * f)} % {default[f]}" for f in llm.TARGETS)
        + f" (`llm.md`'s Llama: see its table). Every pruned model is the model's own class "
          f"({', '.join(sorted({c['type'] for c in cells if 'type' in c}))}). Best on validation (mean ratio over the fractions "
          f"and draws): {llm.label(best)} ({mean_val(best):.3f}; the default {mean_val(ours):.3f}).", "",
        "fxmeta's default against FLAP re-implemented (its structure chosen on validation: "
        f"{llm.label(flap)}) / the best re-implemented baseline on validation ({llm.label(best_baseline)}), test: "
        + "; ".join(versus) + ".",
        "", f"Dense validation loss over the whole split: the twin {record['val_loss']:.4f} nats per byte"
        + (f", the Llama {llama['val_loss']:.4f}" if llama else "") + ": the two models' ratios are not comparable "
        "one for one" + (" (under the same recipe the twin learns less)" if llama and record["val_loss"] > llama["val_loss"]
                         else "") + ".", ""])
    out = llm.RESULTS / "llm_twin.md"
    out.write_text(text)
    say(f"wrote {out}")
