"""Scatter backends: combine per-chunk statistics at their receiving nodes.

Native torch (``index_add`` / ``scatter_reduce``) by default; torch-scatter when it is
installed and asked for (``pip install fxmeta[scatter]``).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-5


def has_torch_scatter() -> bool:
    return importlib.util.find_spec("torch_scatter") is not None


def scatter_stats(vals: Tensor, ids: Tensor, n: int, backend: str = "torch") -> Tensor:
    """Combine partial statistics (M, 4, d) [sum, sumsq, max, min] at node ids -> (n, 4, d)."""
    d = vals.shape[-1]
    if backend == "torch_scatter":
        import torch_scatter

        sums = torch_scatter.scatter(vals[:, :2], ids, 0, dim_size=n, reduce="sum")
        mx = torch_scatter.scatter(vals[:, 2], ids, 0, dim_size=n, reduce="max")
        mn = torch_scatter.scatter(vals[:, 3], ids, 0, dim_size=n, reduce="min")
    else:
        sums = vals.new_zeros(n, 2, d).index_add(0, ids, vals[:, :2])
        index = ids[:, None].expand(-1, d)
        mx = vals.new_zeros(n, d).scatter_reduce(0, index, vals[:, 2], "amax", include_self=False)
        mn = vals.new_zeros(n, d).scatter_reduce(0, index, vals[:, 3], "amin", include_self=False)
    return torch.cat([sums, mx[:, None], mn[:, None]], 1)


def pna(stats: Tensor, count: Tensor, receiver: Tensor) -> Tensor:
    """mean, std, max, min of ``receiver * t`` from the statistics of t -> (N, 4d)."""
    s, q, mx, mn = stats.unbind(1)
    pos = receiver >= 0
    s, q = receiver * s, receiver * receiver * q
    mx, mn = torch.where(pos, receiver * mx, receiver * mn), torch.where(pos, receiver * mn, receiver * mx)
    n = count.clamp(min=1)[:, None]
    mean = s / n
    std = torch.sqrt(F.relu(q / n - mean * mean) + _EPS)
    return torch.cat([mean, std, mx, mn], 1)
