"""Helpers shared by the rule families: argument access, id-vector plumbing, broadcasting."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from ..context import Context
from ..spaces import Dims, frozen_value

# --------------------------------------------------------------------------- helpers


def prod_of(xs) -> int:
    return math.prod(int(x) for x in xs)


def set_arg(node: fx.Node, index: int, name: str, value: Any) -> None:
    """Set a call's argument: positional ``index`` when given that way, else keyword ``name``."""
    if len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def _tensor_args(ctx: Context, node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if ctx.is_tensor(a)]


def norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def pad_ids(ctx: Context, labels: Tensor | None, n: int) -> Tensor:
    """An id vector even where the labels are None (frozen entries)."""
    return torch.zeros(n, dtype=torch.long) if labels is None else labels


def unite_rows(ctx: Context, rows: Tensor) -> None:
    """Unite all entries of each row of a 2-D id matrix (one call, no Python loop)."""
    if rows.shape[1] > 1:
        ctx.union(rows[:, :1].expand_as(rows).reshape(-1), rows.reshape(-1))


def cat_labels(parts: list[Tensor | None], sizes: list[int]) -> Tensor | None:
    if all(p is None for p in parts):
        return None
    return torch.cat([torch.zeros(n, dtype=torch.long) if p is None else p for p, n in zip(parts, sizes)])


def broadcast_dims(ctx: Context, node: fx.Node, operands: list[Any]) -> Dims:
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




def freeze_all(ctx: Context, node: fx.Node) -> Any:
    ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes), reason=f"no channel rule for {node.target}")
    return frozen_value(ctx.meta(node))
