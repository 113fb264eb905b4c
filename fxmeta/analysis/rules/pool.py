"""Rules for pooling, resizing and reductions: channels pass, pooled or reduced dims change."""
from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from ..context import Context
from ..spaces import Dims, frozen_value
from .common import freeze_all, norm_dim
from .statistics import call, narrow

# --------------------------------------------------------------------------- pooling, reductions


def pool(k_of: Callable[[Context, fx.Node], int]):
    """Pooling / resizing over the last k dims: other dims keep their ids, pooled dims get none."""

    def rule(ctx: Context, node: fx.Node) -> Any:
        meta = ctx.meta(node)
        if not hasattr(meta, "shape"):
            return freeze_all(ctx, node)  # e.g. return_indices
        x = node.args[0]
        dims = Dims(ctx.dims(x))
        k = k_of(ctx, node)
        if len(ctx.shape(node)) != len(dims):
            return freeze_all(ctx, node)
        for i in range(len(dims) - k, len(dims)):
            ctx.freeze(dims[i], reason="pooled dim")
            dims[i] = None
        return dims

    return rule


def pool_dims_from_name(ctx: Context, node: fx.Node) -> int:
    target = node.target if node.op != "call_module" else type(ctx.module(node))
    name = getattr(target, "__name__", str(target)).lower()
    for k in (1, 2, 3):
        if f"{k}d" in name:
            return k
    return len(ctx.shape(node.args[0])) - 2


def interpolate_dims(ctx: Context, node: fx.Node) -> int:
    return len(ctx.shape(node.args[0])) - 2


def reduction(kind: str):
    """sum-like reductions drop dims exactly; mean / var / std over a channel dim are statistics
    over the kept entries (``rules.statistics``); max over a channel dim freezes it."""

    def rule(ctx: Context, node: fx.Node) -> Any:
        x = node.args[0]
        meta = ctx.meta(node)
        dims = list(ctx.dims(x))
        nd = len(dims)
        d = ctx.arg(node, 1, "dim")
        if isinstance(d, fx.Node):
            return freeze_all(ctx, node)
        keep = ctx.arg(node, 2, "keepdim", False)
        if d is None or (isinstance(d, (tuple, list)) and len(d) == 0):
            reduced = list(range(nd))
        else:
            reduced = [norm_dim(i, nd) for i in ([d] if isinstance(d, int) else d)]
        if kind == "max":
            ctx.freeze(*[dims[i] for i in reduced], reason=f"{kind} over this dim")
        elif kind != "sum":
            over = {i: dims[i] for i in reduced if dims[i] is not None}
            if over:
                ctx.on_reference(lambda keep, args, kwargs: call(node, (narrow(keep, args[0], over),) + args[1:],
                                                                 kwargs))
        if not hasattr(meta, "shape"):
            ctx.freeze(*dims)
            return frozen_value(meta)
        out = Dims()
        for i in range(nd):
            if i in reduced:
                if keep:
                    out.append(None)
            else:
                out.append(dims[i])
        return out

    return rule
