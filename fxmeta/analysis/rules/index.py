"""Rules for ops that join, split or index tensors: cat, stack, split, getitem, pad."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ..context import Context
from ..spaces import Dims, frozen_value
from .common import cat_labels, freeze_all, norm_dim


def cat(ctx: Context, node: fx.Node) -> Dims:
    tensors = list(ctx.arg(node, 0, "tensors"))
    d = ctx.arg(node, 1, "dim", 0)
    nd = len(ctx.shape(node))
    d = norm_dim(d, nd)
    tensors = [t for t in tensors if ctx.is_tensor(t) and len(ctx.shape(t)) == nd]
    out = Dims([None] * nd)
    for i in range(nd):
        if i == d:
            out[i] = cat_labels([ctx.dims(t)[i] for t in tensors], [ctx.shape(t)[i] for t in tensors])
        else:
            labels = [ctx.dims(t)[i] for t in tensors]
            ctx.union(*labels)
            out[i] = None if any(l is None for l in labels) else labels[0]
    return out


def stack(ctx: Context, node: fx.Node) -> Dims:
    tensors = list(ctx.arg(node, 0, "tensors"))
    d = norm_dim(ctx.arg(node, 1, "dim", 0), len(ctx.shape(node)))
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
    d = norm_dim(ctx.arg(node, 2, "dim", 0), len(xs))
    if isinstance(spec, fx.Node) or (isinstance(spec, (list, tuple)) and any(isinstance(v, fx.Node) for v in spec)):
        return freeze_all(ctx, node)
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
    d = norm_dim(ctx.arg(node, 1, "dim", 0), len(dims))
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
        return freeze_all(ctx, node)
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
            return freeze_all(ctx, node)
        d += 1
    if len(out) != len(ctx.shape(node)):
        return freeze_all(ctx, node)
    if rewrites:
        ctx.note_constant("slice bounds")

        def slim(s, new_node):
            src_node, index = new_node.args
            items = list(index) if isinstance(index, tuple) else [index]
            for _, dim, start, stop, labels in rewrites:
                # position of dim `dim` among the index items (None items do not consume dims)
                k, seen = 0, -1
                for k, it in enumerate(items):  # noqa: B007 - k is read after the loop
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


def index_select(ctx: Context, node: fx.Node) -> Dims:
    """``index_select(x, dim, index)``: the selected dim is frozen (its index holds channel numbers
    that slimming would have to rewrite); every other dim passes through unchanged."""
    x = node.args[0]
    dims = Dims(ctx.dims(x))
    d = norm_dim(ctx.arg(node, 1, "dim", 0), len(dims))
    ctx.freeze(dims[d], reason="index_select: indexed by a tensor")
    dims[d] = None
    return dims


def gather(ctx: Context, node: fx.Node) -> Any:
    """gather / scatter / take and friends: index tensors name entries of every dim: freeze all."""
    ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes), reason=f"indexed by a tensor ({node.target})")
    return frozen_value(ctx.meta(node))


def pad(ctx: Context, node: fx.Node) -> Dims:
    x = node.args[0]
    p = ctx.arg(node, 1, "pad")
    mode = ctx.arg(node, 2, "mode", "constant")
    dims = Dims(ctx.dims(x))
    if isinstance(p, fx.Node):
        return freeze_all(ctx, node)
    nd = len(dims)
    for k in range(len(p) // 2):
        d = nd - 1 - k
        lo, hi = p[2 * k], p[2 * k + 1]
        if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
            # an amount computed from a shape (timm's Swin pads H and W so): that dim is frozen,
            # the dims padded by constants (its channels, by 0) stay free
            if dims[d] is not None:
                ctx.freeze(dims[d], reason="padding by a computed amount")
                dims[d] = None
        elif (lo or hi) and dims[d] is not None:
            if mode != "constant" or lo < 0 or hi < 0:
                ctx.freeze(dims[d], reason="non-constant padding of a channel dim")
                dims[d] = None
            else:
                z = torch.zeros
                dims[d] = torch.cat([z(lo, dtype=torch.long), dims[d], z(hi, dtype=torch.long)])
    return dims
