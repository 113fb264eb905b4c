"""Wall time and results of `fxmeta demo`, the README's main job, as a user runs it.

Each run is a fresh `python -m fxmeta demo` process: first with an empty cache (the base
network is trained), then again with the warm cache (the base network is loaded). Every
run prunes three ways at the same epoch budget (calibrated, prepared, metanetwork);
the table has a row per column of the demo. Per-stage times, accuracy, FLOPs and latency
come from the run's metrics.json; the wall time is the whole process (start-up included).

    python -m benchmarks.transform_report [--seeds 0] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METANET = ROOT / "fxmeta" / "assets" / "metanet_digits.pt"


def run_demo(cache: Path, out: Path, seed: int, threads: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "fxmeta", "demo", "--cache-dir", str(cache), "--out", str(out), "--force",
           "--seed", str(seed), "--threads", str(threads), "--no-progress", *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    shown = ["fxmeta", *cmd[3:]]
    # the same command for every run: its per-run paths and seed as placeholders
    shown[shown.index(str(cache))], shown[shown.index(str(out))] = "CACHE", "OUT"
    shown[shown.index("--seed") + 1] = "SEED"
    return {"wall_s": wall, "load_before": load, "metrics": metrics, "command": " ".join(shown)}


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def summary(rows: list[tuple[str, int, dict]]) -> list[str]:
    """Mean ± std over the seeds' empty-cache runs, per column (the warm runs repeat them)."""
    cold = [r for name, _, r in rows if name == "empty cache"]
    head = ["column", "acc before any finetune % (after BatchNorm recalibration where it runs)",
            "acc after finetune %", "finetuned on (runs)", "FLOPs x", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for column in cold[0]["metrics"]["methods"]:
        ms = [r["metrics"]["methods"][column] for r in cold]
        cells = [column]
        before = [m.get("recalibrated_accuracy") if m.get("recalibrated_accuracy") is not None
                  else m.get("removed_accuracy") for m in ms]
        for values in (before, [m["after"]["accuracy"] for m in ms]):
            values = [100 * v for v in values if v is not None]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}" if values else "-")
        objectives = [m.get("finetune_objective") or "-" for m in ms]  # distill / labels: fxmeta transform's rule
        cells += [", ".join(f"{o} ({objectives.count(o)})" for o in sorted(set(objectives))),
                  f"{statistics.mean(m['flops_speedup'] for m in ms):.2f}", str(len(ms))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table(rows: list[tuple[str, int, dict]]) -> list[str]:
    entries = [(name, seed, r, column, m) for name, seed, r in rows for column, m in r["metrics"]["methods"].items()]
    stages: list[str] = []
    for *_, m in entries:
        stages += [s for s in m["stages"] if s not in stages]
    head = ["run", "seed", "wall s", "column", *[f"{s} s" for s in stages], "acc before %", "acc after removal %",
            "acc after BatchNorm recalibration %", "acc after finetune %", "FLOPs x", "params kept %", "latency x",
            "latency ms before / after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, seed, r, column, m in entries:
        lat_b, lat_a = m["before"]["latency"], m["after"]["latency"]
        cells = [name, str(seed), f"{r['wall_s']:.1f}", column,
                 *[f"{m['stages'][s]:.2f}" if s in m["stages"] else "-" for s in stages],
                 _fmt_pct(m["before"]["accuracy"]), _fmt_pct(m["removed_accuracy"]),
                 _fmt_pct(m.get("recalibrated_accuracy")), _fmt_pct(m["after"]["accuracy"]),
                 f"{m['flops_speedup']:.2f}", f"{100 * m['params_ratio']:.1f}", f"{m['latency_speedup']:.2f}",
                 f"{lat_b['median_ms']:.2f} / {lat_a['median_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (the demo's default: 1)")
    parser.add_argument("--out", default=str(HERE / "results" / "transform.md"))
    args = parser.parse_args()
    from ._env import header

    rows: list[tuple[str, int, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cache, out = Path(tmp) / f"cache{seed}", Path(tmp) / f"out{seed}"
            for state in ("empty cache", "warm cache"):
                rows.append((state, seed, run_demo(cache, out, seed, args.threads, [])))
                print(f"seed {seed} {state}: {rows[-1][2]['wall_s']:.1f} s", flush=True)
    cold = [r["wall_s"] for name, _, r in rows if "empty cache" in name]
    demo_cmd = rows[0][2]["command"]
    lat = rows[0][2]["metrics"]["before"]["latency"]
    columns = ", ".join(rows[0][2]["metrics"]["methods"])
    text = [
        "# `fxmeta demo`: wall time and results",
        "",
        header(f"python -m benchmarks.transform_report --seeds {' '.join(map(str, args.seeds))} "
               f"--threads {args.threads}", args.threads, seeds=", ".join(map(str, args.seeds))),
        f"- demo command: `{demo_cmd}` (defaults otherwise: fxmeta:resnet20, digits 16x16, 15 base epochs, "
        "2x FLOPs target, BatchNorm recalibration on 20 batches, 10 epochs per column: calibrated 10 finetune; "
        "prepared 5 prepare + 5 finetune; metanetwork 2 adapt (the prunability objective for the prune it was told) + 8 finetune)",
        f"- columns: {columns}",
        f"- metanetwork: {'fxmeta/assets/' + METANET.name if METANET.is_file() else 'none committed: importance pruning'}",
        f"- 1-minute load average before each run: {', '.join('%.1f' % r[2]['load_before'] for r in rows)} "
        "(the machine is shared; times scale with it)",
        "",
        f"Wall time of the whole command with an empty cache (what a first `fxmeta demo` costs): "
        f"{statistics.median(cold):.1f} s median, target < 300 s.",
        "",
        "Stage times come from the run's metrics; `wall` is the process (Python and torch start-up included). "
        "Accuracy is on the digits test split (360 images). Latency: median of timed forward passes after "
        f"warm-up, {lat['threads']} torch thread(s), batch {lat['batch']}, {lat['device']}.",
        "",
        "Mean over the seeds (empty-cache runs; test split):",
        "",
        *summary(rows),
        "",
        "Every run:",
        "",
        *table(rows),
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
