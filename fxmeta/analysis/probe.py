"""The probe: an op without a rule runs on marked inputs, and only a verified index map is used."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.fx as fx
from torch import Tensor

from ..keys import TENSOR_META
from .context import Context
from .spaces import FROZEN, Dims, Value, flat_labels

# --------------------------------------------------------------------------- probe


def _call_of(gm: fx.GraphModule, node: fx.Node) -> Callable | None:
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        return lambda self, *a, **k: getattr(self, node.target)(*a, **k)
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            return None  # parameters would have to be sliced too: no probing
        return module
    return None


def probe(ctx: Context, node: fx.Node, trials: int = 2) -> tuple[Value, str]:
    """Find and verify an index map from labelled input entries to output entries.

    Returns the output labels and a short note. Freezes what cannot be proven.
    """
    meta = node.meta.get(TENSOR_META)
    fn = _call_of(ctx.gm, node)
    inputs = [a for a in node.all_input_nodes if ctx.is_tensor(a)]
    labelled = [(a, d) for a in inputs for d, l in enumerate(ctx.dims(a)) if not ctx.is_frozen(l)]
    if not labelled:
        return ctx.frozen_like(node), "no channel inputs"
    integer_inputs = [a for a in inputs if not getattr(ctx.meta(a), "dtype", torch.float32).is_floating_point]
    if integer_inputs:
        # an integer tensor may hold channel numbers (an index): probing with made-up values proves nothing
        ctx.freeze_value(tuple(ctx.value(a) for a in inputs), reason="unknown op with integer tensor inputs")
        return ctx.frozen_like(node), "frozen: integer tensor inputs"
    if fn is None or not hasattr(meta, "shape") or not meta.dtype.is_floating_point:
        ctx.freeze_value(tuple(ctx.value(a) for a in inputs), reason="unknown op, not probeable")
        return ctx.frozen_like(node), "frozen: not probeable"
    gen = torch.Generator().manual_seed(0)

    def example(a: fx.Node) -> Tensor:
        m = a.meta[TENSOR_META]
        if m.dtype.is_floating_point:
            return torch.randn(m.shape, generator=gen, dtype=m.dtype)
        return torch.zeros(m.shape, dtype=m.dtype)

    base = {a: example(a) for a in inputs}

    def run(vals: dict) -> Tensor:
        args = fx.node.map_arg(node.args, lambda a: vals.get(a, a))
        kwargs = fx.node.map_arg(node.kwargs, lambda a: vals.get(a, a))
        with torch.no_grad():
            return fn(*args, **kwargs)

    try:
        out = run(base)
        if not isinstance(out, Tensor) or out.shape != meta.shape:
            raise ValueError("output differs from the traced shape")
        maps: list[tuple[fx.Node, int, int, Tensor]] = []  # (input, in dim, out dim, out entry -> in entry or -1)
        for a, d in labelled:
            found = _index_map(run, base, a, d, out)
            if found is None:
                ctx.freeze(ctx.dims(a)[d], reason="unknown op mixes channels")
            else:
                maps.append((a, d, *found))
        result = Dims([None] * out.dim())
        for a, d, od, idx in maps:
            src = torch.cat([ctx.dims(a)[d], torch.zeros(1, dtype=torch.long)])  # -1 -> frozen id
            mapped = src[idx]
            if result[od] is None:
                result[od] = mapped
            else:
                ctx.union(result[od], mapped)
        if not maps:
            return result, "frozen: no index map"
        if not _verify(ctx, run, base, result, trials):
            raise ValueError("slimmed run disagrees with the index map")
    except Exception as exc:  # noqa: BLE001 - any failure of the op on probes means: freeze
        ctx.freeze_value(tuple(ctx.value(a) for a in inputs), reason=f"unknown op, probe failed: {exc}"[:200])
        return ctx.frozen_like(node), "frozen: probe failed"
    return result, "index map proven by probe"


def _index_map(run, base, a, d, out) -> tuple[int, Tensor] | None:
    """Mark entries of input ``a`` along ``d`` with NaN by bit patterns; decode the map."""
    n = base[a].shape[d]
    bits = max(1, math.ceil(math.log2(n)))
    codes = torch.arange(n)
    hits, misses = [], []
    for b in range(bits):
        marked = ((codes >> b) & 1).bool()
        for sel, store in ((marked, hits), (~marked, misses)):
            x = base[a].clone()
            x.index_fill_(d, sel.nonzero().flatten(), float("nan"))
            store.append(torch.isnan(run({**base, a: x})))
    # The output dim the marks land on: NaN patterns must be whole slabs along it.
    for od in range(out.dim()):
        if out.shape[od] == 1 and n > 1:
            continue
        others = [i for i in range(out.dim()) if i != od]
        ok = True
        slabs = []
        for m in hits + misses:
            anyv = m.amax(dim=others) if others else m
            allv = m.amin(dim=others) if others else m
            if not torch.equal(anyv, allv):
                ok = False
                break
            slabs.append(anyv)
        if not ok:
            continue
        h = torch.stack(slabs[:bits])  # (bits, out_n)
        mi = torch.stack(slabs[bits:])
        dep = h | mi
        none = ~dep.any(0)
        if bool(((h & mi).any(0) | (dep.any(0) & ~dep.all(0))).any()):
            continue  # some output entry depends on several input entries
        idx = (h.long() * (1 << torch.arange(bits))[:, None]).sum(0)
        idx[none] = -1
        if bool((idx >= n).any()) or bool((idx < 0).all()):
            continue
        return od, idx
    return None


def _verify(ctx: Context, run, base, result: Dims, trials: int) -> bool:
    """Remove random units: the op on slimmed inputs must equal the masked full run, sliced."""
    ids = torch.cat([l for l in flat_labels(result)] + [ctx.dims(a)[d] for a in base for d in range(base[a].dim())
                                                        if ctx.dims(a)[d] is not None])
    roots = torch.unique(ctx.uf.find(ids))
    roots = roots[roots != FROZEN]
    if len(roots) < 2:
        return True
    gen = torch.Generator().manual_seed(1)
    for _ in range(trials):
        removed = roots[torch.randperm(len(roots), generator=gen)[: max(1, len(roots) // 2)]]

        def keep_of(labels: Tensor | None, removed: Tensor = removed):
            if labels is None:
                return None
            return ~torch.isin(ctx.uf.find(labels), removed)

        masked, small = {}, {}
        for a, x in base.items():
            xm, xs = x, x
            for d, l in enumerate(ctx.dims(a)):
                k = keep_of(l)
                if k is None:
                    continue
                shape = [1] * x.dim()
                shape[d] = -1
                xm = torch.where(k.view(shape), xm, torch.zeros((), dtype=x.dtype))
                xs = xs.index_select(d, k.nonzero().flatten())
            masked[a], small[a] = xm, xs
        full = run(masked)
        got = run(small)
        for d, l in enumerate(result):
            k = keep_of(l)
            if k is not None:
                full = full.index_select(d, k.nonzero().flatten())
        if got.shape != full.shape or not torch.allclose(got, full, rtol=1e-5, atol=1e-6, equal_nan=True):
            return False
    return True


