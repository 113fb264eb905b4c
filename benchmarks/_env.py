"""Machine / version header shared by the benchmark scripts' result tables."""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone

import torch
import torchvision


def header(command: str, threads: int, seeds: str = "-") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "\n".join([
        f"- command: `{command}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} cores, torch threads = {threads}",
        f"- versions: python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- seeds: {seeds}",
        "- load average (1/5/15 min) when the table was written: " + " / ".join(f"{v:.1f}" for v in os.getloadavg())
        + f" on {os.cpu_count()} cores (above the core count, other work shared the machine)",
    ]) + "\n"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
