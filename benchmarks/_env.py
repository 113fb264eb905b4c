"""Machine / version header shared by the benchmark scripts' result tables."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision


def header(command: str, threads: int, seeds: str = "-") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    busy = load[0] > (os.cpu_count() or 1)
    return "\n".join([
        f"- command: `{command}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} cores, torch threads = {threads}",
        f"- versions: python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- seeds: {seeds}",
        "- load average (1/5/15 min) when the table was written: " + " / ".join(f"{v:.1f}" for v in load)
        + f" on {os.cpu_count()} cores" + (" (above the core count: other work shared the machine)" if busy else ""),
    ]) + "\n"


def spawn_cell(module: str, args: list[str], timeout: float) -> dict:
    """Run one table cell as ``python -m MODULE ARGS --out FILE`` in its own process (a crash or
    a hang costs that cell only) and return the JSON it wrote, or a "no" entry saying why."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", module, *args, "--out", out], timeout=timeout,
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        text = Path(out).read_text() if os.path.getsize(out) else ""
        if text:
            return json.loads(text)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"status": "no", "why": f"crashed ({proc.returncode}): {tail[0][:200]}"}
    except subprocess.TimeoutExpired:
        return {"status": "no", "why": f"timed out after {timeout} s", "seconds": time.perf_counter() - t0}
    finally:
        os.unlink(out)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict:
    """python, torch, torchvision, torch-pruning versions and the git commit of the tree."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import torch_pruning

        out["torch-pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return out
