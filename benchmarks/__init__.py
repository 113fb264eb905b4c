"""Benchmarks, each run from the repository root as ``python -m benchmarks.NAME``; tables go to
``benchmarks/results/`` with the machine, versions and seeds they ran with."""
