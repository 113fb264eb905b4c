"""Prepare for pruning against DepGraph+SL, fxmeta l2 and random, at an equal epoch budget.

ResNet20 / ResNet56 (``fxmeta.models``, 1 input channel) on scikit-learn's digits at
16x16 (one fixed train / val / test split). Every base network (one per seed) gets the
same number of training epochs after its base training, split in two stages:

1. ``pre_epochs`` epochs of the method's own stage:
   - ``prepared``: ``fxmeta.prepare`` at the target (the prunability objective);
   - ``DepGraph+SL``: Torch-Pruning's group-norm sparsity learning (``GroupNormPruner``
     ``regularize`` after every backward, SGD without weight decay, lr x0.1 at 60 / 80 %,
     best validation epoch), then its own pruning: GroupMagnitudeImportance(p=2,
     normalizer="max"), global, 400 iterative steps until fxmeta's FLOPs count reaches the
     target;
   - ``fxmeta-l2`` and ``random``: plain training epochs (same lr as the prepare stage),
     then fxmeta's prune with l2 / random importance;
   - ``metanet + prepared``: the committed conditioned metanetwork
     (``fxmeta/assets/metanet_digits.pt``, meta-trained on a zoo of other seeds; it takes the
     masked-loss gradient on the first 2 of the shared calibration batches, once per rewrite:
     three times for the committed learned optimiser), then
     ``fxmeta.prepare`` on its output, pruned to the channels the metanetwork was told;
   - ``metanet``: the metanetwork's output alone, pruned the same way: 0 epochs here, so
     its finetune gets ``pre_epochs + finetune_epochs`` epochs (the same total).
2. prune to the target, recompute BatchNorm statistics on the same ``bn_batches``
   training batches for every method, then ``finetune_epochs`` epochs of finetuning
   (``fxmeta.train``, best validation epoch).

Reported per (arch, method, target): test accuracy right after pruning + recalibration,
and after the finetune (mean ± std over seeds), the paired difference prepared −
DepGraph+SL with its standard error, and wall time per stage. Hyper-parameters (the
prepare weight, lr and mask schedule; the SL strength) are chosen on the validation split
of networks of their own (``sweep_seeds``, none of the compared seeds), scored by
validation accuracy right after a prune + recalibration, or after the finetune (plain or, as
``fxmeta transform``'s default, by distillation) where the family's target is the finetuned
network (``sweep_after``); the finetune lr per family is
the one quality.py chose on validation.

    python -m benchmarks.prepare            # full run; resumable (cells are cached)
    python -m benchmarks.prepare --quick    # spot check, a few minutes
    python -m benchmarks.prepare --family seqconv   # a family of another kind: 1-D convs (benchmarks.seqconv)

Results: ``benchmarks/results/prepare.{md,json,png}``; caches under
``~/.cache/fxmeta-bench/prepare`` (``--cache``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks import seqconv
from benchmarks._env import versions
from benchmarks.common import say
from benchmarks.digits import FULL, METANET, QUICK, Bench, Settings, choose, mean_std, pct

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("prepared", "DepGraph+SL", "fxmeta-l2", "random", "metanet + prepared", "metanet")
PAIRS = (("prepared", "DepGraph+SL"), ("metanet + prepared", "prepared"), ("metanet + prepared", "DepGraph+SL"),
         ("metanet", "fxmeta-l2"), ("metanet", "DepGraph+SL"))


def _rewrites() -> str:
    """How the committed metanetwork rewrites (from its config)."""
    from fxmeta.metanet import load_metanet

    config = load_metanet(str(METANET)).config
    head = f", a gradient-step head (start lr {config.step_lr:g})" if config.step_lr else ""
    return f"{config.steps} rewrite{'s' if config.steps > 1 else ''} per use{head}"


# ------------------------------------------------------------------------------ report


def paired(cells: list[dict], arch: str, target: float, key: str, a: str, b: str) -> tuple[float, float, int]:
    """Mean and standard error of a − b over the seeds both reached."""
    by = {(c["method"], c["seed"]): c for c in cells if c["arch"] == arch and c["target"] == target and key in c}
    diffs = [by[(a, sd)][key] - by[(b, sd)][key] for m, sd in by if m == a and (b, sd) in by]
    if not diffs:
        return float("nan"), float("nan"), 0
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return statistics.fmean(diffs), se, len(diffs)


def write_report(bench: Bench, cells: list[dict], choices: dict, sweep: dict, meta: dict, out: Path,
                 seeds_of: dict[str, tuple[list[int], dict[int, float]]]) -> None:
    s = bench.s
    lines = ["# Prepare for pruning vs DepGraph+SL, fxmeta l2 and random (equal epoch budget)", ""]
    lines += [f"- command: `{meta['command']}`", f"- date: {meta['date']}",
              f"- machine: {meta['machine']}, torch threads = {meta['threads']}",
              f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
              f"- base networks: seeds {'; '.join(f'{a} ' + ', '.join(map(str, u)) for a, (u, _) in seeds_of.items())}"
              f"; sweep networks: seeds {', '.join(map(str, s.sweep_seeds))}"
              + "".join(f"; {a} seed {sd} replaced by a spare seed: its training failed (val acc {100 * v:.1f} % < "
                        f"{100 * s.min_base_val:.0f} %)" for a, (_, rej) in seeds_of.items() for sd, v in rej.items()),
              f"- load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}",
              f"- run wall time: {meta['minutes']:.1f} min", ""]
    lines += ["## Setup", "",
              f"- data: {'scikit-learn digits' if s.data == 'digits' else s.data}"
              + (f" at {s.image_size}x{s.image_size}" if s.image_size else "") + f", {bench.data.description}",
              f"- base networks: {', '.join(s.archs)} (in_channels=1; `fxmeta.models` or `benchmarks/seqconv.py`), "
              f"{s.base_epochs} epochs SGD cosine, "
              f"lr {', '.join(f'{a} {lr:g}' for a, lr in s.base_lrs)}, batch {s.batch_size}",
              f"- budget per network after base training: {s.pre_epochs} epochs of the method's own stage + "
              f"{s.finetune_epochs} finetune epochs = {s.pre_epochs + s.finetune_epochs} epochs for every method "
              "(prepare / sparsity learning / plain epochs, then the same finetune: cosine, best val epoch, or the "
              "pruned network itself if no epoch beats it, "
              f"lr {', '.join(f'{a} {lr:g}' for a, lr in s.finetune_lrs)})",
              f"- right after pruning: BatchNorm statistics recomputed on the same {s.bn_batches} training batches "
              "for every method (no finetune)",
              "- DepGraph+SL: Torch-Pruning GroupNormPruner sparsity learning (SGD lr "
              f"{s.sl_lr:g}, momentum 0.9, no wd, x0.1 at 60/80 %, best val epoch), then its "
              f"GroupMagnitudeImportance(p=2, normalizer='max'), global, {s.tp_steps} steps until fxmeta's FLOPs "
              "count reaches the target; classifier ignored",
              "- prepared: `fxmeta.prepare` at the target (CE + weight x CE of the network with the channels a prune "
              "to the target removes masked, BatchNorm on batch statistics, mask from fxmeta's l2 selection; "
              "`sparsity` in a setting: the graded weight decay of `--prepare-sparsity`), "
              "last epoch kept, then fxmeta prune (l2)"]
    if s.distill_finetune:
        lines.append("- after a distillation finetune: the same pruned networks, finetuned with the same epochs, lr and "
                     "rule of keeping on the KL divergence to their base network's outputs instead of the labels "
                     "(`fxmeta transform --distill`, temperature 1; the teacher is the network before any method's own "
                     "stage, as `fxmeta transform`'s); the same settings as the plain finetune's")
    if s.metanet_targets:
        lines += ["- metanet + prepared / metanet: the committed conditioned metanetwork (fxmeta/assets/metanet_digits.pt, "
              "meta-trained on ResNet20s of other seeds; its gradient input on the first 2 of the shared calibration "
              f"batches, {_rewrites()}), then {s.pre_epochs} prepare epochs on its output / none, pruned to the channels the "
              f"metanetwork was told; `metanet` finetunes {s.pre_epochs + s.finetune_epochs} epochs (the same total). "
              "Targets: " + "; ".join(f"{a} {', '.join(f'{t:g}x' for t in ts)}" for a, ts in s.metanet_targets)]
    lines.append("")
    after = {"prune": "right after a prune + recalibration", "finetune": "after the prune and the finetune",
             "distill": "after the prune and a distillation finetune (`fxmeta transform`'s default finetune)"}
    column = {"prune": "first", "finetune": "second", "distill": "third"}[s.sweep_after]
    kd_head = " val, after a distillation finetune |" if s.distill_finetune and s.sweep_after != "prune" else ""
    lines += ["## Hyper-parameters, chosen on validation (never test)", "",
              f"Scored on the sweep network{'s' if len(s.sweep_seeds) > 1 else ''} (seed "
              f"{', '.join(map(str, s.sweep_seeds))}): validation accuracy {after[s.sweep_after]}, mean over "
              f"{', '.join(f'{t:g}x' for t in s.sweep_targets)}"
              + (" and the sweep networks" if len(s.sweep_seeds) > 1 else "") + f"; the choice reads the {column} "
              "score column.", "",
              "| arch | method | setting | val, right after | val, after finetune |" + kd_head,
              "|---|---|---|---|---|" + ("---|" if kd_head else "")]

    def score_cells(score: dict) -> str:
        return f"{pct(score['prune'])} | {pct(score['finetune']) if 'finetune' in score else '—'}" + (
            f" | {pct(score['distill']) if 'distill' in score else '—'}" if kd_head else "")

    for arch, entry in sweep.items():
        for hp, score in entry["prepare"].items():
            mark = " **(chosen)**" if json.loads(hp) == entry["chosen"]["prepared"] else ""
            lines.append(f"| {arch} | prepared | {hp}{mark} | {score_cells(score)} |")
        for reg, score in entry["sl_reg"].items():
            mark = " **(chosen)**" if float(reg) == entry["chosen"]["DepGraph+SL"]["reg"] else ""
            lines.append(f"| {arch} | DepGraph+SL | reg {reg}{mark} | {score_cells(score)} |")
    for arch in s.archs:
        if arch not in sweep:
            lines.append(f"| {arch} | all | the {s.sweep_arch} choices | — | — |" + (" — |" if kd_head else ""))
    lines.append("")
    lines += ["## Test accuracy (%), mean ± std over seeds", ""]
    kd = s.distill_finetune
    for arch in s.archs:
        base_acc = [bench.base_info(arch, sd)["test_acc"] for sd in seeds_of[arch][0]]
        lines += [f"### {arch} (unpruned: {pct(*mean_std(base_acc))})", "",
                  "| target | method | n | FLOPs x | right after prune + recal | after finetune | "
                  + ("after a distillation finetune | " if kd else "") + "pre-stage s | finetune s |",
                  "|---|---|---|---|---|---|" + ("---|" if kd else "") + "---|---|"]
        for target in s.targets:
            for method in METHODS:
                group = [c for c in cells if (c["arch"], c["method"], c["target"]) == (arch, method, target)]
                ok = [c for c in group if "error" not in c]
                if not group:
                    continue
                if not ok:
                    lines.append(f"| {target:g}x | {method} | 0 | — | not reached: {group[0]['error'][:80]} | | | |")
                    continue
                stat = {k: mean_std([c[k] for c in ok]) for k in ("flops_speedup", "recal_test_acc",
                                                                   "finetuned_test_acc", "pre_seconds",
                                                                   "finetune_seconds")}
                distilled = [c["distilled_test_acc"] for c in ok if "distilled_test_acc" in c]
                kd_cell = (f"{pct(*mean_std(distilled)) if distilled else '—'} | ") if kd else ""
                lines.append(f"| {target:g}x | {method} | {len(ok)} | {stat['flops_speedup'][0]:.2f} | "
                             f"{pct(*stat['recal_test_acc'])} | {pct(*stat['finetuned_test_acc'])} | {kd_cell}"
                             f"{stat['pre_seconds'][0]:.0f} | {stat['finetune_seconds'][0]:.0f} |")
        lines.append("")
        for first, second in PAIRS:
            keys = ("recal_test_acc", "finetuned_test_acc") + (("distilled_test_acc",) if kd else ())
            rows = [(t, [paired(cells, arch, t, key, first, second) for key in keys]) for t in s.targets]
            rows = [r for r in rows if r[1][0][2] > 1]
            if not rows:
                continue
            lines += [f"{first} − {second}, paired over seeds ({arch}):", "",
                      "| target | right after prune + recal (pts ± SE) | after finetune (pts ± SE) | "
                      + ("after a distillation finetune (pts ± SE) | " if kd else "") + "n |",
                      "|---|---|---|" + ("---|" if kd else "") + "---|"]
            for target, diffs in rows:
                lines.append(f"| {target:g}x | " + " | ".join(f"{100 * m:+.2f} ± {100 * se:.2f}" for m, se, _ in diffs)
                             + f" | {diffs[0][2]} |")
            lines.append("")
    lines += ["## Cost of one epoch", ""]
    for arch in s.archs:
        per = {}
        for method in METHODS:
            epochs = [e for c in cells if c["arch"] == arch and c["method"] == method for e in c["pre_epoch_seconds"]]
            per[method] = statistics.median(epochs) if epochs else float("nan")
        ratio = per["prepared"] / per["fxmeta-l2"] if per["fxmeta-l2"] else float("nan")
        lines.append(f"- {arch}: median epoch of the pre-stage: prepared {per['prepared']:.2f} s, DepGraph+SL "
                     f"{per['DepGraph+SL']:.2f} s, plain {per['fxmeta-l2']:.2f} s; prepared / plain = {ratio:.2f}x "
                     "(includes the per-epoch validation pass of the training loop)")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"meta": meta, "settings": asdict(s), "choices": choices,
                                                      "sweep": sweep, "cells": cells}, indent=1))
    write_plot(cells, s, out.with_suffix(".png"))


def write_plot(cells: list[dict], s: Settings, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(len(s.archs), 2, figsize=(10, 3.6 * len(s.archs)), squeeze=False)
    for row, arch in enumerate(s.archs):
        for col, (key, title) in enumerate((("recal_test_acc", "right after prune + BN recalibration"),
                                            ("finetuned_test_acc", f"after {s.finetune_epochs} finetune epochs"))):
            ax = axes[row][col]
            for method in METHODS:
                xs, ms, sds = [], [], []
                for t in s.targets:
                    vals = [c[key] for c in cells if (c["arch"], c["method"], c["target"]) == (arch, method, t)
                            and key in c]
                    if vals:
                        m, sd = mean_std(vals)
                        xs.append(t)
                        ms.append(100 * m)
                        sds.append(100 * sd)
                if xs:
                    ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=method)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(s.targets), [f"{t:g}x" for t in s.targets])
            ax.set_title(f"{arch}: {title}", fontsize=10)
            ax.set_xlabel("FLOPs speed-up")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small spot check (written under the cache folder)")
    p.add_argument("--family", choices=("resnet", "seqconv", "seqconv-fashion"), default="resnet",
                   help="resnet: ResNet20 / ResNet56 on digits (default); seqconv: 1-D convolutions over MNIST rows "
                        "(benchmarks.seqconv); seqconv-fashion: the same over Fashion-MNIST rows")
    p.add_argument("--archs", help="comma-separated subset of the families")
    p.add_argument("--seeds", help="comma-separated subset of the seeds (to split a run across processes; the "
                                   "cache joins them, and a run over all seeds then writes the whole table)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"), help="cache folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = {"resnet": (FULL, QUICK), "seqconv": (seqconv.FULL, seqconv.QUICK),
         "seqconv-fashion": (seqconv.FASHION, seqconv.FASHION_QUICK)}[args.family][args.quick]
    if args.archs:
        s = replace(s, archs=tuple(args.archs.split(",")))
    if args.seeds:
        s = replace(s, seeds=tuple(int(v) for v in args.seeds.split(",")))
    cache = Path(args.cache + ("" if args.family == "resnet" else f"-{args.family}")) / ("quick" if args.quick else "full")
    bench = Bench(s, cache)
    t0, load_start = time.time(), "/".join(f"{x:.2f}" for x in os.getloadavg())
    sweep: dict = {}
    chosen_for = choose(bench, s.sweep_arch, sweep)
    cells, seeds_of = [], {}
    for arch in s.archs:
        seeds_of[arch] = bench.usable_seeds(arch)
        for seed in seeds_of[arch][0]:
            for target in s.targets:
                for method in METHODS:
                    if s.runs(arch, method, target):
                        cells.append(bench.cell(arch, seed, method, target, chosen_for[method]))
                        if s.distill_finetune and "error" not in cells[-1]:
                            cells[-1] = {**cells[-1], **bench.distilled(arch, seed, method, target, chosen_for[method])}
    meta = {"command": "python -m benchmarks.prepare" + (" --quick" if args.quick else "")
            + (f" --family {args.family}" if args.family != "resnet" else "")
            + (f" --archs {args.archs}" if args.archs else "") + (f" --seeds {args.seeds}" if args.seeds else "")
            + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "threads": args.threads, "versions": versions(), "load_start": load_start,
            "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()), "minutes": (time.time() - t0) / 60}
    out = (cache / "prepare") if args.quick else RESULTS / ("prepare" if args.family == "resnet" else f"prepare_{args.family}")
    write_report(bench, cells, chosen_for, sweep, meta, out, seeds_of)
    say(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
