"""Rules for layers with weights (conv, linear, embedding) and for products (matmul, einsum)."""
from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..context import Context
from ..spaces import Dims
from .common import freeze_all, pad_ids, prod_of, set_arg, unite_rows

# --------------------------------------------------------------------------- conv / linear


def _conv(ctx: Context, node: fx.Node, x: fx.Node, w: Dims, b: Dims | None, wshape, groups: int,
          transposed: bool) -> tuple[Dims, str]:
    xs = ctx.shape(x)
    k = len(wshape) - 2
    cdim = len(xs) - k - 1
    cin = xs[cdim]
    out_shape = ctx.shape(node)
    g = groups
    cin_g = cin // g
    xc = ctx.dims(x)[cdim]
    if transposed:
        w_in, w_out = w[0], w[1]
        cout_g = wshape[1]
    else:
        w_out, w_in = w[0], w[1]
        cout_g = wshape[0] // g
    for i in range(cdim + 1, len(xs)):
        ctx.freeze(ctx.dims(x)[i], reason="spatial dim of a convolution")
    ctx.freeze(*w[2:])  # kernel taps
    if g == 1:
        mode = "dense"
        ctx.union(xc, w_in)
        out_c = w_out
    elif cin_g == 1:
        # Depthwise-like: a unit is a whole group (one input channel and its outputs).
        mode = "groups"
        xcid = pad_ids(ctx, xc, cin)
        if transposed:
            ctx.union(xc, w_in)
            ctx.freeze(w_out)
            out_c = None if xc is None else xcid.repeat_interleave(cout_g)
        else:
            wo = pad_ids(ctx, w_out, wshape[0]).view(g, cout_g)
            unite_rows(ctx, wo)
            ctx.union(xcid, wo[:, 0])
            out_c = w_out if w_out is not None else (None if xc is None else xcid.repeat_interleave(cout_g))
    else:
        # Grouped: the same entry of every group goes together, the group count stays.
        mode = "uniform"
        xcid = pad_ids(ctx, xc, cin).view(g, cin_g)
        if transposed:
            wi = pad_ids(ctx, w_in, cin).view(g, cin_g)
            ctx.union(xcid.reshape(-1), wi.reshape(-1))
            unite_rows(ctx, wi.t())
            out_c = None if w_out is None else w_out.repeat(g)
        else:
            wi = pad_ids(ctx, w_in, cin_g)
            ctx.union(xcid.reshape(-1), wi.repeat(g))
            unite_rows(ctx, pad_ids(ctx, w_out, wshape[0]).view(g, cout_g).t())
            out_c = w_out
    if b is not None:
        ctx.union(b[0], out_c)
    out = Dims([None] * len(out_shape))
    for i in range(cdim):
        out[i] = ctx.dims(x)[i]  # batch dims pass through
    out[cdim] = out_c
    spatial = xs[cdim + 1:] if transposed else out_shape[cdim + 1:]
    batch = prod_of(xs[:cdim])
    ctx.flops(2 * batch * prod_of(spatial) * prod_of(wshape[2:]), w[0] if wshape[0] > 1 else None,
              w[1] if wshape[1] > 1 else None)
    return out, mode


def _conv_slim_groups(mode: str, groups: int, cin_g_orig: int):
    def groups_after(in_channels: int) -> int:
        if mode == "groups":
            return in_channels // cin_g_orig
        return groups

    return groups_after


def conv_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    w = ctx.module_param(node, "weight")
    b = ctx.module_param(node, "bias")
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    out, mode = _conv(ctx, node, node.args[0], w, b, m.weight.shape, m.groups, transposed)
    cin_g = m.in_channels // m.groups
    after = _conv_slim_groups(mode, m.groups, cin_g)
    x = node.args[0]

    def slim(s, new_node):
        mod = s.module(new_node.target)
        xs = s.new_shape(x)
        cdim = len(xs) - (mod.weight.dim() - 2) - 1
        mod.in_channels = xs[cdim]
        mod.groups = after(mod.in_channels)
        mod.out_channels = mod.weight.shape[1] * mod.groups if transposed else mod.weight.shape[0]

    ctx.on_slim(slim)
    return out


def conv_function(ctx: Context, node: fx.Node) -> Dims:
    transposed = node.target in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
    wnode = ctx.arg(node, 1, "weight")
    bnode = ctx.arg(node, 2, "bias")
    gi = 6 if not transposed else 6
    groups = ctx.arg(node, gi, "groups", 1)
    if isinstance(groups, fx.Node) or not isinstance(wnode, fx.Node):
        return freeze_all(ctx, node)
    w = ctx.dims(wnode)
    b = ctx.dims(bnode) if isinstance(bnode, fx.Node) else None
    wshape = ctx.shape(wnode)
    out, mode = _conv(ctx, node, node.args[0], w, b, wshape, groups, transposed)
    if mode == "groups":
        cin_g = wshape[1] if not transposed else 1
        x = node.args[0]

        def slim(s, new_node):
            xs = s.new_shape(x)
            cdim = len(xs) - (len(wshape) - 2) - 1
            new_groups = xs[cdim] // (cin_g if not transposed else 1)
            set_arg(new_node, gi, "groups", new_groups)

        ctx.note_constant("groups")
        ctx.on_slim(slim)
    return out


def _linear(ctx: Context, node: fx.Node, x: fx.Node, w: Dims, b: Dims | None, wshape) -> Dims:
    xd = ctx.dims(x)
    ctx.union(xd[-1], w[1] if len(w) > 1 else None)
    if b is not None:
        ctx.union(b[0], w[0])
    out = Dims(xd[:-1]) + Dims([w[0]])
    ctx.flops(2 * prod_of(ctx.shape(x)[:-1]), w[0], w[1] if len(w) > 1 else None)
    return Dims(out)


def linear_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    out = _linear(ctx, node, node.args[0], ctx.module_param(node, "weight"), ctx.module_param(node, "bias"),
                  m.weight.shape)

    def slim(s, new_node):
        mod = s.module(new_node.target)
        mod.out_features, mod.in_features = mod.weight.shape

    ctx.on_slim(slim)
    return out


def linear_function(ctx: Context, node: fx.Node) -> Dims:
    wnode = ctx.arg(node, 1, "weight")
    bnode = ctx.arg(node, 2, "bias")
    if not isinstance(wnode, fx.Node) or len(ctx.shape(wnode)) != 2:
        return freeze_all(ctx, node)
    b = ctx.dims(bnode) if isinstance(bnode, fx.Node) else None
    return _linear(ctx, node, node.args[0], ctx.dims(wnode), b, ctx.shape(wnode))


def addmm(ctx: Context, node: fx.Node) -> Dims:
    """``torch.addmm(bias, x, w)`` with ``w`` of shape (in, out): a linear layer with its weight
    stored transposed (GPT-2's ``Conv1D``)."""
    b, x, w = node.args[:3]
    if len(node.args) > 3 or node.kwargs or not all(isinstance(t, fx.Node) for t in (b, x, w)):
        return freeze_all(ctx, node)
    bd, xd, wd = ctx.dims(b), ctx.dims(x), ctx.dims(w)
    if len(bd) != 1 or len(xd) != 2 or len(wd) != 2:
        return freeze_all(ctx, node)
    ctx.union(xd[1], wd[0])
    ctx.union(bd[0], wd[1])
    ctx.flops(2 * ctx.shape(x)[0], wd[0], wd[1])
    return Dims([xd[0], wd[1]])


def embedding_module(ctx: Context, node: fx.Node) -> Dims:
    w = ctx.module_param(node, "weight")
    ctx.freeze(w[0], reason="embedding rows are looked up by index")
    out = Dims([None] * len(ctx.shape(node)))
    out[-1] = w[1]

    def slim(s, new_node):
        mod = s.module(new_node.target)
        mod.embedding_dim = mod.weight.shape[1]

    ctx.on_slim(slim)
    return out



# --------------------------------------------------------------------------- products


def matmul(ctx: Context, node: fx.Node) -> Dims:
    a, b = node.args[0], node.args[1]
    sa, sb = list(ctx.shape(a)), list(ctx.shape(b))
    da, db = list(ctx.dims(a)), list(ctx.dims(b))
    if len(sa) < 2 or len(sb) < 2:
        return freeze_all(ctx, node)
    ctx.union(da[-1], db[-2])
    os = ctx.shape(node)
    nb = len(os) - 2
    out = Dims([None] * len(os))
    for i in range(nb):
        same = []
        for s, d in ((sa, da), (sb, db)):
            j = i - (nb - (len(s) - 2))
            if j >= 0 and s[j] == os[i]:
                same.append(d[j])
        if same:
            ctx.union(*same)
            out[i] = None if any(l is None for l in same) else same[0]
    out[-2], out[-1] = da[-2], db[-1]
    coef = 2 * prod_of([os[i] for i in range(nb) if out[i] is None])
    ctx.flops(coef * (sa[-2] if da[-2] is None else 1) * (sa[-1] if da[-1] is None else 1)
              * (sb[-1] if db[-1] is None else 1),
              *[out[i] for i in range(nb)], da[-2], da[-1], db[-1])
    return out


def einsum(ctx: Context, node: fx.Node) -> Dims:
    eq = node.args[0]
    operands = list(node.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if not isinstance(eq, str) or "..." in eq or "->" not in eq:
        return freeze_all(ctx, node)
    lhs, rhs = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    if len(specs) != len(operands) or not all(ctx.is_tensor(o) for o in operands):
        return freeze_all(ctx, node)
    letters: dict[str, list] = {}
    sizes: dict[str, int] = {}
    for spec, o in zip(specs, operands):
        for ch, l, n in zip(spec, ctx.dims(o), ctx.shape(o)):
            if n == 1 and sizes.get(ch, 1) != 1:
                continue  # broadcast
            letters.setdefault(ch, []).append(l)
            sizes[ch] = n
    label = {}
    for ch, ls in letters.items():
        if len(ls) > 1:
            ctx.union(*ls)
        label[ch] = None if any(l is None for l in ls) else ls[0]
    counted = [ch for ch in sizes if ch in rhs or sum(ch in s for s in specs) > 1]
    if len(operands) == 2:
        coef = 2 * prod_of(sizes[ch] for ch in counted if label[ch] is None)
        ctx.flops(coef, *[label[ch] for ch in counted])
    return Dims([label.get(ch) for ch in rhs])
