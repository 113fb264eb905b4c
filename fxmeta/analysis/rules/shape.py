"""Rules for ops that move channel ids between dims: reshape, flatten, permute, shuffles."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from ..context import Context
from ..spaces import Dims
from .common import freeze_all, norm_dim, set_arg, unite_rows

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
            unite_rows(ctx, flat.view(osizes).movedim(target, 0).reshape(osizes[target], -1))
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
    return norm_dim(a, nd), norm_dim(b, nd)


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
                order = [norm_dim(o, nd) for o in order]
                todo.append((user, [order.index(w) for w in where], d + 1))
            elif t in ("transpose", torch.transpose, "swapaxes", torch.swapaxes) and len(user.args) >= 3:
                a, b = norm_dim(user.args[1], nd), norm_dim(user.args[2], nd)
                todo.append((user, [b if w == a else a if w == b else w for w in where], d + 1))
            elif t in ("contiguous", "clone"):
                todo.append((user, where, d + 1))
            elif t in ("unbind", torch.unbind):
                dim = norm_dim(user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0), nd)
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
        return Dims(dims) if c is None else freeze_all(ctx, node)
    cols = c.view(g, -1)
    unite_rows(ctx, cols.t())
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
        unite_rows(ctx, blocks)
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
    asked = range(len(xs)) if d is None else [norm_dim(i, len(xs)) for i in ([d] if isinstance(d, int) else d)]
    for i in asked:
        if xs[i] > 1:  # not squeezed now, but could be if pruning left one entry
            ctx.freeze(dims[i], reason="squeeze could drop this dim after pruning")
    return Dims([l for i, l in enumerate(dims) if not (i in asked and xs[i] == 1)])


def flatten_module(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    out = reshape_labels(ctx, ctx.shape(x), ctx.dims(x), ctx.shape(node))
    if isinstance(ctx.module(node), nn.Unflatten):
        m = ctx.module(node)
        d = norm_dim(m.dim, len(ctx.shape(x)))
        n = len(m.unflattened_size)

        def slim(s, new_node):
            s.module(new_node.target).unflattened_size = tuple(int(v) for v in s.new_shape(new_node.name)[d:d + n])

        ctx.note_constant("unflattened_size")
        ctx.on_slim(slim)
    return out


def unflatten(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    out = reshape_labels(ctx, ctx.shape(x), ctx.dims(x), ctx.shape(node))
    d = norm_dim(ctx.arg(node, 1, "dim"), len(ctx.shape(x)))
    sizes = ctx.arg(node, 2, "sizes")
    n = len(sizes)

    def slim(s, new_node):
        new = tuple(int(v) for v in s.new_shape(new_node.name)[d:d + n])
        old = tuple(int(v) for v in s.old_shape(new_node.name)[d:d + n])
        if new != old:
            set_arg(new_node, 2, "sizes", new)

    ctx.note_constant("sizes")
    ctx.on_slim(slim)
    return out


def permute(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = ctx.dims(x)
    order = node.args[1:] if len(node.args) > 2 or isinstance(ctx.arg(node, 1, "dims"), int) else ctx.arg(node, 1, "dims")
    order = [norm_dim(i, len(dims)) for i in order]
    return Dims([dims[i] for i in order])


def transpose(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    if len(node.args) < 3 and not node.kwargs:  # .t()
        return Dims(reversed(dims))
    a = norm_dim(ctx.arg(node, 1, "dim0"), len(dims))
    b = norm_dim(ctx.arg(node, 2, "dim1"), len(dims))
    dims[a], dims[b] = dims[b], dims[a]
    return dims


def movedim(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    n = len(ctx.shape(x))
    src, dst = ctx.arg(node, 1, "source"), ctx.arg(node, 2, "destination")
    src = [norm_dim(i, n) for i in ([src] if isinstance(src, int) else src)]
    dst = [norm_dim(i, n) for i in ([dst] if isinstance(dst, int) else dst)]
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
