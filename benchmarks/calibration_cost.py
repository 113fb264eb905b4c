"""What a calibrated prune costs on a torchvision ResNet50 at 224x224.

    python -m benchmarks.calibration_cost [--threads 2] [--repeats 2]

Prunes ``torchvision.models.resnet50()`` (seeded random weights, BatchNorm statistics from a
few random batches so that they are not the identity) to 2x FLOPs with the calibrated
defaults and 8 calibration batches of 8 images, and with l2 and no data for comparison; reports
the wall time of each stage of ``fxmeta.prune`` (the median over the repeats) and the load
average. Writes benchmarks/results/calibration_cost.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from .common import header, table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speedup", type=float, default=2.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torchvision

    import fxmeta

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 224, 224))
    model.eval()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 224, 224, generator=gen), torch.randint(0, 1000, (8,), generator=gen))
               for _ in range(8)]
    x = batches[0][0][:1]
    runs = {"l2, no data": lambda: fxmeta.prune(model, x, speedup=args.speedup),
            "calibrated defaults (8 batches of 8)": lambda: fxmeta.prune(model, x, speedup=args.speedup,
                                                                         calibration=batches)}
    with torch.no_grad():  # the floor: activation importance runs the model over the batches once (and
        model(x)               # records the outputs the refits aim at); the compensation runs the slimmed one
        t0 = time.perf_counter()
        for images, _ in batches:
            model(images)
        forward = time.perf_counter() - t0
    rows, plan = [], None
    for label, run in runs.items():
        totals, stages = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = run()
            totals.append(time.perf_counter() - t0)
            stages.append(result.timings)
            plan = result.plan if "calibrated" in label else plan
        names = list(dict.fromkeys(k for s in stages for k in s))
        detail = ", ".join(f"{k} {statistics.median(s.get(k, 0.0) for s in stages):.2f}" for k in names)
        data_s = statistics.median(s.get("importance", 0.0) + s.get("compensation", 0.0) for s in stages)
        rows.append([label, f"{statistics.median(totals):.1f}", f"{data_s:.1f}" if "calibrated" in label else "—",
                     detail])
        print(f"{label}: {statistics.median(totals):.1f} s ({detail})", flush=True)
    precision = solve_precision(model, x, batches, args)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    text = "\n".join([
        "# Cost of a calibrated prune: torchvision ResNet50, 224x224", "",
        header(f"python -m benchmarks.calibration_cost --threads {args.threads} --repeats {args.repeats}",
               args.threads, "0 (weights), 1 (calibration batches)"), "",
        f"`fxmeta.prune` to {args.speedup:g}x FLOPs; median of {args.repeats} runs; seconds per stage of the prune "
        f"(`PruneResult.timings`). The calibrated prune is {plan['importance']} importance, {plan['compensate']} "
        f"compensation, {plan['allocation']} allocation; {len(plan['compensation']['changed'])} layers refit. "
        f"One forward pass of the original network over the 8 calibration batches takes {forward:.1f} s on this "
        f"machine: activation importance runs it once and records the original outputs the refits aim at; the "
        f"compensation then runs the slimmed network once, refitting each consumer layer on the way (normal "
        f"equations in float32 on at most 16 rows per input feature, solved by Cholesky in float32, in float64 where that fails). "
        f"Calibration + compensation = the importance and compensation stages. Load average at the end: {load}.", "",
        table(["prune", "seconds", "calibration + compensation (s)", "stages (s)"], rows), "", precision, ""])
    out = Path(__file__).parent / "results" / "calibration_cost.md"
    out.write_text(text)
    print(f"wrote {out}")


def solve_precision(model, x, batches, args) -> str:
    """The compensation with its ridge systems factorised in float32 (the product's) and in float64,
    in alternation in this process: its seconds, and how far the two pruned networks' outputs differ."""
    import fxmeta
    from fxmeta.pruning import compensation

    seconds: dict = {torch.float32: [], torch.float64: []}
    outputs = {}
    probe = batches[-1][0]
    try:
        for _ in range(args.repeats):
            for dtype in seconds:
                compensation.SOLVE_DTYPE = dtype
                result = fxmeta.prune(model, x, speedup=args.speedup, calibration=batches)
                seconds[dtype].append(result.timings["compensation"])
                with torch.no_grad():
                    outputs[dtype] = result.module.eval()(probe)
    finally:
        compensation.SOLVE_DTYPE = torch.float32
    diff = float((outputs[torch.float32] - outputs[torch.float64]).abs().max() / outputs[torch.float64].abs().max())
    f32, f64 = (statistics.median(seconds[d]) for d in seconds)
    return (f"Factorising the ridge systems in float32 (the product's) against float64, in alternation in this run "
            f"(median of {args.repeats} each): compensation {f32:.2f} s against {f64:.2f} s; the two pruned networks' "
            f"outputs on a calibration batch differ by at most {diff:.1e} of their largest magnitude.")


if __name__ == "__main__":
    main()
