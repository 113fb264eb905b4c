"""Importance criteria: a score per unit of a dependency group (higher: keep)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..analysis.channels import Group
from ..errors import PruningError

Importance = Callable[[Group, dict[str, Tensor]], Tensor]


# --------------------------------------------------------------------------- importance


def _group_reduce(group: Group, params: dict[str, Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    total = torch.zeros(group.units, dtype=torch.float64)
    for name, dim, index in group.slices:
        p = params[name].detach()
        total += fn(p.movedim(dim, 0)[index.to(p.device)].flatten(1).double()).sum(1).cpu()
    return total / max(1, len(group.slices))


def l2_importance(group: Group, params: dict[str, Tensor]) -> Tensor:
    """Group L2 norm: root of the mean over the group's slices of each unit's squared norm."""
    return _group_reduce(group, params, lambda t: t.pow(2)).sqrt()


def l1_importance(group: Group, params: dict[str, Tensor]) -> Tensor:
    return _group_reduce(group, params, lambda t: t.abs())


def random_importance(seed: int = 0) -> Importance:
    gen = torch.Generator().manual_seed(seed)
    return lambda group, params: torch.rand(group.units, generator=gen, dtype=torch.float64)


def importance_fn(importance: str | Importance, seed: int) -> Importance:
    if callable(importance):
        return importance
    table = {"l2": l2_importance, "l1": l1_importance, "random": random_importance(seed)}
    if importance not in table:
        raise PruningError(f"unknown importance {importance!r}; use 'l2', 'l1', 'random' or a callable")
    return table[importance]
