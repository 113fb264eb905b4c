"""What every benchmark shares: the run header, a cache outside the repository, summary
statistics and markdown tables. Benchmarks import this module and fxmeta's public names,
never each other."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._env import header

__all__ = ["cache_dir", "header", "key", "mean_se", "pct", "table"]


def cache_dir(name: str) -> Path:
    """``$FXMETA_BENCH_CACHE/NAME`` (default ``~/.cache/fxmeta-bench/NAME``), created."""
    root = Path(os.environ.get("FXMETA_BENCH_CACHE", Path.home() / ".cache" / "fxmeta-bench"))
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def key(obj: Any) -> str:
    """A short stable digest of plain data: the cache key of a cell's settings."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def pct(values: Sequence[float], digits: int = 1) -> str:
    """Fractions as "mean ± SE" in percent."""
    m, se = mean_se([100 * v for v in values])
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if len(values) > 1 else "")


def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
