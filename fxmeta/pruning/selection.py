"""FLOPs-targeted selection: rank units globally, remove the weakest until the target is met."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..analysis.channels import ChannelAnalysis, Group
from ..errors import PruningError
from .flops import FlopModel
from .importance import Importance

# --------------------------------------------------------------------------- selection


@dataclass
class Candidates:
    groups: list[Group]
    roots: Tensor  # (U,) unit ids
    group_of: Tensor  # (U,)
    rank: Tensor  # (U,) rank of the unit within its group, weakest first
    order: Tensor  # (U,) global order, weakest first
    sizes: Tensor  # (G,)
    caps: Tensor  # (G,) most units a group may lose
    steps: Tensor  # (G,) kept counts are multiples of this
    # (U,) for the uniform allocation: where the run of equal scores through each position of
    # ``order`` ends; a removal takes whole runs, so groups of one size lose the same count
    tie_ends: Tensor | None = None


# how removal is spread over the groups: the user-facing name -> how a group's scores are normalised
# ("uniform-tied": as "uniform", and groups of one size keep exactly the same count, for a config that
# states one width per layer kind; the removal moves in coarser steps, so it overshoots the target more)
ALLOCATIONS = {"global": "max", "global-mean": "mean", "uniform": "rank", "uniform-tied": "rank-tied"}


def check_allocation(allocation: str, error: type[Exception] = PruningError) -> str:
    """The normalisation of ``allocation``; an unknown name raises ``error`` (a config's own kind)."""
    if allocation not in ALLOCATIONS:
        raise error(f"unknown allocation {allocation!r}; use one of {', '.join(map(repr, ALLOCATIONS))}")
    return ALLOCATIONS[allocation]


def candidates(analysis: ChannelAnalysis, importance: Importance, round_to: int | None,
                min_keep: float, allocation: str = "global") -> Candidates:
    normalize = check_allocation(allocation)
    groups = [g for g in analysis.groups if g.prunable]
    params = dict(analysis.gm.named_parameters(remove_duplicate=False))
    roots, group_of, scores, ranks = [], [], [], []
    sizes, caps, steps = [], [], []
    for gi, g in enumerate(groups):
        s = torch.as_tensor(importance(g, params), dtype=torch.float64).flatten()
        if s.shape != (g.units,):
            raise PruningError(f"importance returned shape {tuple(s.shape)} for {g.describe()}; expected ({g.units},)")
        s = _normalized(s, normalize)
        roots.append(g.roots)
        group_of.append(torch.full((g.units,), gi))
        scores.append(s)
        r = torch.empty(g.units, dtype=torch.long)
        r[torch.argsort(s, stable=True)] = torch.arange(g.units)
        ranks.append(r)
        sizes.append(g.units)
        keep = max(1, math.ceil(min_keep * g.units))
        caps.append(g.units - keep)
        m = g.slices[0][2].shape[1] if g.slices else 1
        steps.append(1 if not round_to else round_to // math.gcd(round_to, m))
    if not groups:
        empty = torch.zeros(0, dtype=torch.long)
        return Candidates([], empty, empty, empty, empty, empty, empty, empty)
    score = torch.cat(scores)
    group_t = torch.cat(group_of)
    # global order: weakest first; ties broken by group, then by unit
    order = torch.argsort(score, stable=True)
    return Candidates(groups, torch.cat(roots), group_t, torch.cat(ranks), order, torch.tensor(sizes),
                       torch.tensor(caps), torch.tensor(steps), _tie_ends(score[order]) if normalize == "rank-tied" else None)


def _tie_ends(ordered: Tensor) -> Tensor:
    """For each position of ascending ``ordered``, the end (exclusive) of its run of equal values."""
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    ends = torch.cumsum(counts, 0)
    return torch.repeat_interleave(ends, counts)


def _normalized(s: Tensor, normalize: str) -> Tensor:
    """A group's scores made comparable across groups: divided by the group's largest ("max") or
    mean ("mean") score, or replaced by their rank fraction ("rank": every group then loses the
    same fraction of its units, a uniform allocation, up to one unit of rounding; "rank-tied": and
    ``removed_counts`` takes whole runs of equal fractions, so groups of one size, the layers of one
    kind, keep the same count)."""
    if normalize in ("rank", "rank-tied"):
        r = torch.empty_like(s)
        r[torch.argsort(s, stable=True)] = torch.arange(1, len(s) + 1, dtype=s.dtype)
        return r / len(s)
    top = s.abs().max() if normalize == "max" else s.abs().mean()
    return s / top if top > 0 else s


def removed_counts(c: Candidates, k: int) -> Tensor:
    if c.tie_ends is not None and k > 0:
        k = int(c.tie_ends[k - 1])
    counts = torch.bincount(c.group_of[c.order[:k]], minlength=len(c.groups))
    counts = torch.minimum(counts, c.caps)
    kept = c.sizes - counts
    kept = torch.minimum(c.sizes, (kept + c.steps - 1) // c.steps * c.steps)
    return c.sizes - kept


def removed_mask(c: Candidates, counts: Tensor, n_ids: int) -> Tensor:
    mask = torch.zeros(n_ids, dtype=torch.bool)
    if len(c.roots):
        mask[c.roots[c.rank < counts[c.group_of]]] = True
    return mask


def flop_model(analysis: ChannelAnalysis, constant: float = 0.0) -> FlopModel:
    terms = [(t.coef, [analysis.roots(f) for f in t.factors]) for t in analysis.flop_terms]
    return FlopModel(terms, constant)


def select(analysis: ChannelAnalysis, c: Candidates, model: FlopModel, base: float, target: float,
            min_keep: float, round_to: int | None) -> Tensor:
    n_ids = analysis.uf.size
    total = len(c.roots)
    best = base / max(model.evaluate(removed_mask(c, removed_counts(c, total), n_ids)), 1.0)
    if best < target:
        raise PruningError(
            f"speed-up {target:.3g}x is unreachable: at most {best:.3g}x while every group keeps at least "
            f"{min_keep:.0%} of its channels (library: min_keep={min_keep})"
            f"{f' in multiples of {round_to} (--round-to)' if round_to else ''}; lower the target (--speedup)"
            + (" or --min-keep" if min_keep > 0.1 else "")
        )
    lo, hi = 0, total  # smallest k whose removal reaches the target
    while lo < hi:
        mid = (lo + hi) // 2
        if base / model.evaluate(removed_mask(c, removed_counts(c, mid), n_ids)) >= target:
            hi = mid
        else:
            lo = mid + 1
    return removed_counts(c, lo)
