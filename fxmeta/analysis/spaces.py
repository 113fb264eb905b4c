"""Channel spaces: integer ids on the entries of tensor dimensions, united by a union-find.

Id 0 is the frozen id: a unit whose set contains it is never removed. ``Dims`` holds the id
vector of every dim of one tensor (None for dims without channel ids: batch, spatial).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

FROZEN = 0


class UnionFind:
    """Vectorised union-find over integer ids. Id 0 (FROZEN) is always the root of its set."""

    def __init__(self) -> None:
        self.parent = torch.zeros(1024, dtype=torch.long)
        self.size = 1

    def fresh(self, n: int) -> Tensor:
        """``n`` new ids, each in its own set."""
        if self.size + n > len(self.parent):
            extra = max(len(self.parent), n)
            self.parent = torch.cat([self.parent, torch.zeros(extra, dtype=torch.long)])
        ids = torch.arange(self.size, self.size + n)
        self.parent[ids] = ids
        self.size += n
        return ids

    def find(self, ids: Tensor) -> Tensor:
        parent = self.parent
        root = parent[ids]
        for _ in range(4):
            up = parent[root]
            if torch.equal(up, root):
                parent[ids] = root  # path compression for the ids asked about
                return root
            root = up
        self.compress()
        return self.parent[ids]

    def compress(self) -> None:
        """Point every id straight at its root (pointer jumping over the whole table)."""
        p = self.parent[: self.size]
        while True:
            up = p[p]
            if torch.equal(up, p):
                break
            p = up
        self.parent[: self.size] = p

    def union(self, a: Tensor, b: Tensor) -> None:
        """Unite ``a[i]`` with ``b[i]`` for every i (the smaller root wins, so 0 stays root)."""
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not bool(differ.any()):
                return
            ra, rb = ra[differ], rb[differ]
            lo, hi = torch.minimum(ra, rb), torch.maximum(ra, rb)
            # Several pairs may share a root; amin keeps one link per root, the loop adds the rest.
            self.parent.scatter_reduce_(0, hi, lo, reduce="amin")
            a, b = lo, hi

    def roots(self) -> Tensor:
        """Root of every id handed out so far."""
        self.compress()
        return self.parent[: self.size].clone()


class Dims(list):
    """Labels of one tensor: per dimension an id vector, or None for a dim without channels."""


Value = Any  # Dims for a tensor, tuple of Values for a tuple, None for anything else


@dataclass
class FlopTerm:
    """FLOPs of one op: ``coef`` times the product of the live entry counts of ``factors``."""

    coef: float
    factors: list[Tensor]
    node: str



def resolve_attr(root: nn.Module, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def flat_labels(value: Value) -> list[Tensor]:
    if isinstance(value, Dims):
        return [l for l in value if l is not None]
    if isinstance(value, (tuple, list)):
        return [l for v in value for l in flat_labels(v)]
    if isinstance(value, dict):
        return [l for v in value.values() for l in flat_labels(v)]
    return []


def frozen_value(meta: Any) -> Value:
    """Labels for a value without channel ids (None in every dim), shaped like ``meta``."""
    if hasattr(meta, "shape"):
        return Dims([None] * len(meta.shape))
    if isinstance(meta, (tuple, list)):
        return tuple(frozen_value(m) for m in meta)
    if isinstance(meta, dict):
        return tuple(frozen_value(m) for m in meta.values())
    return None


def matches(value: Value, meta: Any) -> bool:
    """Does a rule's result have the structure and dim counts of the node's output?"""
    if hasattr(meta, "shape"):
        return isinstance(value, Dims) and len(value) == len(meta.shape) and all(
            l is None or len(l) == n for l, n in zip(value, meta.shape)
        )
    if isinstance(meta, (tuple, list)):
        return isinstance(value, tuple) and len(value) == len(meta) and all(map(matches, value, meta))
    return value is None or frozen_value(meta) == value


