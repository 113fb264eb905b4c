"""Rules for entry-by-entry ops (activations, arithmetic), identity ops, and ops that
normalise over one dim (softmax)."""
from __future__ import annotations

from typing import Any

import torch.fx as fx

from ..context import Context
from ..spaces import Dims, frozen_value
from .common import broadcast_dims, freeze_all, norm_dim

# --------------------------------------------------------------------------- elementwise


def elementwise(ctx: Context, node: fx.Node) -> Dims:
    """Any op applied entry by entry (with broadcasting) over its tensor operands."""
    if not hasattr(ctx.meta(node), "shape"):
        return frozen_value(ctx.meta(node))
    return broadcast_dims(ctx, node, list(node.args) + list(node.kwargs.values()))


def first_arg(ctx: Context, node: fx.Node) -> Dims:
    """Ops that return their first argument's labels unchanged (contiguous, clone, to ...)."""
    if not hasattr(ctx.meta(node), "shape") or ctx.shape(node) != ctx.shape(node.args[0]):
        return freeze_all(ctx, node)
    return Dims(ctx.dims(node.args[0]))


def metadata(ctx: Context, node: fx.Node) -> Any:
    """Ops that read shapes only (size, dim, shape ...): no channel ids in the result."""
    if hasattr(ctx.meta(node), "shape") or isinstance(ctx.meta(node), (tuple, list)):
        return freeze_all(ctx, node)  # e.g. getattr(x, "T") is a tensor after all
    return frozen_value(ctx.meta(node))


def assert_metadata(ctx: Context, node: fx.Node) -> Any:
    """``torch._assert_tensor_metadata``: dtype / device / layout checks hold after slimming;
    a checked size or stride would not, so it freezes the tensor."""
    if ctx.arg(node, 1, "size") is not None or ctx.arg(node, 2, "stride") is not None:
        ctx.freeze_value(ctx.value(node.args[0]), reason="size asserted")
    return None


def freeze_dim(dim_index: int, arg_name: str = "dim", default: int = -1):
    """Rule for ops that normalise over one dim (softmax ...): that dim is frozen."""

    def rule(ctx: Context, node: fx.Node) -> Dims:
        x = node.args[0]
        nd = len(ctx.shape(x))
        d = ctx.arg(node, dim_index, arg_name, default)
        if d is None:
            ctx.freeze(*ctx.dims(x), reason=f"{node.target} over all dims")
            return frozen_value(ctx.meta(node))
        dims = Dims(ctx.dims(x))
        d = norm_dim(d, nd)
        ctx.freeze(dims[d], reason="normalised over this dim")
        dims[d] = None
        return dims

    return rule


def softmax_module(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    d = ctx.module(node).dim
    if d is None:
        ctx.freeze(*dims)
        return frozen_value(ctx.meta(node))
    d = norm_dim(d, len(dims))
    ctx.freeze(dims[d], reason="softmax over this dim")
    dims[d] = None
    return dims
