"""What every benchmark shares: the run header, a cache outside the repository, summary
statistics and markdown tables. Benchmarks import this module and fxmeta's public names,
never each other."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ._env import header

__all__ = ["cache_dir", "cached_cell", "header", "key", "line_plot", "mean_se", "pct", "say", "table"]


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


def say(text: str) -> None:
    """A timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def cached_cell(folder: Path, parts: dict, run: Callable[[], dict]) -> dict:
    """One table cell: ``parts`` (its settings) plus what ``run()`` measured and its seconds, read from
    ``folder`` when a run with the same settings is there, else run and stored."""
    path = folder / f"{key(parts)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    cell = {**parts, **run(), "seconds": round(time.perf_counter() - t0, 2)}
    path.write_text(json.dumps(cell))
    return cell


def line_plot(path: Path, panels: dict[str, dict[str, list[tuple[float, float]]]], reference: dict[str, float],
              xlabel: str, ylabel: str) -> None:
    """One panel per title, one line per label (points ``(x, y)``, x on a log2 axis), and a dotted
    reference line per panel (e.g. the unpruned network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        for label, points in lines.items():
            if points:
                ax.plot(*zip(*points), "o-", label=label)
        if title in reference:
            ax.axhline(reference[title], color="k", ls=":", label="unpruned")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
