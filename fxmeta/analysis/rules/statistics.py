"""Norms and means over a channel dim: the statistics run over the kept entries.

A pruned LayerNorm (or RMSNorm's mean of squares) normalises over the channels that stay,
so it is not the original with the removed channels zeroed: the mean and variance change.
The self-check's reference is defined to match: the original with the removed channels
zeroed *and left out of the statistics*. A rule that lets such a dim be pruned registers
the node's reference with ``ctx.on_reference``; the helpers here build it: run the node's
own op on the input narrowed to the kept entries, and put the result back in place.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor

Keep = Callable[[Tensor], Tensor]


def kept(keep: Keep, labels: Tensor, device: torch.device) -> Tensor:
    """Indices of the entries that stay."""
    return keep(labels).nonzero().flatten().to(device)


def narrow(keep: Keep, x: Tensor, dims: dict[int, Tensor]) -> Tensor:
    """``x`` with each dim in ``dims`` (dim -> id vector) cut to its kept entries."""
    for d, labels in dims.items():
        x = x.index_select(d, kept(keep, labels, x.device))
    return x


def widen(keep: Keep, y: Tensor, like: Tensor, dim: int, labels: Tensor) -> Tensor:
    """``y`` (kept entries of ``dim`` only) placed back at full size, zeros where entries went."""
    out = torch.zeros(like.shape, dtype=y.dtype, device=y.device)
    return out.index_copy(dim, kept(keep, labels, y.device), y)


def call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Run a call_function / call_method node's own op on new arguments."""
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)
