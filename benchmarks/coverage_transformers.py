"""Coverage over transformers families and timm architectures: fxmeta and Torch-Pruning at 2x FLOPs.

For each model of ``benchmarks.transformer_models`` (random weights, eval mode):

* ours: ``fxmeta.prune(model, x, speedup=2.0, importance="l2", min_keep=0.5, round_to=8)``, self-check
  on; reached means FLOPs(original) / FLOPs(pruned) >= 2 (``fxmeta.count_flops``).
* Torch-Pruning: the settings of its own examples, which prune once at a pruning ratio (uniform
  over layers, ``global_pruning=False``): the smallest ratio of 0.2, 0.25 ... 0.9 at which
  ``count_flops`` says 2x, each tried on a fresh copy; the time is that last prune's. LLMs (examples/LLMs/prune_llm.py):
  ``GroupMagnitudeImportance(p=2, group_reduction="mean")``, ``num_heads`` for q / k / v (query and
  key/value head counts), ``prune_num_heads=True, prune_head_dims=False``, ``head_pruning_ratio`` as
  the channel ratio, ``round_to=4``. Other transformers (examples/transformers/prune_hf_vit.py):
  ``num_heads`` for q / k / v, ``prune_head_dims=True, prune_num_heads=False``. timm
  (examples/timm_models/prune_timm_models.py): ``num_heads`` for every ``qkv``, ``round_to=8``,
  ``TIMM_FUSED_ATTN=0``. All: the output layer ignored, unwrapped parameters (norm weights,
  tokens, position embeddings) found by Torch-Pruning itself, and afterwards, as its examples
  do, the attention modules' head count / head size attributes set from the pruned layers.
  Reached means >= 2x by ``count_flops`` and outputs of the original shapes.

For both: which widths shrank (summed over layers: ``hidden``, ``attn`` = query / qkv rows,
``mlp`` = first MLP projection), the prune time, and the CPU latency ratio original / pruned
at batch 8, one thread (``fxmeta.pipeline.latency.compare_latency``: both timed in
alternation). Every (model, tool) pair runs in its own process with a time limit.

    python -m benchmarks.coverage_transformers [--models NAME,...] [--timeout 240]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "coverage_transformers.md"
TOOLS = ("ours", "tp")
LATENCY = dict(batch=8, threads=1, warmup=3, repeats=15, max_seconds=4.0)
OURS = dict(speedup=2.0, importance="l2", min_keep=0.5, round_to=8)
TP_RATIOS = [round(0.2 + 0.05 * i, 2) for i in range(15)]  # 0.2 ... 0.9


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:240]


def _first_tensor(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out[0]  # a ModelOutput's first field (logits ...)


def _widths(entry, module) -> dict[str, int]:
    params = dict(module.named_parameters(remove_duplicate=False))  # tied: every name its model uses
    found = {}
    for what, probe in (("hidden", entry.hidden), ("attn", entry.attn), ("mlp", entry.mlp)):
        if probe is not None:
            rx, dim = probe
            names = [rx] if rx in params else [n for n in params if re.search(rx, n)]
            found[what] = sum(params[n].shape[dim] for n in names)
    return found


def _measure(entry, model, pruned, x, seconds: float, extra: dict | None = None) -> dict:
    import torch

    from fxmeta import count_flops
    from fxmeta.pipeline.latency import compare_latency

    with torch.no_grad():
        want, got = _first_tensor(model(x)), _first_tensor(pruned(x))
    speedup = count_flops(model, x) / max(count_flops(pruned, x), 1)
    before, after = compare_latency([model, pruned], x, **LATENCY)
    widths = {k: (v, _widths(entry, pruned)[k]) for k, v in _widths(entry, model).items()}
    ok = speedup >= 2.0 and want.shape == got.shape
    why = "" if ok else ("wrong output shape" if want.shape != got.shape else "target not reached")
    return {"status": "yes" if ok else "no", "why": why, "speedup": speedup, "seconds": seconds,
            "widths": widths, "latency_ratio": before.median_ms / after.median_ms,
            "latency_ms": [before.median_ms, after.median_ms], **(extra or {})}


# --------------------------------------------------------------------------- the two tools


def cell_ours(name: str) -> dict:
    import fxmeta
    from benchmarks.transformer_models import MODELS

    entry = MODELS[name]
    model, x = entry.build()
    t0 = time.perf_counter()
    try:
        result = fxmeta.prune(model, x, **OURS)  # self-checked
    except Exception as exc:  # noqa: BLE001 - the failure is the result
        return {"status": "no", "why": _first_line(exc), "seconds": time.perf_counter() - t0}
    return _measure(entry, model, result.module, x, time.perf_counter() - t0)


_QUERY = ("q_proj", "query", "q", "qkv", "c_attn")
_HEAD_COUNT = ("num_heads", "num_attention_heads", "n_heads")
_HEAD_SIZE = ("head_dim", "attention_head_size", "key_value_proj_dim")
_ATTN_WIDTH = ("all_head_size", "inner_dim", "attn_dim", "split_size")


def _attention(model):
    """(attention module, its query projection, [its key / value projections], fused qkv?)."""
    for m in model.modules():
        kids = dict(m.named_children())
        q = next((kids[k] for k in _QUERY if k in kids), None)
        if q is None or not any(hasattr(m, a) for a in _HEAD_COUNT + _HEAD_SIZE):
            continue
        kv = [kids[k] for k in ("k_proj", "v_proj", "key", "value", "k", "v") if k in kids]
        yield m, q, kv, not kv


def _heads(m) -> int:
    return next(getattr(m, a) for a in _HEAD_COUNT if hasattr(m, a))


def _out_features(layer) -> int:
    return layer.weight.shape[1] if type(layer).__name__ == "Conv1D" else layer.weight.shape[0]  # GPT-2: (in, out)


def _tp_pruner(entry, model, x, ratio: float):
    import torch_pruning as tp

    num_heads, llm = {}, entry.family == "llm"
    for m, q, kv, _ in _attention(model):
        if llm:  # query heads on q_proj, key/value heads on k_proj and v_proj
            num_heads[q] = q.out_features // m.head_dim
            for layer in kv:
                num_heads[layer] = layer.out_features // m.head_dim
        else:
            for layer in [q, *kv]:
                num_heads[layer] = _heads(m)
    if entry.family == "timm":
        ignored = [model.get_classifier()]
    else:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head = head or getattr(model, "classifier", None)
        ignored = [head] if head is not None else []
    options = dict(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4) if llm else \
        dict(prune_head_dims=True, prune_num_heads=False, round_to=8 if entry.family == "timm" else None)
    importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean") if llm else \
        tp.importance.GroupMagnitudeImportance(p=2)
    return tp.pruner.MetaPruner(model, x, importance=importance, global_pruning=False, pruning_ratio=ratio,
                                ignored_layers=ignored, num_heads=num_heads, output_transform=_first_tensor,
                                **options)


def _tp_sync_attention(model, pruner) -> None:
    """What Torch-Pruning's examples do after a step: the attention modules' sizes from their layers."""
    for m, q, _, fused in _attention(model):
        width = _out_features(q) // (3 if fused else 1)
        heads = pruner.num_heads.get(q, _heads(m))
        for attrs, value in ((_HEAD_COUNT, heads), (_HEAD_SIZE, width // heads), (_ATTN_WIDTH, width)):
            for a in attrs:
                if hasattr(m, a):
                    setattr(m, a, value)


def _tp_sync_llm(model) -> None:
    # prune_head_dims=False keeps the head size (and RoPE); the query heads per key/value head follow the layers
    for m, q, kv, _ in _attention(model):
        if kv:
            m.num_key_value_groups = max(q.out_features // kv[0].out_features, 1)


def cell_tp(name: str) -> dict:
    os.environ["TIMM_FUSED_ATTN"] = "0"  # as Torch-Pruning's timm example: attention as plain ops
    from benchmarks.transformer_models import MODELS
    from fxmeta import count_flops

    entry = MODELS[name]
    model, x = entry.build()
    base = count_flops(model, x)
    for ratio in TP_RATIOS:  # its examples prune once, at a ratio: the smallest that reaches 2x
        work = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            pruner = _tp_pruner(entry, work, x, ratio)
            for group in pruner.step(interactive=True):
                group.prune()
            if entry.family == "llm":
                _tp_sync_llm(work)
            else:
                _tp_sync_attention(work, pruner)
            seconds = time.perf_counter() - t0
            speed = base / max(count_flops(work, x), 1)
        except Exception as exc:  # noqa: BLE001 - the baseline's own failure is the result
            return {"status": "no", "why": f"ratio {ratio:.2f}: {_first_line(exc)}",
                    "seconds": time.perf_counter() - t0}
        if speed >= 2.0:
            break
    try:
        return _measure(entry, model, work, x, seconds, {"ratio": ratio})
    except Exception as exc:  # noqa: BLE001 - pruned, then fails to run
        return {"status": "no", "why": f"ratio {ratio:.2f}, pruned model fails: {_first_line(exc)}",
                "seconds": seconds}


def run_cell(name: str, tool: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        result = {"ours": cell_ours, "tp": cell_tp}[tool](name)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the table
        result = {"status": "no", "why": _first_line(exc), "trace": traceback.format_exc()[-2000:]}
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- driver and table


def _spawn(name: str, tool: str, timeout: int) -> dict:
    from benchmarks._env import spawn_cell

    return spawn_cell("benchmarks.coverage_transformers", ["--cell", name, tool], timeout)


def _fmt_widths(cell: dict) -> str:
    cut = [f"{k} {a}→{b}" for k, (a, b) in cell.get("widths", {}).items() if b < a]
    return ", ".join(cut) or "none"


def _fmt(cell: dict) -> str:
    at = f" at ratio {cell['ratio']:.2f}" if "ratio" in cell else ""  # Torch-Pruning's pruning ratio
    if cell["status"] == "yes":
        return (f"yes {cell['speedup']:.2f}x{at}, {cell['seconds']:.1f} s | {_fmt_widths(cell)} | "
                f"{cell['latency_ratio']:.2f}x ({cell['latency_ratio'] / cell['speedup']:.2f})")
    measured = f" {cell['speedup']:.2f}x{at}" if "speedup" in cell else ""
    seconds = f", {cell['seconds']:.1f} s" if "seconds" in cell else ""
    rest = f"{_fmt_widths(cell)} | {cell['latency_ratio']:.2f}x" if "latency_ratio" in cell else "- | -"
    return f"no{measured}: {cell.get('why', '')}{seconds}".replace("|", "/") + f" | {rest}"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"
    return f"transformers {v('transformers')}, timm {v('timm')}, torch-pruning {v('torch-pruning')}"


def write_table(cache: dict, names: list[str], args) -> None:
    from benchmarks._env import header
    from benchmarks.transformer_models import MODELS

    done = [n for n in names if n in cache]
    count = {t: sum(cache[n].get(t, {}).get("status") == "yes" for n in done) for t in TOOLS}
    loads = [cache[n]["load"] for n in done if "load" in cache[n]]
    lines = [
        "# Coverage: transformers families and timm architectures at 2x fewer FLOPs",
        "",
        header(f"python -m benchmarks.coverage_transformers --timeout {args.timeout}", 1,
               "model init torch.manual_seed(0), inputs seed 0").rstrip(),
        f"- {_versions()}; fxmeta from this tree",
        f"- 1-minute load average while the cells ran: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; "
        "every cell its own process, pinned to one core by the command that ran this"
        if loads else "- load average not recorded",
        "- random weights; token models batch 8 x 64 ids (vocabulary 2000); timm models pruned on one image, "
        "timed at batch 8",
        f"- ours: `fxmeta.prune(model, x, {', '.join(f'{k}={v!r}' for k, v in OURS.items())})`, self-check on "
        "(min_keep=0.5: every group keeps half, so the removal spreads over the widths instead of draining the "
        "MLP first, which L2 on random weights would do)",
        "- Torch-Pruning: its example settings (see the module docstring), one prune at the smallest ratio of "
        "0.2, 0.25 ... 0.9 that reaches 2x by count_flops; time: that prune (dependency graph + step)",
        "- widths: summed over layers, original→pruned (hidden = model width, attn = query / qkv rows, "
        "mlp = first MLP projection); latency: original / pruned median at batch 8, 1 thread, "
        "in parentheses divided by the FLOPs ratio (1.0: latency falls as much as FLOPs)",
        "",
        f"**Models: {len(done)}. Ours reached 2x with the self-check passing: {count['ours']} of {len(done)}. "
        f"Torch-Pruning reached 2x: {count['tp']} of {len(done)}.**",
        "",
        "| model | config | ours | ours: widths cut | ours: latency ratio | Torch-Pruning | TP: widths cut "
        "| TP: latency ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in done:
        cells = [_fmt(cache[n][t]) if t in cache[n] else "not run | - | -" for t in TOOLS]
        lines.append(f"| {n} | {MODELS[n].note} | " + " | ".join(cells) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per cell")
    parser.add_argument("--cache", default=str(RESULTS.with_suffix(".json")),
                        help="finished cells, kept between runs (default: the results table's .json)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached cells")
    parser.add_argument("--cell", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        run_cell(args.cell[0], args.cell[1], args.out)
        return
    from benchmarks.transformer_models import MODELS

    names = [n for n in args.models.split(",") if n] or list(MODELS)
    cache_path = Path(args.cache)
    cache = {} if args.fresh or not cache_path.exists() else json.loads(cache_path.read_text())
    for name in names:
        entry = cache.setdefault(name, {})
        for tool in TOOLS:
            if tool not in entry:
                entry[tool] = _spawn(name, tool, args.timeout)
                entry["load"] = os.getloadavg()[0]
                print(f"{name:34s} {tool:4s} {_fmt(entry[tool])}", flush=True)
                cache_path.write_text(json.dumps(cache, indent=1))
        write_table(cache, names, args)


if __name__ == "__main__":
    main()
