"""Measured CPU latency of models pruned to 2x FLOPs, against the original.

Random-init models in eval mode, batch 8, 224x224, ``torch.inference_mode``, a fixed
thread count. The original and the pruned model are timed alternately, one forward
each per round, so load from other processes on a shared machine hits both alike; the
figure is the median over rounds. Pruned with ``fxmeta.pruning.pruner.prune(speedup=2.0)``,
with and without ``round_to=8``. Target: latency speed-up / FLOPs speed-up >= 0.85 on
resnet50 and vit_b_16.

    python -m benchmarks.latency [--threads 1] [--rounds 10] [--models resnet18,...]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latency.md"
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "vit_b_16", "densenet121"]


def alternate(a, b, x, rounds: int, warmup: int = 2) -> tuple[float, float]:
    """Median milliseconds of ``a(x)`` and ``b(x)``, timed in alternation."""
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            a(x)
            b(x)
        for _ in range(rounds):
            t0 = time.perf_counter()
            a(x)
            t1 = time.perf_counter()
            b(x)
            t2 = time.perf_counter()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from fxmeta.pruning.pruner import prune

    from ._env import header

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        for round_to in (None, 8):
            result = prune(model, example, speedup=2.0, round_to=round_to)
            before, after = alternate(model, result.module, x, args.rounds)
            lat = before / after
            rows.append((name, round_to, result.speedup, before, after, lat, lat / result.speedup))
            print(f"{name} round_to={round_to}: FLOPs {result.speedup:.2f}x latency {before:.0f} -> {after:.0f} ms "
                  f"= {lat:.2f}x, ratio {lat / result.speedup:.2f}", flush=True)
    lines = [
        "# CPU latency at 2x FLOPs",
        "",
        header(f"python -m benchmarks.latency --threads {args.threads} --rounds {args.rounds} --batch {args.batch}",
               args.threads, "model init torch.manual_seed(0), inputs seeds 0 (pruning) and 1 (timing)").rstrip(),
        f"- random-init models, eval, batch {args.batch}, 224x224, torch.inference_mode, "
        f"torch.set_num_threads({args.threads}); original and pruned timed alternately, median of {args.rounds} "
        "rounds after 2 warm-up rounds",
        "",
        "| model | round_to | FLOPs speed-up | original (ms) | pruned (ms) | latency speed-up | latency / FLOPs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, round_to, flops, before, after, lat, ratio in rows:
        lines.append(f"| {name} | {round_to or '-'} | {flops:.2f}x | {before:.0f} | {after:.0f} | {lat:.2f}x | "
                     f"{ratio:.2f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
