"""Does the metanetwork make held-out digits ResNets easier to prune? Metanet + prune vs prune alone.

The networks, the metanetwork and the finetune lr are those of ``benchmarks/quality/``
(same settings, same cache, so after a quality run nothing is retrained): three fxmeta
ResNet20 base networks (seeds 0, 1, 2) trained on digits upsampled to 16x16, which no
meta-training ever saw; a metanetwork meta-trained on a zoo of other seeds; the
finetune lr chosen on the validation split. For each network and FLOPs target:

- ``prune alone``: fxmeta prune (l2 group importance) of the base network;
- ``metanet + prune``: lower -> metanetwork -> raise, then the same prune;
- ``committed metanet + prune``: the same with ``fxmeta/assets/metanet_digits.pt``
  when that is an unconditioned metanetwork (the committed results were measured with the
  earlier, unconditioned asset; the conditioned one is measured by ``benchmarks.prunability``).

Test accuracy is measured right after pruning, after recomputing the BatchNorm statistics
(``--bn-batches`` training batches) and after an equal short finetune from there
(``--finetune-epochs``, default 2, cosine schedule, best validation epoch kept). The
"removed weight share" is the fraction of the squared parameter norm that pruning took
away: a network that is easy to prune keeps its weight in the channels that stay.
The notes in ``metanet_digits_notes.md`` (other meta-training settings tried, by hand
with ``fxmeta meta-train``) are appended to the results as they are.

    python -m benchmarks.quality --archs resnet20   # builds the cache (or the full run)
    python -m benchmarks.metanet_digits              # ~1 min after that
    python -m benchmarks.metanet_digits --pre-finetune-epochs 2 --out benchmarks/results/metanet_digits_order
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from . import quality
from ._env import header

HERE = Path(__file__).resolve().parent

ARCH = "resnet20"
ASSET = HERE.parent / "fxmeta" / "assets" / "metanet_digits.pt"
NOTES = HERE / "metanet_digits_notes.md"  # what else was tried, appended to the results as written


def _finetune(module: torch.nn.Module, ctx, lr: float, epochs: int, seed: int):
    from fxmeta.training.loop import TrainConfig, train

    for p in module.parameters():
        p.requires_grad_(True)
    return train(module, ctx.splits, TrainConfig(epochs=epochs, lr=lr, batch_size=ctx.s.batch_size, seed=seed,
                                                 device="cpu", progress=False))


def measure(start: torch.nn.Module, ctx, target: float, seed: int, lr: float, epochs: int,
            calibration: list) -> dict:
    """Prune ``start`` to ``target``; accuracy after pruning, after recomputing the BatchNorm
    statistics on the ``calibration`` batches, and after a short finetune from there."""
    from fxmeta.pruning.pruner import prune
    from fxmeta.training.loop import evaluate, recalibrate_bn

    result = prune(start, ctx.example, speedup=target, importance="l2", seed=seed)
    module = result.module
    row = {"flops_speedup": result.speedup, "pruned_test_acc": evaluate(module, ctx.loaders.test)["acc"],
           "removed_weight_share": 1.0 - _sq_norm(module) / _sq_norm(start)}
    recalibrate_bn(module, calibration, batches=len(calibration))
    row["recalibrated_test_acc"] = evaluate(module, ctx.loaders.test)["acc"]
    tuned = _finetune(module, ctx, lr, epochs, seed)
    row.update(finetuned_test_acc=tuned.test["acc"], finetuned_val_acc=tuned.best_val_acc)
    return row


def _sq_norm(module: torch.nn.Module) -> float:
    """Sum of squared parameters: what pruning removes of it says how much the removed channels carried."""
    return sum(float(p.detach().pow(2).sum()) for p in module.parameters())


def _ms(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    sd = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="2,3", help="comma-separated FLOPs targets")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--bn-batches", type=int, default=20,
                        help="training batches that recompute the BatchNorm statistics after pruning")
    parser.add_argument("--pre-finetune-epochs", type=int, default=0, metavar="K",
                        help="the reference's order: finetune each metanetwork's output K epochs before pruning; "
                             "prune alone gets K more epochs after pruning instead (equal total budget)")
    parser.add_argument("--out", default=str(HERE / "results" / "metanet_digits"),
                        help="results path without suffix (.md and .json are written)")
    parser.add_argument("--metanet", action="append", default=[], metavar="LABEL=PATH",
                        help="also evaluate this metanetwork file (repeatable), e.g. a longer meta-training run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/quality"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = [float(t) for t in args.targets.split(",")]
    started = time.perf_counter()

    from fxmeta.metanet import load_metanet
    from fxmeta.training.data import make_loaders
    from fxmeta.training.loop import evaluate

    s = dataclasses.replace(quality.FULL, archs=(ARCH,))
    splits = quality.digits16(0)
    ctx = quality.Context(s, Path(args.cache), splits, make_loaders(splits, s.batch_size, seed=0),
                          torch.zeros(1, *splits.input_shape))
    quality.build_bases(ctx, ARCH)
    quality.build_metanet(ctx, ARCH)
    lr = quality.choose_finetune_lr(ctx, ARCH)
    metanets = {"metanet + prune": ctx.metanets[ARCH]["metanet"]}
    committed = load_metanet(str(ASSET))
    if not committed.conditioned:  # a conditioned one needs its prune: benchmarks.prunability measures it
        metanets["committed metanet + prune"] = committed
    for spec in args.metanet:
        label, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"--metanet {spec!r}: expected LABEL=PATH")
        metanets[f"{label} + prune"] = load_metanet(path)

    # the same calibration batches for every network and method
    calibration = list(itertools.islice(iter(ctx.loaders.train), args.bn_batches))
    rows: list[dict] = []
    for seed in s.seeds:
        base = ctx.bases[(ARCH, seed)]["model"]
        starts = {"prune alone": base}
        starts.update({name: quality.generate(base, net, ctx.example) for name, net in metanets.items()})
        if args.pre_finetune_epochs:
            starts.update({name: _finetune(starts[name], ctx, lr, args.pre_finetune_epochs, seed).model.eval()
                           for name in metanets})
        unpruned = {method: evaluate(start, ctx.loaders.test)["acc"] for method, start in starts.items()}
        for target in targets:
            for method, start in starts.items():
                row = {"seed": seed, "target": target, "method": method, "unpruned_test_acc": unpruned[method],
                       **measure(start, ctx, target, seed, lr, args.finetune_epochs + (args.pre_finetune_epochs
                                                                         if method == "prune alone" else 0),
                                 calibration)}
                rows.append(row)
                print(f"seed {seed} {target:g}x {method:>26}: unpruned {row['unpruned_test_acc']:.4f}, pruned "
                      f"{row['pruned_test_acc']:.4f} -> BN {row['recalibrated_test_acc']:.4f} -> finetuned "
                      f"{row['finetuned_test_acc']:.4f}", flush=True)

    meta = ctx.metanets[ARCH]
    command = "python -m benchmarks.metanet_digits" + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    lines = [
        "# Metanetwork on held-out digits ResNet20s: metanet + prune vs prune alone",
        "",
        header(command, torch.get_num_threads(),
                       f"base networks {list(s.seeds)} (held out of meta-training), prune and finetune seed = "
                       "base seed").rstrip(),
        "- data: scikit-learn digits upsampled to 16x16, train/val/test split seed 0 (as benchmarks/quality/)",
        f"- metanetwork: quality.py's, meta-trained on a zoo of {s.zoo_count} members (seeds {s.zoo_seed}.."
        f"{s.zoo_seed + s.zoo_count - 1}, {s.zoo_val} held out for checkpoint choice), {s.meta_epochs} epochs, "
        f"width {s.meta_width}, depth {s.meta_depth}, ratio {s.meta_ratio:g}, reg {meta['reg']:g} chosen from "
        f"{list(s.meta_regs)} on the held-out member, best epoch {meta['best_epoch']}",
        "- committed metanetwork: fxmeta/assets/metanet_digits.pt (see fxmeta/assets/README.md)",
        *[f"- {spec.partition('=')[0]}: {spec.partition('=')[2]}" for spec in args.metanet],
        f"- after pruning: BatchNorm statistics recomputed on {args.bn_batches} training batches "
        "(fxmeta.training.loop.recalibrate_bn), then the finetune starts from there",
        f"- finetune: {args.finetune_epochs} epochs, SGD lr {lr:g} (chosen on val by quality.py), cosine, "
        "best val epoch; the same for every method" + (
            f"; metanet rows: {args.pre_finetune_epochs} epochs before pruning as well (the reference's order: "
            f"metanet -> finetune -> prune -> finetune), prune alone: {args.finetune_epochs + args.pre_finetune_epochs}"
            " epochs after pruning, so every row has the same total" if args.pre_finetune_epochs else ""),
        f"- accuracies: test split, mean ± std over {len(s.seeds)} networks, in %",
        f"- wall time {(time.perf_counter() - started) / 60:.1f} min",
        "",
        "| FLOPs target | method | acc before pruning | acc after pruning | + BN recalibration | acc after finetune "
        "| removed weight share | FLOPs speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        for method in ["prune alone", *metanets]:
            sel = [r for r in rows if r["target"] == target and r["method"] == method]
            lines.append(f"| {target:g}x | {method} | {_ms([r['unpruned_test_acc'] for r in sel])} | "
                         f"{_ms([r['pruned_test_acc'] for r in sel])} | {_ms([r['recalibrated_test_acc'] for r in sel])} | "
                         f"{_ms([r['finetuned_test_acc'] for r in sel])} "
                         f"| {_ms([r['removed_weight_share'] for r in sel])} | {statistics.fmean(r['flops_speedup'] for r in sel):.2f}x |")
    lines.append("")
    if NOTES.is_file():
        lines += [NOTES.read_text().rstrip(), ""]
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "finetune_lr": lr, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
