"""Rules for per-channel norms (batch, instance, group, layer norm) and PReLU."""
from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..context import Context
from ..spaces import Dims
from .common import freeze_all, set_arg, unite_rows
from .statistics import narrow, widen

# --------------------------------------------------------------------------- norms


def _channel_dim(ctx: Context, x: fx.Node, spatial_min: int = 0) -> int:
    return 1 if len(ctx.shape(x)) >= 2 else 0


def batchnorm_module(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    c = _channel_dim(ctx, x)
    owned = [ctx.module_param(node, a) for a in ("weight", "bias", "running_mean", "running_var")]
    ctx.union(dims[c], *[p[0] for p in owned if p is not None])

    def slim(s, new_node):
        s.module(new_node.target).num_features = s.new_shape(x)[c]

    ctx.on_slim(slim)
    return dims


def instancenorm_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    k = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}.get(type(m), 2)
    c = len(dims) - k - 1
    owned = [ctx.module_param(node, a) for a in ("weight", "bias", "running_mean", "running_var")]
    for p in owned:
        if p is not None:
            ctx.union(dims[c], p[0])

    def slim(s, new_node):
        s.module(new_node.target).num_features = s.new_shape(x)[c]

    ctx.on_slim(slim)
    return dims


def _groupnorm(ctx: Context, x: fx.Node, num_groups: int, params: list[Dims | None]) -> Dims:
    dims = Dims(ctx.dims(x))
    c = dims[1]
    n = ctx.shape(x)[1]
    # A unit is a whole group: the statistics of the other groups do not change.
    if c is not None:
        unite_rows(ctx, c.view(num_groups, n // num_groups))
    for p in params:
        if p is not None:
            ctx.union(c, p[0])
    return dims


def groupnorm_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    x = node.args[0]
    per_group = m.num_channels // m.num_groups
    dims = _groupnorm(ctx, x, m.num_groups, [ctx.module_param(node, "weight"), ctx.module_param(node, "bias")])

    def slim(s, new_node):
        mod = s.module(new_node.target)
        mod.num_channels = s.new_shape(x)[1]
        mod.num_groups = mod.num_channels // per_group

    ctx.note_constant("num_groups")
    ctx.on_slim(slim)
    return dims


def groupnorm_function(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    g = ctx.arg(node, 1, "num_groups")
    w, b = ctx.arg(node, 2, "weight"), ctx.arg(node, 3, "bias")
    if isinstance(g, fx.Node):
        return freeze_all(ctx, node)
    per_group = ctx.shape(x)[1] // g
    dims = _groupnorm(ctx, x, g, [ctx.dims(a) if isinstance(a, fx.Node) else None for a in (w, b)])

    def slim(s, new_node):
        set_arg(new_node, 1, "num_groups", s.new_shape(x)[1] // per_group)

    ctx.note_constant("num_groups")
    ctx.on_slim(slim)
    return dims


def _layernorm(ctx: Context, node: fx.Node, x: fx.Node, nshape, params: list[Dims | None], eps: float) -> Dims:
    """Over one normalised dim its channels are removable: the pruned norm's statistics run over
    the kept entries, and so do the reference's (``rules.statistics``). Over several they stay."""
    dims = Dims(ctx.dims(x))
    k = len(nshape)
    if k != 1:
        for i in range(len(dims) - k, len(dims)):
            ctx.freeze(dims[i], reason="LayerNorm statistics run over several dims")
            dims[i] = None
        for p in params:
            if p is not None:
                ctx.freeze(*p)
        return dims
    c = dims[-1]
    ctx.union(c, *[p[0] for p in params if p is not None])
    if c is None:
        return dims

    def reference(keep, args, kwargs):
        x_, w, b = _layernorm_tensors(ctx, node, args, kwargs)
        y = F.layer_norm(narrow(keep, x_, {x_.dim() - 1: c}), (int(keep(c).sum()),),
                         None if w is None else narrow(keep, w, {0: c}),
                         None if b is None else narrow(keep, b, {0: c}), eps)
        return widen(keep, y, x_, x_.dim() - 1, c)

    ctx.on_reference(reference)
    return dims


def _layernorm_tensors(ctx: Context, node: fx.Node, args: tuple, kwargs: dict) -> tuple:
    """Input, weight and bias of a LayerNorm call as the interpreter sees them."""
    if node.op == "call_module":
        m = ctx.module(node)
        return args[0], m.weight, m.bias
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    b = args[3] if len(args) > 3 else kwargs.get("bias")
    return args[0], w, b


def layernorm_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    dims = _layernorm(ctx, node, node.args[0], m.normalized_shape,
                      [ctx.module_param(node, "weight"), ctx.module_param(node, "bias")], m.eps)
    x = node.args[0]

    def slim(s, new_node):
        s.module(new_node.target).normalized_shape = (int(s.new_shape(x)[-1]),)

    if len(m.normalized_shape) == 1:
        ctx.on_slim(slim)
    return dims


def layernorm_function(ctx: Context, node: fx.Node) -> Dims:
    ns = ctx.arg(node, 1, "normalized_shape")
    w, b = ctx.arg(node, 2, "weight"), ctx.arg(node, 3, "bias")
    eps = ctx.arg(node, 4, "eps", 1e-5)
    if isinstance(ns, fx.Node) or isinstance(eps, fx.Node):
        return freeze_all(ctx, node)
    ns = [ns] if isinstance(ns, int) else list(ns)
    x = node.args[0]
    dims = _layernorm(ctx, node, x, ns, [ctx.dims(a) if isinstance(a, fx.Node) else None for a in (w, b)], eps)

    def slim(s, new_node):
        set_arg(new_node, 1, "normalized_shape", (int(s.new_shape(x)[-1]),))

    if len(ns) == 1:
        ctx.on_slim(slim)
    return dims


def batchnorm_function(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    names = [(1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")]
    for i, n in names:
        a = ctx.arg(node, i, n)
        if isinstance(a, fx.Node):
            ctx.union(dims[1], ctx.dims(a)[0])
    return dims


def prelu_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    if m.weight.numel() > 1:
        ctx.union(dims[_channel_dim(ctx, x)], ctx.module_param(node, "weight")[0])

    def slim(s, new_node):
        mod = s.module(new_node.target)
        mod.num_parameters = mod.weight.numel()

    ctx.on_slim(slim)
    return dims
