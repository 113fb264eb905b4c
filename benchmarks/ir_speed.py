"""Lowering / raising speed and memory of the WeightGraph IR.

Each model runs in its own subprocess so peak memory is measured cleanly: the extra
peak is the process's peak RSS after lower + raise minus its RSS with the model built.
Targets: lower + raise of resnet50 under 3 s, extra peak memory under 3x parameter bytes.

    python -m benchmarks.ir_speed [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ["resnet50", "vit_b_16"]


def measure(name: str, threads: int, repeats: int) -> dict:
    import torch
    import torchvision

    from fxmeta.ir import lower, raise_graph
    from fxmeta.tracing import trace

    from ._env import peak_rss_mib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    param_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    gm = trace(model, x)  # tracing + shape propagation is timed separately
    base = peak_rss_mib()
    lowers, raises, traces = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gm = trace(model, x)
        t1 = time.perf_counter()
        graph = lower(model, x, gm=gm)
        t2 = time.perf_counter()
        raised = raise_graph(graph)
        t3 = time.perf_counter()
        traces.append(t1 - t0)
        lowers.append(t2 - t1)
        raises.append(t3 - t2)
        del raised
    extra = peak_rss_mib() - base
    sd, rd = model.state_dict(), raise_graph(graph).state_dict()
    exact = all(torch.equal(sd[k], rd[k]) for k in sd)
    return {
        "model": name, "params_mib": param_bytes / 2**20, "nodes": graph.num_nodes, "edges": graph.num_edges,
        "trace_s": statistics.median(traces), "lower_s": statistics.median(lowers),
        "raise_s": statistics.median(raises), "extra_peak_mib": extra, "exact": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads, args.repeats)))
        return
    from ._env import header

    rows = []
    for name in MODELS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.ir_speed", "--one", name, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, check=True, cwd=HERE.parent)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    cmd = f"python -m benchmarks.ir_speed --threads {args.threads} --repeats {args.repeats}"
    lines = ["# IR lowering / raising speed", "", header(cmd, args.threads, "torch.manual_seed(0)"),
             "Times are medians over repeats; extra peak = peak RSS during the runs minus RSS with the model "
             "traced (measures lower + raise, including the raised copy of all weights).", "",
             "| model | params MiB | nodes | edges | trace+shapes s | lower s | raise s | lower+raise s "
             "| extra peak MiB | extra / params | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_mib']:.1f} | {r['nodes']} | {r['edges']} | {r['trace_s']:.3f} "
            f"| {r['lower_s']:.3f} | {r['raise_s']:.3f} | {r['lower_s'] + r['raise_s']:.3f} "
            f"| {r['extra_peak_mib']:.0f} | {r['extra_peak_mib'] / r['params_mib']:.2f}x | {r['exact']} |")
    lines += ["", "Targets: resnet50 lower + raise < 3 s; extra peak < 3x parameter bytes."]
    out = HERE / "results" / "ir_speed.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (HERE / "results" / "ir_speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
