"""Pruning quality: fxmeta with and without the metanetwork against Torch-Pruning (``python -m benchmarks.quality``).

settings (grid, data, shared plumbing) -> baselines (base networks, metanetwork, Torch-Pruning)
-> cells (one method at one target) -> report (tables, plot); ``__main__`` runs the grid and is the
benchmark. This package's API (the names below) is a library of the benchmarks: ``metanet_digits``
reuses its base networks and metanetwork, and zoos load ``digits16`` by name.
"""
import os

# Idle OpenMP threads sleep instead of spinning (set before torch starts its thread pool): on
# a shared machine spinning threads wait for cores other processes hold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .baselines import build_bases, build_metanet, generate  # noqa: E402
from .cells import choose_finetune_lr  # noqa: E402
from .settings import FULL, QUICK, Context, Settings, digits16  # noqa: E402

__all__ = ["FULL", "QUICK", "Context", "Settings", "build_bases", "build_metanet", "choose_finetune_lr", "digits16",
           "generate"]
