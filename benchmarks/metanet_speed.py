"""Metanetwork forward + backward speed and peak memory on CPU.

For each model its WeightGraph goes through a fresh metanetwork (reference settings per
family: CIFAR ResNets 8 layers x width 64, ResNet50 6 layers x width 16) and a scalar
loss on the raised, differentiable weights is backpropagated to the metanetwork's
parameters, as one meta-training step does (minus the data model's own forward). Every
model runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is clean.
The first forward + backward is a warm-up; the table gives medians of the following
repeats, and the warm-up time separately.

Targets: torchvision resnet50 (224 input, 10 classes) forward + backward under 15 s and
peak memory under 8 GiB with ``torch.set_num_threads(2)``.

    python -m benchmarks.metanet_speed [--threads 2[,1]] [--repeats 3] [--models resnet20,resnet56,resnet50]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The OpenMP wait policy is left as the environment sets it (unset: libgomp spins briefly between
# parallel regions, then sleeps), as users run meta-training. Run this alone: spinning threads of two
# jobs on 2 cores slow both several-fold. On a quiet machine the policy hardly matters for wall time
# (ResNet50: OMP_WAIT_POLICY=PASSIVE 13.8 s vs unset 13.2 s), only for CPU time (19.9 vs 26.6 s).
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "metanet_speed.md"
# name: (builder, input shape, width, depth, ratio) -- the reference's settings per family
MODELS = {
    "resnet20": ("fxmeta:resnet20", (1, 3, 32, 32), 64, 8, 0.01),
    "resnet56": ("fxmeta:resnet56", (1, 3, 32, 32), 64, 8, 0.01),
    "resnet50": ("torchvision:resnet50", (1, 3, 224, 224), 16, 6, 0.002),
}


def _build(spec: str):
    import torchvision

    source, name = spec.split(":")
    if source == "torchvision":
        return torchvision.models.get_model(name, weights=None, num_classes=10)
    from fxmeta import models

    builder = getattr(models, name, None)
    return None if builder is None else builder(num_classes=10)


def measure(name: str, threads: int, repeats: int) -> dict:
    """One model, in this process: lower, then warm-up + ``repeats`` timed forward/backward."""
    import torch

    from fxmeta.ir import lower, raise_params
    from fxmeta.metanet import Metanet

    from ._env import peak_rss_mib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec, shape, width, depth, ratio = MODELS[name]
    model = _build(spec)
    if model is None:
        return {"model": name, "skipped": f"{spec} is not available in this fxmeta"}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    graph = lower(model, torch.randn(shape))
    lower_s = time.perf_counter() - t0
    base_mib = peak_rss_mib()
    net = Metanet.for_graph(graph, width=width, depth=depth, ratio=ratio)
    fwd, bwd, cpu = [], [], []
    for _ in range(repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        params = raise_params(net(graph))
        t1 = time.perf_counter()
        loss = sum((v * v).sum() for v in params.values() if v.requires_grad)
        net.zero_grad(set_to_none=True)
        loss.backward()
        t2, c2 = time.perf_counter(), time.process_time()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        cpu.append(c2 - c0)
        del params, loss
    grads = sum(p.grad is not None for p in net.parameters())
    return {
        "model": name, "nodes": graph.num_nodes, "edges": graph.num_edges, "width": width, "depth": depth,
        "lower_s": lower_s, "warmup_s": fwd[0] + bwd[0], "fwd_s": statistics.median(fwd[1:]),
        "bwd_s": statistics.median(bwd[1:]), "cpu_s": statistics.median(cpu[1:]), "base_mib": base_mib, "peak_mib": peak_rss_mib(),
        "metanet_params": sum(p.numel() for p in net.parameters()), "params_with_grad": grads,
    }


def _load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="2", help="torch threads; a comma list runs each in turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.one:
        print(json.dumps(measure(args.one, threads[0], args.repeats)))
        return
    from ._env import header

    rows, loads = [], [_load_average()]
    for n in threads:
        for name in args.models.split(","):
            cmd = [sys.executable, "-m", "benchmarks.metanet_speed", "--one", name, "--threads", str(n), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
            if proc.returncode != 0:
                rows.append({"model": name, "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            rows[-1]["threads"] = n
            loads.append(_load_average())
            print(json.dumps(rows[-1]), flush=True)

    command = "python -m benchmarks.metanet_speed " + " ".join(sys.argv[1:])
    lines = ["# Metanetwork forward + backward speed and memory (CPU)", "",
             header(command.strip(), threads[0], "torch.manual_seed(0)"),
             f"- load average (1/5/15 min) before and after each run: {' | '.join(loads)}; "
             f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}",
             "  (the machine is shared; a load above the core count slows every number here, and "
             "multi-threaded runs most: their threads wait for each other)", "",
             "Forward = WeightGraph -> metanetwork -> raised weights; backward = a scalar loss on the raised "
             "weights back to every metanetwork parameter. Medians over repeats after one warm-up (the warm-up also "
             "fills the metanetwork's buffer pool, fxmeta/pool.py, which later steps reuse). "
             "CPU s = process CPU time of forward + backward (all threads). Peak = the subprocess's peak RSS; "
             "base = RSS with the model lowered, before the metanetwork ran.", "",
             "| model | threads | nodes | edges | width x depth | lower s | forward s | backward s | fwd+bwd s "
             "| CPU s | warm-up s | base GiB | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['threads']} | {r['skipped']} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['nodes']} | {r['edges']} | {r['width']} x {r['depth']} "
            f"| {r['lower_s']:.2f} | {r['fwd_s']:.2f} | {r['bwd_s']:.2f} | {r['fwd_s'] + r['bwd_s']:.2f} "
            f"| {r['cpu_s']:.2f} | {r['warmup_s']:.1f} | {r['base_mib'] / 1024:.2f} | {r['peak_mib'] / 1024:.2f} |")
    lines += ["", "Target: resnet50 forward + backward < 15 s and peak < 8 GiB at 2 threads."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
