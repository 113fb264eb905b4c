"""Per-op channel rules: one table from op to the function that relates its channel ids.

A rule is ``rule(ctx, node) -> labels of the node's output`` (see ``fxmeta.channels``
for ``Context`` and ``Dims``). It unites, maps or freezes the id vectors of its inputs
and parameters, records FLOPs terms, and registers a slimming hook when the op holds
forward-code constants (view sizes, split sizes, head counts, module attributes).

Keys: module classes (``call_module``), functions (``call_function``) and method names
(``call_method``). Extending the table is one line::

    RULES[MyActivation] = elementwise

Ops missing from the table are probed or frozen by ``fxmeta.channels``, never guessed.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..channels import Context, Dims, frozen_value

# --------------------------------------------------------------------------- helpers


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _set_arg(node: fx.Node, index: int, name: str, value: Any) -> None:
    """Set a call's argument: positional ``index`` when given that way, else keyword ``name``."""
    if len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def _tensor_args(ctx: Context, node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if ctx.is_tensor(a)]


def _norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def _pad_ids(ctx: Context, labels: Tensor | None, n: int) -> Tensor:
    """An id vector even where the labels are None (frozen entries)."""
    return torch.zeros(n, dtype=torch.long) if labels is None else labels


def _unite_rows(ctx: Context, rows: Tensor) -> None:
    """Unite all entries of each row of a 2-D id matrix (one call, no Python loop)."""
    if rows.shape[1] > 1:
        ctx.union(rows[:, :1].expand_as(rows).reshape(-1), rows.reshape(-1))


def _cat_labels(parts: list[Tensor | None], sizes: list[int]) -> Tensor | None:
    if all(p is None for p in parts):
        return None
    return torch.cat([torch.zeros(n, dtype=torch.long) if p is None else p for p, n in zip(parts, sizes)])


def _broadcast(ctx: Context, node: fx.Node, operands: list[Any]) -> Dims:
    """Elementwise with broadcasting: same-sized dims are united, broadcast dims follow the big side."""
    out_shape = ctx.shape(node)
    nd = len(out_shape)
    out = Dims([None] * nd)
    for i in range(nd):
        same = []
        for a in operands:
            if not ctx.is_tensor(a):
                continue
            shape = ctx.shape(a)
            j = i - (nd - len(shape))
            if j < 0:
                continue
            if shape[j] == out_shape[i]:
                same.append(ctx.dims(a)[j])
            else:  # a size-1 dim broadcast against a bigger one must keep its size
                ctx.freeze(ctx.dims(a)[j], reason="broadcast dim")
        if not same:
            continue
        if len(same) > 1:
            ctx.union(*same)
        out[i] = None if any(l is None for l in same) else same[0]
    return out


# --------------------------------------------------------------------------- elementwise


def elementwise(ctx: Context, node: fx.Node) -> Dims:
    """Any op applied entry by entry (with broadcasting) over its tensor operands."""
    if not hasattr(ctx.meta(node), "shape"):
        return frozen_value(ctx.meta(node))
    return _broadcast(ctx, node, list(node.args) + list(node.kwargs.values()))


def first_arg(ctx: Context, node: fx.Node) -> Dims:
    """Ops that return their first argument's labels unchanged (contiguous, clone, to ...)."""
    if not hasattr(ctx.meta(node), "shape") or ctx.shape(node) != ctx.shape(node.args[0]):
        return _freeze_all(ctx, node)
    return Dims(ctx.dims(node.args[0]))


def metadata(ctx: Context, node: fx.Node) -> Any:
    """Ops that read shapes only (size, dim, shape ...): no channel ids in the result."""
    if hasattr(ctx.meta(node), "shape") or isinstance(ctx.meta(node), (tuple, list)):
        return _freeze_all(ctx, node)  # e.g. getattr(x, "T") is a tensor after all
    return frozen_value(ctx.meta(node))


def _freeze_dim(dim_index: int, arg_name: str = "dim", default: int = -1):
    """Rule for ops that normalise over one dim (softmax ...): that dim is frozen."""

    def rule(ctx: Context, node: fx.Node) -> Dims:
        x = node.args[0]
        nd = len(ctx.shape(x))
        d = ctx.arg(node, dim_index, arg_name, default)
        if d is None:
            ctx.freeze(*ctx.dims(x), reason=f"{node.target} over all dims")
            return frozen_value(ctx.meta(node))
        dims = Dims(ctx.dims(x))
        d = _norm_dim(d, nd)
        ctx.freeze(dims[d], reason="normalised over this dim")
        dims[d] = None
        return dims

    return rule


def _softmax_module(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    d = ctx.module(node).dim
    if d is None:
        ctx.freeze(*dims)
        return frozen_value(ctx.meta(node))
    d = _norm_dim(d, len(dims))
    ctx.freeze(dims[d], reason="softmax over this dim")
    dims[d] = None
    return dims


def _freeze_all(ctx: Context, node: fx.Node) -> Any:
    ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes), reason=f"no channel rule for {node.target}")
    return frozen_value(ctx.meta(node))


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
        xcid = _pad_ids(ctx, xc, cin)
        if transposed:
            ctx.union(xc, w_in)
            ctx.freeze(w_out)
            out_c = None if xc is None else xcid.repeat_interleave(cout_g)
        else:
            wo = _pad_ids(ctx, w_out, wshape[0]).view(g, cout_g)
            _unite_rows(ctx, wo)
            ctx.union(xcid, wo[:, 0])
            out_c = w_out if w_out is not None else (None if xc is None else xcid.repeat_interleave(cout_g))
    else:
        # Grouped: the same entry of every group goes together, the group count stays.
        mode = "uniform"
        xcid = _pad_ids(ctx, xc, cin).view(g, cin_g)
        if transposed:
            wi = _pad_ids(ctx, w_in, cin).view(g, cin_g)
            ctx.union(xcid.reshape(-1), wi.reshape(-1))
            _unite_rows(ctx, wi.t())
            out_c = None if w_out is None else w_out.repeat(g)
        else:
            wi = _pad_ids(ctx, w_in, cin_g)
            ctx.union(xcid.reshape(-1), wi.repeat(g))
            _unite_rows(ctx, _pad_ids(ctx, w_out, wshape[0]).view(g, cout_g).t())
            out_c = w_out
    if b is not None:
        ctx.union(b[0], out_c)
    out = Dims([None] * len(out_shape))
    for i in range(cdim):
        out[i] = ctx.dims(x)[i]  # batch dims pass through
    out[cdim] = out_c
    spatial = xs[cdim + 1:] if transposed else out_shape[cdim + 1:]
    batch = _prod(xs[:cdim])
    ctx.flops(2 * batch * _prod(spatial) * _prod(wshape[2:]), w[0] if wshape[0] > 1 else None,
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
        return _freeze_all(ctx, node)
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
            _set_arg(new_node, gi, "groups", new_groups)

        ctx.note_constant("groups")
        ctx.on_slim(slim)
    return out


def _linear(ctx: Context, node: fx.Node, x: fx.Node, w: Dims, b: Dims | None, wshape) -> Dims:
    xd = ctx.dims(x)
    ctx.union(xd[-1], w[1] if len(w) > 1 else None)
    if b is not None:
        ctx.union(b[0], w[0])
    out = Dims(xd[:-1]) + Dims([w[0]])
    ctx.flops(2 * _prod(ctx.shape(x)[:-1]), w[0], w[1] if len(w) > 1 else None)
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
        return _freeze_all(ctx, node)
    b = ctx.dims(bnode) if isinstance(bnode, fx.Node) else None
    return _linear(ctx, node, node.args[0], ctx.dims(wnode), b, ctx.shape(wnode))


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
        _unite_rows(ctx, c.view(num_groups, n // num_groups))
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
        return _freeze_all(ctx, node)
    per_group = ctx.shape(x)[1] // g
    dims = _groupnorm(ctx, x, g, [ctx.dims(a) if isinstance(a, fx.Node) else None for a in (w, b)])

    def slim(s, new_node):
        _set_arg(new_node, 1, "num_groups", s.new_shape(x)[1] // per_group)

    ctx.note_constant("num_groups")
    ctx.on_slim(slim)
    return dims


def _layernorm(ctx: Context, x: fx.Node, nshape, params: list[Dims | None]) -> Dims:
    # Statistics run over the normalised dims: removing entries there is not the same as
    # zeroing them, so those dims are frozen.
    dims = Dims(ctx.dims(x))
    k = len(nshape)
    for i in range(len(dims) - k, len(dims)):
        ctx.freeze(dims[i], reason="LayerNorm statistics run over this dim")
        dims[i] = None
    for p in params:
        if p is not None:
            ctx.freeze(*p)
    return dims


def layernorm_module(ctx: Context, node: fx.Node) -> Dims:
    m = ctx.module(node)
    return _layernorm(ctx, node.args[0], m.normalized_shape,
                      [ctx.module_param(node, "weight"), ctx.module_param(node, "bias")])


def layernorm_function(ctx: Context, node: fx.Node) -> Dims:
    ns = ctx.arg(node, 1, "normalized_shape")
    w, b = ctx.arg(node, 2, "weight"), ctx.arg(node, 3, "bias")
    if isinstance(ns, fx.Node):
        return _freeze_all(ctx, node)
    ns = [ns] if isinstance(ns, int) else list(ns)
    return _layernorm(ctx, node.args[0], ns, [ctx.dims(a) if isinstance(a, fx.Node) else None for a in (w, b)])


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


# --------------------------------------------------------------------------- pooling, reductions


def _pool(k_of: Callable[[Context, fx.Node], int]):
    """Pooling / resizing over the last k dims: other dims keep their ids, pooled dims get none."""

    def rule(ctx: Context, node: fx.Node) -> Any:
        meta = ctx.meta(node)
        if not hasattr(meta, "shape"):
            return _freeze_all(ctx, node)  # e.g. return_indices
        x = node.args[0]
        dims = Dims(ctx.dims(x))
        k = k_of(ctx, node)
        if len(ctx.shape(node)) != len(dims):
            return _freeze_all(ctx, node)
        for i in range(len(dims) - k, len(dims)):
            ctx.freeze(dims[i], reason="pooled dim")
            dims[i] = None
        return dims

    return rule


def _pool_dims_from_name(ctx: Context, node: fx.Node) -> int:
    target = node.target if node.op != "call_module" else type(ctx.module(node))
    name = getattr(target, "__name__", str(target)).lower()
    for k in (1, 2, 3):
        if f"{k}d" in name:
            return k
    return len(ctx.shape(node.args[0])) - 2


def _interpolate_dims(ctx: Context, node: fx.Node) -> int:
    return len(ctx.shape(node.args[0])) - 2


def _reduction(kind: str):
    """sum-like reductions drop dims exactly; mean/max/var over a channel dim freeze it."""

    def rule(ctx: Context, node: fx.Node) -> Any:
        x = node.args[0]
        meta = ctx.meta(node)
        dims = list(ctx.dims(x))
        nd = len(dims)
        d = ctx.arg(node, 1, "dim")
        if isinstance(d, fx.Node):
            return _freeze_all(ctx, node)
        keep = ctx.arg(node, 2, "keepdim", False)
        if d is None or (isinstance(d, (tuple, list)) and len(d) == 0):
            reduced = list(range(nd))
        else:
            reduced = [_norm_dim(i, nd) for i in ([d] if isinstance(d, int) else d)]
        if kind != "sum":
            ctx.freeze(*[dims[i] for i in reduced], reason=f"{kind} over this dim")
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


# --------------------------------------------------------------------------- shapes


def _reshape_groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes with equal numel into minimal runs of dims with equal products."""
    i = j = 0
    out = []
    while i < len(a) or j < len(b):
        ga, gb = [], []
        pa = pb = 1
        while True:
            if ga and gb and pa == pb:
                # absorb trailing size-1 dims so they do not form runs of their own
                while i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
                    ga.append(i)
                    i += 1
                while j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
                    gb.append(j)
                    j += 1
                break
            if (pa <= pb and i < len(a)) or j >= len(b):
                if i >= len(a):
                    return None
                ga.append(i)
                pa *= a[i]
                i += 1
            else:
                gb.append(j)
                pb *= b[j]
                j += 1
        out.append((ga, gb))
    return out


def reshape_labels(ctx: Context, in_shape, in_dims: Dims, out_shape, swapped: tuple[int, int] | None = None,
                   indexed: set[int] = frozenset()) -> Dims:
    """Move ids through any reshape (view, flatten, unflatten, squeeze ...).

    Within each run of dims whose products match, the entries are laid out row-major. At
    most one dim of a run can carry ids afterwards: the outermost whose ids are constant
    along the others; if none is, the outermost non-trivial dim carries them and the
    entries it covers are united (e.g. a head's 64 entries become one unit). ``swapped``
    names two output dims the next op swaps (channel shuffle): then the inner one carries
    the ids, so entry j of every group becomes a unit instead of whole groups. Dims in
    ``indexed`` are picked apart by integer index later (``q, k, v = qkv[0], ...``) and
    do not carry ids when another dim can.
    """
    out = Dims([None] * len(out_shape))
    runs = _reshape_groups(list(in_shape), list(out_shape))
    if runs is None:
        raise ValueError("reshape runs do not match")
    for ins, outs in runs:
        labelled = [i for i in ins if in_dims[i] is not None and not ctx.is_frozen(in_dims[i])]
        if not labelled:
            for i in ins:
                ctx.freeze(in_dims[i])
            continue
        if len(ins) == 1 and len(outs) == 1:
            out[outs[0]] = in_dims[ins[0]]
            continue
        # Flat ids of the run, in row-major order; only one input dim may keep ids.
        keep = labelled[0]
        for i in labelled[1:]:
            ctx.freeze(in_dims[i], reason="reshape merges two channel dims")
        sizes = [in_shape[i] for i in ins]
        flat = torch.zeros(sizes, dtype=torch.long)
        pos = ins.index(keep)
        view = [1] * len(sizes)
        view[pos] = sizes[pos]
        flat = (flat + in_dims[keep].view(view)).flatten()
        osizes = [out_shape[j] for j in outs]
        grid = ctx.uf.find(flat).view(osizes)
        target = None
        for p, n in enumerate(osizes):
            if n == 1:
                continue
            rows = grid.movedim(p, 0).reshape(n, -1)
            if bool((rows == rows[:, :1]).all()):
                target = p  # ids already constant along the other dims: no coarsening
                break
        if target is None:
            big = [p for p, n in enumerate(osizes) if n > 1]
            target = next((p for p in big if outs[p] not in indexed), big[0])
            if swapped is not None and len(big) == 2 and {outs[p] for p in big} == set(swapped):
                target = big[1]
            _unite_rows(ctx, flat.view(osizes).movedim(target, 0).reshape(osizes[target], -1))
        rows = flat.view(osizes).movedim(target, 0).reshape(osizes[target], -1)
        out[outs[target]] = rows[:, 0].clone()
    return out


def _shape_rewrite(size_arg_start: int):
    """Slimming hook for view / reshape / expand style calls: rewrite channel sizes."""

    def hook(s, new_node):
        new_shape = s.new_shape(new_node.name)
        old_shape = s.old_shape(new_node.name)
        args = list(new_node.args)
        kw = "shape" if "shape" in new_node.kwargs else ("size" if "size" in new_node.kwargs else None)
        if kw is not None:
            sizes, packed = list(new_node.kwargs[kw]), True
        elif len(args) == size_arg_start + 1 and isinstance(args[size_arg_start], (tuple, list)):
            sizes, packed = list(args[size_arg_start]), True
        else:
            sizes, packed = args[size_arg_start:], False
        if len(sizes) != len(new_shape):
            return
        changed = False
        for i, a in enumerate(sizes):
            if new_shape[i] == old_shape[i] and not isinstance(a, fx.Node):
                continue
            if isinstance(a, int):
                if a == -1 or a == new_shape[i]:
                    continue
                sizes[i] = int(new_shape[i])
                changed = True
            elif isinstance(a, fx.Node):
                value = s.new_int(a)
                if value == new_shape[i] or (value is None and new_shape[i] == old_shape[i]):
                    continue
                sizes[i] = int(new_shape[i])
                changed = True
        if not changed:
            return
        if kw is not None:
            new_node.kwargs = {**new_node.kwargs, kw: tuple(sizes)}
        elif packed:
            args[size_arg_start] = tuple(sizes)
            new_node.args = tuple(args)
        else:
            new_node.args = tuple(args[:size_arg_start] + sizes)

    return hook


def reshape_like(size_arg_start: int | None):
    """view / reshape / flatten / unflatten / squeeze / unsqueeze: ids follow the row-major layout."""

    def rule(ctx: Context, node: fx.Node) -> Dims:
        x = node.args[0]
        out = reshape_labels(ctx, ctx.shape(x), ctx.dims(x), ctx.shape(node), _swap_after(ctx, node),
                             _indexed_later(ctx, node))
        if size_arg_start is not None:
            ctx.note_constant("shape")
            ctx.on_slim(_shape_rewrite(size_arg_start))
        return out

    return rule


def _swap_after(ctx: Context, node: fx.Node) -> tuple[int, int] | None:
    """The two dims a lone transpose right after ``node`` swaps (the channel-shuffle idiom)."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.target not in ("transpose", torch.transpose, "swapaxes", torch.swapaxes) or len(user.args) < 3:
        return None
    nd = len(ctx.shape(node))
    a, b = user.args[1], user.args[2]
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    return _norm_dim(a, nd), _norm_dim(b, nd)


def _indexed_later(ctx: Context, node: fx.Node, depth: int = 4) -> set[int]:
    """Dims of ``node`` that a later op takes apart by integer index or unbind.

    Follows dims through permute / transpose / contiguous for a few steps.
    """
    found: set[int] = set()
    nd = len(ctx.shape(node))
    todo = [(node, list(range(nd)), 0)]  # (node, position of each original dim in it, depth)
    while todo:
        cur, where, d = todo.pop()
        if d > depth:
            continue
        for user in cur.users:
            t = user.target
            if t in ("permute", torch.permute):
                order = user.args[1:] if len(user.args) > 2 or isinstance(user.args[1], int) else user.args[1]
                order = [_norm_dim(o, nd) for o in order]
                todo.append((user, [order.index(w) for w in where], d + 1))
            elif t in ("transpose", torch.transpose, "swapaxes", torch.swapaxes) and len(user.args) >= 3:
                a, b = _norm_dim(user.args[1], nd), _norm_dim(user.args[2], nd)
                todo.append((user, [b if w == a else a if w == b else w for w in where], d + 1))
            elif t in ("contiguous", "clone"):
                todo.append((user, where, d + 1))
            elif t in ("unbind", torch.unbind):
                dim = _norm_dim(user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0), nd)
                found.update(i for i, w in enumerate(where) if w == dim)
            elif t is operator.getitem:
                idx = user.args[1]
                items = list(idx) if isinstance(idx, tuple) else [idx]
                if Ellipsis in items or None in items:
                    continue
                for pos, it in enumerate(items):
                    if isinstance(it, int):
                        found.update(i for i, w in enumerate(where) if w == pos)
    return found


def channel_shuffle(ctx: Context, node: fx.Node) -> Dims:
    """nn.ChannelShuffle / F.channel_shuffle: entry j of every group is one unit."""
    x = node.args[0]
    g = ctx.module(node).groups if node.op == "call_module" else ctx.arg(node, 1, "groups")
    dims = Dims(ctx.dims(x))
    c = dims[1]
    if c is None or not isinstance(g, int):
        return Dims(dims) if c is None else _freeze_all(ctx, node)
    cols = c.view(g, -1)
    _unite_rows(ctx, cols.t())
    dims[1] = cols.t().reshape(-1).clone()
    return dims


def pixel_shuffle(ctx: Context, node: fx.Node) -> Dims:
    """PixelShuffle(r): each block of r*r input channels becomes one output channel."""
    x = node.args[0]
    r = ctx.module(node).upscale_factor if node.op == "call_module" else ctx.arg(node, 1, "upscale_factor")
    dims = ctx.dims(x)
    c = len(dims) - 3
    out = Dims(list(dims[:c]) + [None, None, None])
    ctx.freeze(dims[c + 1], dims[c + 2], reason="spatial dims")
    if dims[c] is not None:
        blocks = dims[c].view(-1, r * r)
        _unite_rows(ctx, blocks)
        out[c] = blocks[:, 0].clone()
    return out


def pixel_unshuffle(ctx: Context, node: fx.Node) -> Dims:
    """PixelUnshuffle(r): each input channel becomes a block of r*r output channels."""
    x = node.args[0]
    r = ctx.module(node).downscale_factor if node.op == "call_module" else ctx.arg(node, 1, "downscale_factor")
    dims = ctx.dims(x)
    c = len(dims) - 3
    ctx.freeze(dims[c + 1], dims[c + 2], reason="spatial dims")
    return Dims(list(dims[:c]) + [None if dims[c] is None else dims[c].repeat_interleave(r * r), None, None])


def squeeze(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    xs = ctx.shape(x)
    dims = ctx.dims(x)
    d = ctx.arg(node, 1, "dim")
    asked = range(len(xs)) if d is None else [_norm_dim(i, len(xs)) for i in ([d] if isinstance(d, int) else d)]
    for i in asked:
        if xs[i] > 1:  # not squeezed now, but could be if pruning left one entry
            ctx.freeze(dims[i], reason="squeeze could drop this dim after pruning")
    return Dims([l for i, l in enumerate(dims) if not (i in asked and xs[i] == 1)])


def flatten_module(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    out = reshape_labels(ctx, ctx.shape(x), ctx.dims(x), ctx.shape(node))
    if isinstance(ctx.module(node), nn.Unflatten):
        m = ctx.module(node)
        d = _norm_dim(m.dim, len(ctx.shape(x)))
        n = len(m.unflattened_size)

        def slim(s, new_node):
            s.module(new_node.target).unflattened_size = tuple(int(v) for v in s.new_shape(new_node.name)[d:d + n])

        ctx.note_constant("unflattened_size")
        ctx.on_slim(slim)
    return out


def unflatten(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    out = reshape_labels(ctx, ctx.shape(x), ctx.dims(x), ctx.shape(node))
    d = _norm_dim(ctx.arg(node, 1, "dim"), len(ctx.shape(x)))
    sizes = ctx.arg(node, 2, "sizes")
    n = len(sizes)

    def slim(s, new_node):
        new = tuple(int(v) for v in s.new_shape(new_node.name)[d:d + n])
        old = tuple(int(v) for v in s.old_shape(new_node.name)[d:d + n])
        if new != old:
            _set_arg(new_node, 2, "sizes", new)

    ctx.note_constant("sizes")
    ctx.on_slim(slim)
    return out


def permute(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = ctx.dims(x)
    order = node.args[1:] if len(node.args) > 2 or isinstance(ctx.arg(node, 1, "dims"), int) else ctx.arg(node, 1, "dims")
    order = [_norm_dim(i, len(dims)) for i in order]
    return Dims([dims[i] for i in order])


def transpose(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    if len(node.args) < 3 and not node.kwargs:  # .t()
        return Dims(reversed(dims))
    a = _norm_dim(ctx.arg(node, 1, "dim0"), len(dims))
    b = _norm_dim(ctx.arg(node, 2, "dim1"), len(dims))
    dims[a], dims[b] = dims[b], dims[a]
    return dims


def movedim(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    n = len(ctx.shape(x))
    src, dst = ctx.arg(node, 1, "source"), ctx.arg(node, 2, "destination")
    src = [_norm_dim(i, n) for i in ([src] if isinstance(src, int) else src)]
    dst = [_norm_dim(i, n) for i in ([dst] if isinstance(dst, int) else dst)]
    order: list[int | None] = [None] * n
    for a, b in zip(src, dst):
        order[b] = a
    rest = iter(i for i in range(n) if i not in src)
    order = [next(rest) if o is None else o for o in order]
    dims = ctx.dims(x)
    return Dims([dims[i] for i in order])


def expand(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    xs, os = ctx.shape(x), ctx.shape(node)
    dims = ctx.dims(x)
    off = len(os) - len(xs)
    out = Dims([None] * len(os))
    for i in range(len(xs)):
        if xs[i] == os[i + off]:
            out[i + off] = dims[i]
        else:
            ctx.freeze(dims[i], reason="expanded dim")
    if node.target == "expand_as":
        other = ctx.dims(node.args[1])
        for i in range(len(os)):
            if out[i] is not None:
                ctx.union(out[i], other[i])
    else:
        ctx.on_slim(_shape_rewrite(1))
    return out


def repeat(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    xs, os = ctx.shape(x), ctx.shape(node)
    dims = ctx.dims(x)
    off = len(os) - len(xs)
    out = Dims([None] * len(os))
    for i in range(len(xs)):
        if dims[i] is not None:
            out[i + off] = dims[i].repeat(os[i + off] // xs[i])
    return out


def cat(ctx: Context, node: fx.Node) -> Dims:
    tensors = list(ctx.arg(node, 0, "tensors"))
    d = ctx.arg(node, 1, "dim", 0)
    nd = len(ctx.shape(node))
    d = _norm_dim(d, nd)
    tensors = [t for t in tensors if ctx.is_tensor(t) and len(ctx.shape(t)) == nd]
    out = Dims([None] * nd)
    for i in range(nd):
        if i == d:
            out[i] = _cat_labels([ctx.dims(t)[i] for t in tensors], [ctx.shape(t)[i] for t in tensors])
        else:
            labels = [ctx.dims(t)[i] for t in tensors]
            ctx.union(*labels)
            out[i] = None if any(l is None for l in labels) else labels[0]
    return out


def stack(ctx: Context, node: fx.Node) -> Dims:
    tensors = list(ctx.arg(node, 0, "tensors"))
    d = _norm_dim(ctx.arg(node, 1, "dim", 0), len(ctx.shape(node)))
    nd = len(ctx.shape(tensors[0]))
    dims = []
    for i in range(nd):
        labels = [ctx.dims(t)[i] for t in tensors]
        ctx.union(*labels)
        dims.append(None if any(l is None for l in labels) else labels[0])
    dims.insert(d, None)
    return Dims(dims)


def _split_sizes(total: int, spec: Any, chunks: int | None = None) -> list[int]:
    if chunks is not None:
        step = -(-total // chunks)
        return [min(step, total - i) for i in range(0, total, step)]
    if isinstance(spec, int):
        return [min(spec, total - i) for i in range(0, total, spec)]
    return list(spec)


def split(ctx: Context, node: fx.Node) -> Any:
    x = node.args[0]
    xs = ctx.shape(x)
    is_chunk = node.target in (torch.chunk, "chunk")
    spec = ctx.arg(node, 1, "chunks" if is_chunk else "split_size_or_sections")
    if spec is None:
        spec = node.kwargs.get("split_size")
    d = _norm_dim(ctx.arg(node, 2, "dim", 0), len(xs))
    if isinstance(spec, fx.Node) or (isinstance(spec, (list, tuple)) and any(isinstance(v, fx.Node) for v in spec)):
        return _freeze_all(ctx, node)
    sizes = _split_sizes(xs[d], spec, spec if is_chunk else None)
    dims = ctx.dims(x)
    outs, start = [], 0
    for n in sizes:
        o = Dims(dims)
        o[d] = None if dims[d] is None else dims[d][start:start + n]
        outs.append(o)
        start += n
    if dims[d] is not None:
        ctx.note_constant("split sizes")

        def slim(s, new_node):
            new = [s.new_count(o[d]) for o in outs]
            if is_chunk and len(set(new)) == 1 and _split_sizes(sum(new), None, len(new)) == new:
                return
            new_node.op = "call_function"
            new_node.target = torch.split
            new_node.args = (new_node.args[0], new)
            new_node.kwargs = {"dim": d}

        ctx.on_slim(slim)
    return tuple(outs)


def unbind(ctx: Context, node: fx.Node) -> Any:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    d = _norm_dim(ctx.arg(node, 1, "dim", 0), len(dims))
    ctx.freeze(dims[d], reason="unbind: one output per entry")
    rest = Dims(dims[:d] + dims[d + 1:])
    return tuple(Dims(rest) for _ in range(ctx.shape(x)[d]))


def getitem(ctx: Context, node: fx.Node) -> Any:
    src, idx = node.args
    value = ctx.value(src)
    if not isinstance(value, Dims):
        if isinstance(value, tuple) and isinstance(idx, int):
            return value[idx]
        if isinstance(value, tuple) and isinstance(idx, slice):
            return value[idx]
        return frozen_value(ctx.meta(node))
    return _tensor_index(ctx, node, src, idx)


def _tensor_index(ctx: Context, node: fx.Node, src: fx.Node, idx: Any) -> Dims:
    xs = ctx.shape(src)
    dims = ctx.dims(src)
    items = list(idx) if isinstance(idx, tuple) else [idx]
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    if any(it is Ellipsis for it in items):
        e = items.index(Ellipsis)
        items = items[:e] + [slice(None)] * (len(xs) - n_real) + items[e + 1:]
    items = items + [slice(None)] * (len(xs) - sum(1 for it in items if it is not None))
    out = Dims()
    d = 0
    tensor_index = [it for it in items if isinstance(it, fx.Node)]
    if len(tensor_index) > 1:
        return _freeze_all(ctx, node)
    rewrites = []
    for it in items:
        if it is None:
            out.append(None)
            continue
        labels = dims[d]
        n = xs[d]
        if isinstance(it, int):
            ctx.freeze(labels, reason="indexed by an integer")
        elif isinstance(it, slice):
            if any(isinstance(v, fx.Node) for v in (it.start, it.stop, it.step)):
                ctx.freeze(labels, reason="slice bounds computed at run time")
                out.append(None)
            elif labels is None:
                out.append(None)
            elif it.step not in (None, 1):
                ctx.freeze(labels, reason="strided slice")
                out.append(None)
            else:
                start, stop, _ = it.indices(n)
                out.append(labels[start:stop])
                if (start, stop) != (0, n):
                    rewrites.append((len(out) - 1 + 0, d, start, stop, labels))
        elif isinstance(it, fx.Node):
            ctx.freeze(labels, reason="indexed by a tensor")
            idx_shape = ctx.shape(it) if ctx.is_tensor(it) else ()
            out.extend([None] * len(idx_shape))
        else:
            return _freeze_all(ctx, node)
        d += 1
    if len(out) != len(ctx.shape(node)):
        return _freeze_all(ctx, node)
    if rewrites:
        ctx.note_constant("slice bounds")

        def slim(s, new_node):
            src_node, index = new_node.args
            items = list(index) if isinstance(index, tuple) else [index]
            for _, dim, start, stop, labels in rewrites:
                # position of dim `dim` among the index items (None items do not consume dims)
                k, seen = 0, -1
                for k, it in enumerate(items):
                    if it is not None and it is not Ellipsis:
                        seen += 1
                    if seen == dim:
                        break
                if seen != dim or not isinstance(items[k], slice):
                    raise ValueError("cannot locate slice to rewrite")
                new_start = s.new_count(labels[:start])
                new_stop = new_start + s.new_count(labels[start:stop])
                items[k] = slice(new_start, new_stop, items[k].step)
            new_node.args = (src_node, tuple(items) if isinstance(index, tuple) else items[0])

        if not any(it is Ellipsis for it in (list(idx) if isinstance(idx, tuple) else [idx])):
            ctx.on_slim(slim)
        else:
            for _, _d, _s, _e, labels in rewrites:
                ctx.freeze(labels, reason="slice behind an ellipsis")
    return out


def pad(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    p = ctx.arg(node, 1, "pad")
    mode = ctx.arg(node, 2, "mode", "constant")
    dims = Dims(ctx.dims(x))
    if isinstance(p, fx.Node) or any(isinstance(v, fx.Node) for v in p):
        return _freeze_all(ctx, node)
    nd = len(dims)
    for k in range(len(p) // 2):
        d = nd - 1 - k
        lo, hi = p[2 * k], p[2 * k + 1]
        if (lo or hi) and dims[d] is not None:
            if mode != "constant" or lo < 0 or hi < 0:
                ctx.freeze(dims[d], reason="non-constant padding of a channel dim")
                dims[d] = None
            else:
                z = torch.zeros
                dims[d] = torch.cat([z(lo, dtype=torch.long), dims[d], z(hi, dtype=torch.long)])
    return dims


# --------------------------------------------------------------------------- products


def matmul(ctx: Context, node: fx.Node) -> Dims:
    a, b = node.args[0], node.args[1]
    sa, sb = list(ctx.shape(a)), list(ctx.shape(b))
    da, db = list(ctx.dims(a)), list(ctx.dims(b))
    if len(sa) < 2 or len(sb) < 2:
        return _freeze_all(ctx, node)
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
    coef = 2 * _prod([os[i] for i in range(nb) if out[i] is None])
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
        return _freeze_all(ctx, node)
    lhs, rhs = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    if len(specs) != len(operands) or not all(ctx.is_tensor(o) for o in operands):
        return _freeze_all(ctx, node)
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
        coef = 2 * _prod(sizes[ch] for ch in counted if label[ch] is None)
        ctx.flops(coef, *[label[ch] for ch in counted])
    return Dims([label.get(ch) for ch in rhs])


def sdpa(ctx: Context, node: fx.Node) -> Dims:
    q, k, v = node.args[0], ctx.arg(node, 1, "key"), ctx.arg(node, 2, "value")
    mask = ctx.arg(node, 3, "attn_mask")
    dq, dk, dv = ctx.dims(q), ctx.dims(k), ctx.dims(v)
    sq, sk, sv = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    if not (len(sq) == len(sk) == len(sv)) or sq[:-2] != sk[:-2] or sk[:-2] != sv[:-2]:
        return _freeze_all(ctx, node)
    # The default scale depends on the head size and softmax runs over the key sequence.
    ctx.freeze(dq[-1], dk[-1], dk[-2], dv[-2], reason="attention scale / softmax dims")
    out = Dims([None] * len(sq))
    for i in range(len(sq) - 2):
        ctx.union(dq[i], dk[i], dv[i])
        out[i] = dq[i] if dq[i] is not None and dk[i] is not None and dv[i] is not None else None
    if isinstance(mask, fx.Node):
        ctx.freeze_value(ctx.value(mask), reason="attention mask")
        for i in range(len(sq) - 2):
            ctx.freeze(out[i])
    out[-2], out[-1] = dq[-2], dv[-1]
    b = [out[i] for i in range(len(sq) - 2)]
    coef = 2 * _prod(n for n, l in zip(sq[:-2], b) if l is None) * sq[-2] * sk[-2]
    ctx.flops(coef * sq[-1], *b)
    ctx.flops(coef * (sv[-1] if dv[-1] is None else 1), *b, dv[-1])
    return out


# --------------------------------------------------------------------------- attention


def decompose_multihead_attention(gm: fx.GraphModule, ignore: tuple[str, ...] = ()) -> bool:
    """Rewrite ``nn.MultiheadAttention`` calls into linear / view / SDPA nodes.

    The module keeps its parameters; the graph reads them with get_attr. Heads then show
    up as plain reshapes, so whole heads can be pruned by the generic rules and
    ``num_heads`` becomes a constant of the graph that slimming rewrites. Calls with
    masks, returned attention weights, dropout or bias_k/v are left alone (and frozen).
    """
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mha = gm.get_submodule(node.target)
        if type(mha) is not nn.MultiheadAttention or not _decomposable(node, mha):
            continue
        if any(node.target == n or node.target.startswith(n + ".") for n in ignore):
            continue
        g = gm.graph
        q_in, k_in, v_in = (node.args + (None,) * 3)[:3]
        k_in = node.kwargs.get("key", k_in)
        v_in = node.kwargs.get("value", v_in)
        q_in = node.kwargs.get("query", q_in)
        e, h = mha.embed_dim, mha.num_heads
        d = e // h
        t = node.target
        with g.inserting_before(node):
            if mha._qkv_same_embed_dim:
                w = g.get_attr(f"{t}.in_proj_weight")
                ws = [g.call_function(operator.getitem, (w, slice(i * e, (i + 1) * e))) for i in range(3)]
            else:
                ws = [g.get_attr(f"{t}.{n}_proj_weight") for n in ("q", "k", "v")]
            if mha.in_proj_bias is not None:
                b = g.get_attr(f"{t}.in_proj_bias")
                bs = [g.call_function(operator.getitem, (b, slice(i * e, (i + 1) * e))) for i in range(3)]
            else:
                bs = [None] * 3
            heads = []
            for x, wi, bi in zip((q_in, k_in, v_in), ws, bs):
                y = g.call_function(F.linear, (x, wi, bi))
                if mha.batch_first:
                    y = g.call_method("view", (y, g.call_method("size", (y, 0)), g.call_method("size", (y, 1)), h, d))
                    y = g.call_method("transpose", (y, 1, 2))
                else:
                    y = g.call_method("view", (y, g.call_method("size", (y, 0)), g.call_method("size", (y, 1)), h, d))
                    y = g.call_method("permute", (y, 1, 2, 0, 3))
                heads.append(y)
            o = g.call_function(F.scaled_dot_product_attention, tuple(heads))
            if mha.batch_first:
                o = g.call_method("transpose", (o, 1, 2))
            else:
                o = g.call_method("permute", (o, 2, 0, 1, 3))
            o = g.call_method("flatten", (o, 2))
            ow = g.get_attr(f"{t}.out_proj.weight")
            ob = g.get_attr(f"{t}.out_proj.bias") if mha.out_proj.bias is not None else None
            o = g.call_function(F.linear, (o, ow, ob))
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0:
                user.replace_all_uses_with(o)
                g.erase_node(user)
            elif user.op == "call_function" and user.target is operator.getitem and user.args[1] == 1:
                g.erase_node(user)  # unused (checked by _decomposable)
        g.erase_node(node)
        changed = True
    return changed


def _decomposable(node: fx.Node, mha: nn.MultiheadAttention) -> bool:
    args = list(node.args)
    kwargs = dict(node.kwargs)
    names = ["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal"]
    for n, a in zip(names, args):
        kwargs[n] = a
    if kwargs.get("key_padding_mask") is not None or kwargs.get("attn_mask") is not None:
        return False
    if kwargs.get("is_causal", False) or mha.dropout > 0 or mha.bias_k is not None or mha.add_zero_attn:
        return False
    for n in ("query", "key", "value"):
        x = kwargs.get(n)
        if not isinstance(x, fx.Node) or len(getattr(x.meta.get("tensor_meta"), "shape", ())) != 3:
            return False
    for user in node.users:
        if not (user.op == "call_function" and user.target is operator.getitem and user.args[1] in (0, 1)):
            return False
        if user.args[1] == 1 and user.users:
            return False
    return True


def _mha_module(ctx: Context, node: fx.Node) -> Any:
    return _freeze_all(ctx, node)


def swin_attention(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``shifted_window_attention``: whole heads are the units."""
    names = ["input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training"]
    a = {n: ctx.arg(node, i, n) for i, n in enumerate(names)}
    x, qw, pw, rpb = a["input"], a["qkv_weight"], a["proj_weight"], a["relative_position_bias"]
    h = a["num_heads"]
    if not all(isinstance(t, fx.Node) for t in (x, qw, pw, rpb)) or not isinstance(h, int):
        return _freeze_all(ctx, node)
    c = ctx.shape(x)[-1]
    qws, pws = ctx.shape(qw), ctx.shape(pw)
    if qws[0] != 3 * c or c % h or qws[1] != c or pws[1] != c:
        return _freeze_all(ctx, node)
    hd = c // h
    xd, qd, pd, rd = ctx.dims(x), ctx.dims(qw), ctx.dims(pw), ctx.dims(rpb)
    ctx.freeze(*xd[:-1], reason="spatial dims of window attention")
    ctx.union(xd[-1], qd[1])
    head_rows = _pad_ids(ctx, qd[0], 3 * c).view(3, h, hd)
    _unite_rows(ctx, head_rows.permute(1, 0, 2).reshape(h, 3 * hd))
    heads = head_rows[0, :, 0].clone()
    _unite_rows(ctx, torch.cat([heads[:, None], _pad_ids(ctx, pd[1], c).view(h, hd)], 1))
    ctx.union(heads, rd[1] if ctx.shape(rpb)[1] == h else None)
    for n in ("qkv_bias", "proj_bias", "logit_scale"):
        t = a[n]
        if isinstance(t, fx.Node):
            ctx.union(ctx.dims(t)[0], {"qkv_bias": qd[0], "proj_bias": pd[0], "logit_scale": heads}[n])
    # Everything that is neither channels nor heads (windows, shifts) is spatial.
    out = Dims([None] * len(ctx.shape(node)))
    out[-1] = pd[0]
    b, hh, ww, _ = ctx.shape(x)
    ws = a["window_size"]
    ph = -(-hh // ws[0]) * ws[0]
    pw_ = -(-ww // ws[1]) * ws[1]
    tokens = b * ph * pw_
    n = ws[0] * ws[1]
    ctx.flops(2 * tokens, qd[0], qd[1])
    ctx.flops(2 * 2 * tokens * n * hd, heads)
    ctx.flops(2 * tokens, pd[1], pd[0])
    ctx.note_constant("num_heads")

    def slim(s, new_node):
        new_node.target = shifted_window_attention
        _set_arg(new_node, 5, "num_heads", s.new_count(heads))

    ctx.on_slim(slim)
    return out


def shifted_window_attention(
    input: Tensor,
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Tensor | None = None,
    proj_bias: Tensor | None = None,
    logit_scale: Tensor | None = None,
    training: bool = True,
) -> Tensor:
    """torchvision's shifted window attention (BSD-3-Clause) with the head size read from
    ``qkv_weight`` instead of the input width, so heads can be removed."""
    B, H, W, C = input.shape
    head_dim = qkv_weight.shape[0] // (3 * num_heads)
    inner = num_heads * head_dim
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = list(shift_size)
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length: 2 * length].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        attn = attn * logit_scale
    else:
        q = q * head_dim ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for hs in h_slices:
            for wsl in w_slices:
                attn_mask[hs[0]: hs[1], wsl[0]: wsl[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), inner)
    x = F.linear(x, proj_weight, proj_bias)
    x = F.dropout(x, p=dropout, training=training)
    out_c = x.shape[-1]
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], out_c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, out_c)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    x = x[:, :H, :W, :].contiguous()
    return x


torch.fx.wrap("shifted_window_attention")


def swin_relative_position_bias(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``_get_relative_position_bias``: (table, heads) -> (1, heads, N, N)."""
    table = node.args[0]
    td = ctx.dims(table)
    ctx.freeze(td[0], reason="relative position rows are looked up by index")
    out = Dims([None] * 4)
    out[1] = td[1]
    return out


def swin_patch_merging_pad(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``_patch_merging_pad``: four spatial phases concatenated on channels."""
    x = node.args[0]
    dims = ctx.dims(x)
    out = Dims([None] * len(ctx.shape(node)))
    ctx.freeze(dims[-3], dims[-2], reason="spatial dims")
    for i in range(len(dims) - 3):
        out[i] = dims[i]
    out[-1] = None if dims[-1] is None else dims[-1].repeat(4)
    return out


def stochastic_depth(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``stochastic_depth``: scales whole rows, channels pass through."""
    return Dims(ctx.dims(node.args[0]))


# --------------------------------------------------------------------------- table

_ELEMENTWISE_MODULES = [
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink,
    nn.Softshrink, nn.LogSigmoid, nn.Threshold, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
]
_ELEMENTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.pow, operator.gt, operator.lt, operator.ge, operator.le,
    operator.eq, operator.ne, operator.and_, operator.or_, torch.gt, torch.lt, torch.ge, torch.le, torch.eq,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.sigmoid, torch.tanh, torch.relu, torch.clamp, torch.where, torch.maximum, torch.minimum, torch.pow,
    torch.square, torch.sin, torch.cos, torch.erf,
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu,
    F.elu, F.selu, F.celu, F.mish, F.softplus, F.logsigmoid, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout,
]
_ELEMENTWISE_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "abs", "exp", "log", "sqrt", "rsqrt",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "clamp", "clamp_", "clamp_min", "clamp_max", "pow",
    "square", "masked_fill", "masked_fill_", "type_as", "__add__", "__mul__", "__radd__", "__rmul__", "__sub__",
    "__truediv__", "gt", "lt", "ge", "le", "eq", "ne", "logical_not", "logical_and", "logical_or",
]
_IDENTITY_METHODS = ["contiguous", "clone", "detach", "float", "to", "half", "double", "bfloat16", "cpu", "cuda"]

RULES: dict[Any, Callable] = {}
RULES.update({m: elementwise for m in _ELEMENTWISE_MODULES})
RULES.update({f: elementwise for f in _ELEMENTWISE_FUNCTIONS})
RULES.update({m: elementwise for m in _ELEMENTWISE_METHODS})
RULES.update({m: first_arg for m in _IDENTITY_METHODS})
RULES.update({
    # modules
    nn.Conv1d: conv_module, nn.Conv2d: conv_module, nn.Conv3d: conv_module,
    nn.ConvTranspose1d: conv_module, nn.ConvTranspose2d: conv_module, nn.ConvTranspose3d: conv_module,
    nn.Linear: linear_module, nn.Embedding: embedding_module,
    nn.BatchNorm1d: batchnorm_module, nn.BatchNorm2d: batchnorm_module, nn.BatchNorm3d: batchnorm_module,
    nn.SyncBatchNorm: batchnorm_module,
    nn.InstanceNorm1d: instancenorm_module, nn.InstanceNorm2d: instancenorm_module,
    nn.InstanceNorm3d: instancenorm_module,
    nn.GroupNorm: groupnorm_module, nn.LayerNorm: layernorm_module, nn.PReLU: prelu_module,
    nn.Softmax: _softmax_module, nn.LogSoftmax: _softmax_module,
    nn.Flatten: flatten_module, nn.Unflatten: flatten_module,
    nn.PixelShuffle: pixel_shuffle, F.pixel_shuffle: pixel_shuffle, torch.pixel_shuffle: pixel_shuffle,
    nn.PixelUnshuffle: pixel_unshuffle, F.pixel_unshuffle: pixel_unshuffle, torch.pixel_unshuffle: pixel_unshuffle,
    nn.ChannelShuffle: channel_shuffle, F.channel_shuffle: channel_shuffle, torch.channel_shuffle: channel_shuffle,
    nn.MultiheadAttention: _mha_module,
    # functions
    F.conv1d: conv_function, F.conv2d: conv_function, F.conv3d: conv_function,
    F.conv_transpose1d: conv_function, F.conv_transpose2d: conv_function, F.conv_transpose3d: conv_function,
    F.linear: linear_function,
    F.layer_norm: layernorm_function, F.group_norm: groupnorm_function, F.batch_norm: batchnorm_function,
    F.softmax: _freeze_dim(1), F.log_softmax: _freeze_dim(1), torch.softmax: _freeze_dim(1),
    "softmax": _freeze_dim(1), "log_softmax": _freeze_dim(1),
    torch.cat: cat, torch.concat: cat, torch.concatenate: cat, torch.stack: stack,
    torch.split: split, torch.chunk: split, "split": split, "chunk": split,
    torch.unbind: unbind, "unbind": unbind,
    operator.getitem: getitem,
    torch.flatten: reshape_like(None), "flatten": reshape_like(None),
    torch.reshape: reshape_like(1), "reshape": reshape_like(1), "view": reshape_like(1),
    torch.unflatten: unflatten, "unflatten": unflatten,
    torch.squeeze: squeeze, "squeeze": squeeze,
    torch.unsqueeze: reshape_like(None), "unsqueeze": reshape_like(None),
    torch.permute: permute, "permute": permute,
    torch.transpose: transpose, "transpose": transpose, torch.swapaxes: transpose, "swapaxes": transpose,
    torch.t: transpose, "t": transpose, torch.movedim: movedim, "movedim": movedim,
    "expand": expand, "expand_as": expand, "repeat": repeat,
    F.pad: pad,
    torch.matmul: matmul, operator.matmul: matmul, torch.bmm: matmul, "matmul": matmul, "bmm": matmul,
    torch.einsum: einsum, F.scaled_dot_product_attention: sdpa,
    torch.sum: _reduction("sum"), "sum": _reduction("sum"),
    torch.mean: _reduction("mean"), "mean": _reduction("mean"),
    torch.amax: _reduction("max"), "amax": _reduction("max"),
    torch.var: _reduction("var"), "var": _reduction("var"), torch.std: _reduction("std"), "std": _reduction("std"),
    getattr: metadata, "size": metadata, "dim": metadata, "numel": metadata, torch._assert: metadata,
})
_POOL_MODULES = [
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
]
_POOL_FUNCTIONS = [
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch._C._nn.avg_pool2d, torch._C._nn.avg_pool3d, torch.avg_pool1d,
]
RULES.update({m: _pool(_pool_dims_from_name) for m in _POOL_MODULES + _POOL_FUNCTIONS})
RULES.update({nn.Upsample: _pool(_interpolate_dims), F.interpolate: _pool(_interpolate_dims)})


def _register_torchvision() -> None:
    """Rules for torchvision functions that fx sees as leaves (torch.fx.wrap)."""
    import importlib

    try:
        swin_transformer = importlib.import_module("torchvision.models.swin_transformer")
        sd = importlib.import_module("torchvision.ops.stochastic_depth")  # the module, not the function
    except ImportError:  # torchvision is a dependency, but keep the table importable without it
        return
    RULES[swin_transformer.shifted_window_attention] = swin_attention
    RULES[swin_transformer._get_relative_position_bias] = swin_relative_position_bias
    RULES[swin_transformer._patch_merging_pad] = swin_patch_merging_pad
    RULES[shifted_window_attention] = swin_attention
    RULES[sd.stochastic_depth] = stochastic_depth


_register_torchvision()

def refresh_attributes(module: nn.Module) -> None:
    """Make size attributes agree with the (sliced) tensors of a module the graph reads by get_attr.

    Needed for modules whose parameters are used without a call of the module itself,
    e.g. a decomposed ``nn.MultiheadAttention`` and its ``out_proj``.
    """
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif type(module) is nn.MultiheadAttention:
        heads_width = module.out_proj.weight.shape[1]
        module.num_heads = heads_width // module.head_dim


# Rewrites run on the analysis graph before the rules: (graph module, ignored names) -> changed.
GRAPH_REWRITES: list[Callable[[fx.GraphModule, tuple[str, ...]], bool]] = [decompose_multihead_attention]
