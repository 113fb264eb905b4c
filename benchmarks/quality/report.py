"""The report: aggregate cells, write quality.md / .json / .png."""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from .settings import LABELS, METHODS, ROOT, TP_STEPS, Context, Settings

# ---------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def amortised_seconds(ctx: Context, arch: str) -> float:
    """Zoo + meta-training time per network pruned with that metanetwork in this run."""
    m = ctx.metanets[arch]
    return (m["zoo_seconds"] + m["meta_seconds"]) / (len(ctx.s.seeds) * len(ctx.s.targets))


def aggregate(cells: list[dict], ctx: Context) -> list[dict]:
    cells = [c if "error" in c else {**c, "method_seconds": c["method_seconds"] + (
        amortised_seconds(ctx, c["arch"]) if c["method"] == "ours" else 0.0)} for c in cells]
    cells = [c if "error" in c else {**c, "wall_seconds": c["method_seconds"] + c["prune_seconds"]
                                     + c["finetune_seconds"]} for c in cells]
    rows = []
    keys = sorted({(c["arch"], c["method"], c["target"]) for c in cells},
                  key=lambda k: (k[0], METHODS.index(k[1]), k[2]))
    for arch, method, target in keys:
        group = [c for c in cells if (c["arch"], c["method"], c["target"]) == (arch, method, target)]
        ok = [c for c in group if "error" not in c]
        row: dict[str, Any] = {"arch": arch, "method": method, "target": target, "n": len(ok),
                               "errors": sorted({c["error"] for c in group if "error" in c})}
        for name in ("pruned_test_acc", "finetuned_test_acc", "pruned_val_acc", "finetuned_val_acc", "flops_speedup",
                     "params_ratio", "latency_speedup", "wall_seconds", "method_seconds", "finetune_seconds"):
            row[name], row[name + "_std"] = _mean_std([c[name] for c in ok])
        if method == "ours":
            row["metanet_test_acc"], _ = _mean_std([c["metanet_test_acc"] for c in ok])
        rows.append(row)
    return rows


def pct(m: float, sd: float | None = None) -> str:
    if m != m:  # nan
        return "-"
    return f"{100 * m:.2f}" + ("" if sd is None else f" ± {100 * sd:.2f}")


def _row(rows: list[dict], arch: str, method: str, target: float) -> dict | None:
    return next((r for r in rows if (r["arch"], r["method"], r["target"]) == (arch, method, target)), None)


def _diff(rows: list[dict], arch: str, a: str, b: str, target: float, key: str) -> tuple[float, float] | None:
    """Mean difference a - b and its standard error (independent seeds), or None."""
    ra, rb = _row(rows, arch, a, target), _row(rows, arch, b, target)
    if not ra or not rb or not ra["n"] or not rb["n"]:
        return None
    se = math.sqrt(ra[key + "_std"] ** 2 / ra["n"] + rb[key + "_std"] ** 2 / rb["n"])
    return ra[key] - rb[key], se


def _verdict(d: tuple[float, float] | None) -> str:
    if d is None:
        return "n/a"
    diff, se = d
    noise = "within noise" if abs(diff) <= 2 * se or abs(diff) < 1e-9 else ("better" if diff > 0 else "worse")
    return f"{100 * diff:+.2f} pts ({noise}; 2 SE = {200 * se:.2f})"


def results_section(rows: list[dict], s: Settings) -> list[str]:
    """Who wins where, generated from the numbers (2 standard errors = noise)."""
    lines = ["## Results", ""]
    for arch in s.archs:
        for key, when in (("finetuned_test_acc", "after finetune"), ("pruned_test_acc", "right after pruning")):
            parts = []
            for t in s.targets:
                cands = [r for m in METHODS if (r := _row(rows, arch, m, t)) and r["n"]]
                if not cands:
                    continue
                best = max(cands, key=lambda r: r[key])
                tied = [r["method"] for r in cands if r is not best
                        and abs(best[key] - r[key]) <= 2 * math.sqrt(best[key + "_std"] ** 2 / best["n"]
                                                                     + r[key + "_std"] ** 2 / r["n"])]
                tie = f" (tied within noise with {', '.join(tied)})" if tied else ""
                parts.append(f"{t:g}x: {best['method']} {pct(best[key], best[key + '_std'])}{tie}")
            lines.append(f"- **{arch}, best {when}** — " + "; ".join(parts) + ".")
        for key, when in (("finetuned_test_acc", "after finetune"), ("pruned_test_acc", "before finetune")):
            for other in ("DepGraph+SL", "fxmeta-l2"):
                parts = [f"{t:g}x {_verdict(_diff(rows, arch, 'ours', other, t, key))}" for t in s.targets]
                lines.append(f"- {arch}, ours − {other} {when}: " + "; ".join(parts) + ".")
    lines += ["", "Differences are means over seeds; 'within noise' means |difference| <= 2 standard errors "
              f"(n = {len(s.seeds)} seeds per method), so with this few seeds only large gaps count.", ""]
    return lines


def _fmt_s(x: float) -> str:
    return "-" if x != x else f"{x:.0f}"


def count_flops_of(ctx: Context, arch: str) -> int:
    from fxmeta.pruning.flops import count_flops

    return count_flops(ctx.bases[(arch, ctx.s.seeds[0])]["model"], ctx.example)


def write_markdown(path: Path, rows: list[dict], ctx: Context, meta: dict) -> None:
    from _env import header

    s = ctx.s
    lines = ["# Pruning quality: fxmeta (with / without metanetwork) vs Torch-Pruning", "",
             header(meta["command"], torch.get_num_threads(), ", ".join(map(str, s.seeds))).rstrip(),
             f"- more versions: torch-pruning {meta['versions']['torch_pruning']}, "
             f"matplotlib {meta['versions']['matplotlib']}, fxmeta {meta['versions']['fxmeta']} "
             f"(commit {meta['versions']['commit']})",
             f"- run wall time: {meta['wall_minutes']:.1f} min, CPU time {meta['cpu_minutes']:.1f} min "
             f"(taken from the cache: "
             f"{', '.join(meta['reused']) or 'nothing'}); load average at start / end: "
             f"{meta['load_start']:.2f} / {meta['load_end']:.2f} (other processes share the 2 cores)",
             "", *results_section(rows, s)]
    lines += ["## Setup", "",
              f"- data: {ctx.splits.description}, bilinear upsampling of the 8x8 digits; one fixed split "
              "(load_data seed 0) for every network; selection on val, test only reported.",
              f"- base networks: fxmeta {', '.join(s.archs)} (in_channels=1), seeds {', '.join(map(str, s.seeds))}, "
              f"{s.base_epochs} epochs SGD cosine, lr {', '.join(f'{a} {s.base_lr(a):g}' for a in s.archs)} (ResNet56 "
              f"diverged at 0.1 for one seed in an earlier run), wd 5e-4, batch {s.batch_size} "
              "(fxmeta.metatrain.zoo recipe, no pre-pruning); every method prunes these same networks.",
              f"- finetune (all methods): fxmeta.training.loop, {s.finetune_epochs} epochs, SGD momentum 0.9, wd 5e-4, cosine, "
              f"batch {s.batch_size}, data order seeded by the base seed, best epoch on val.",
              f"- DepGraph+SL: {s.sl_epochs} sparsity-learning epochs before pruning (SGD lr {s.sl_lr:g}, momentum "
              "0.9, no wd, x0.1 at 60% / 80%, best val epoch), reg grid "
              f"{', '.join(f'{r:g}' for r in s.sl_regs)} (5e-4 is Torch-Pruning's CIFAR setting; digits has "
              "~8 steps per epoch against CIFAR's 390, hence the larger values in the grid); then "
              f"GroupMagnitudeImportance(p=2, normalizer='max'), global, {TP_STEPS} iterative steps, classifier "
              "ignored, stepped until fxmeta's FLOPs counter reaches the target.",
              "- TP-magnitude: MagnitudePruner + GroupMagnitudeImportance(p=2), global, same stepping.",
              f"- ours: zoo of {s.zoo_count} {', '.join(s.archs)} members per family (seeds {s.zoo_seed}.."
              f"{s.zoo_seed + s.zoo_count - 1}, {s.zoo_val} held out for checkpoint selection, same recipe as the "
              f"base networks, {s.zoo_epochs} epochs), meta_train {s.meta_epochs} epochs (one step per training "
              f"member per epoch), width {s.meta_width}, depth {s.meta_depth}, ratio {s.meta_ratio:g} (the "
              f"reference's), alpha 16, reg from the grid {', '.join(f'{r:g}' for r in s.meta_regs)} (10 is the "
              "reference's, set against a cross-entropy summed over CIFAR's 390 batches; meta_train sums over the "
              "data's ~8 batches, and 10 x 8 / 390 = 0.2 keeps the reference's balance), checkpoint and reg chosen "
              f"by meta_train's score on the held-out member (prune to {s.meta_speedup:g}x, "
              f"{s.meta_eval_finetune} finetune epochs); then fxmeta prune (l2) of the metanetwork's output.",
              "- fxmeta prune: global l2 group ranking, one shot, min_keep 0.1, self-check on.",
              f"- FLOPs and params: fxmeta.pruning.flops.count_flops / count_params for every method. Latency: "
              f"fxmeta.pipeline.latency, CPU, batch {s.latency_batch}, {s.latency_threads} thread(s) (fewer disturbances from "
              "the other processes sharing the cores); base and pruned network timed in alternation, 3 rounds of "
              "20 runs each, the 10th percentile of each round, median over rounds; speed-up = base / pruned.",
              f"- threads: torch.set_num_threads({torch.get_num_threads()}), OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY')} (spinning OpenMP threads made epochs ~10x slower while other "
              "processes used the cores).",
              "- wall time per network: prune + finetune, plus for DepGraph+SL its sparsity learning (shared across "
              "targets here, counted in full for each), plus for ours the metanetwork forward and the zoo + "
              "meta-training cost divided by the networks pruned with that metanetwork "
              f"({len(s.seeds)} seeds x {len(s.targets)} targets). Evaluation and latency timing are not counted.",
              ""]
    lines += ["## Chosen hyper-parameters (validation split only)", "",
              "| arch | what | grid: val score | chosen | how |", "|---|---|---|---|---|"]
    for arch in s.archs:
        for name in ("finetune_lr", "sl_reg", "meta_reg"):
            c = ctx.chosen.get(arch, {}).get(name)
            if c:
                grid = ", ".join(f"{k:g}: {100 * v:.2f}" for k, v in c["val_scores"].items())
                lines.append(f"| {arch} | {name} | {grid} | {c['chosen']:g} | {c['how']} |")
        m = ctx.metanets.get(arch)
        if m:
            per_epoch = ", ".join(f"{100 * h.get('score', float('nan')):.1f}" for h in m["history"])
            lines.append(f"| {arch} | metanet checkpoint | epochs 1..{s.meta_epochs}: held-out score per epoch "
                         f"{per_epoch} | "
                         f"epoch {m['best_epoch']} | meta_train (reg {m['reg']:g}), held-out zoo member, val acc "
                         f"after prune to {s.meta_speedup:g}x + {s.meta_eval_finetune} finetune epochs |")
    lines.append("")
    lines += ["## One-off costs", "",
              "| arch | zoo build s | meta-training (chosen reg) s | zoo + meta-training per network pruned s | "
              "metanet reg grid, all runs s | SL reg grid, all runs s |", "|---|---|---|---|---|---|"]
    for arch in s.archs:
        m = ctx.metanets.get(arch)
        sl = ctx.chosen.get(arch, {}).get("sl_reg", {})
        if m:
            lines.append(f"| {arch} | {m['zoo_seconds']:.0f} | {m['meta_seconds']:.0f} | "
                         f"{amortised_seconds(ctx, arch):.0f} | {m['grid_seconds']:.0f} | "
                         f"{_fmt_s(sl.get('grid_seconds', float('nan')))} |")
    lines += ["", "The per-network wall times in the tables below include neither grid search; the "
              "zoo + meta-training share is in ours' method-specific time.", ""]
    lines.append("")
    for arch in s.archs:
        bases = [ctx.bases[(arch, sd)] for sd in s.seeds if (arch, sd) in ctx.bases]
        bm, bsd = _mean_std([b["test_acc"] for b in bases])
        lat = _mean_std([ctx.latencies[(arch, sd)] for sd in s.seeds if (arch, sd) in ctx.latencies])[0]
        lines += [f"## {arch} (base: test acc {pct(bm, bsd)} %, "
                  f"{count_flops_of(ctx, arch) / 1e6:.1f} MFLOPs, latency {lat:.2f} ms; mean ± std over seeds)", "",
                  "| method | target | FLOPs x | params kept | latency x | acc after pruning % | "
                  "acc after finetune % | wall s / network | of which method-specific s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in s.targets:
            for method in METHODS:
                r = _row(rows, arch, method, t)
                if r is None:
                    continue
                if not r["n"]:
                    lines.append(f"| {LABELS[method]} | {t:g}x | not reached: {'; '.join(r['errors'])} |||||||")
                    continue
                note = f" ({len(r['errors'])} seeds failed)" if r["errors"] else ""
                lines.append(
                    f"| {LABELS[method]}{note} | {t:g}x | {r['flops_speedup']:.2f} | {r['params_ratio']:.3f} | "
                    f"{r['latency_speedup']:.2f} | {pct(r['pruned_test_acc'], r['pruned_test_acc_std'])} | "
                    f"{pct(r['finetuned_test_acc'], r['finetuned_test_acc_std'])} | {_fmt_s(r['wall_seconds'])} | "
                    f"{_fmt_s(r['method_seconds'])} |")
        ours = [r for r in rows if r["arch"] == arch and r["method"] == "ours" and r["n"]]
        if ours:
            lines += ["", f"Accuracy of the metanetwork's output before pruning: "
                          f"{pct(ours[0]['metanet_test_acc'])} % (base {pct(bm)} %)."]
        lines.append("")
    lines += ["Raw per-network results: quality.json (cells); full log: quality_log.txt.", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, rows: list[dict], s: Settings, base_acc: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(s.archs), 2, figsize=(11, 4.2 * len(s.archs)), squeeze=False)
    for i, arch in enumerate(s.archs):
        for j, (key, title) in enumerate((("finetuned_test_acc", "after finetune"),
                                          ("pruned_test_acc", "right after pruning (before finetune)"))):
            ax = axes[i][j]
            for method in METHODS:
                pts = [r for t in s.targets if (r := _row(rows, arch, method, t)) and r["n"]]
                if not pts:
                    continue
                ax.errorbar([r["flops_speedup"] for r in pts], [100 * r[key] for r in pts],
                            yerr=[100 * r[key + "_std"] for r in pts], marker="o", capsize=3, label=LABELS[method])
            ax.axhline(100 * base_acc[arch], color="gray", ls="--", lw=1, label="unpruned base")
            ax.axhline(10, color="gray", ls=":", lw=1, label="chance (10 classes)")
            if key == "pruned_test_acc":
                ax.set_ylim(0, 100)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(s.targets), [f"{t:g}x" for t in s.targets])
            ax.set_xlabel("FLOPs speed-up (fxmeta counter)")
            ax.set_ylabel("test accuracy %")
            ax.set_title(f"{arch}: {title}")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"digits 16x16, mean ± std over seeds {', '.join(map(str, s.seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_minutes() -> float:
    """CPU time of this process so far (user + system, all threads): what the run cost, whatever the load."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) / 60


def _versions() -> dict:
    import subprocess

    import matplotlib
    import torch_pruning

    import fxmeta

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return {"torch": torch.__version__, "torch_pruning": getattr(torch_pruning, "__version__", "?"),
            "matplotlib": matplotlib.__version__, "fxmeta": getattr(fxmeta, "__version__", "?"), "commit": commit}


