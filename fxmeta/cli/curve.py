"""``fxmeta curve``: accuracy right after pruning at several FLOPs targets (the prunability curve)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import SpecError
from .common import (
    ALLOCATIONS,
    COMPENSATIONS,
    DATA_IMPORTANCE,
    WEIGHT_IMPORTANCE,
    add_model_args,
    is_main_process,
    load_model,
    load_run_data,
    note_line,
    parse_number,
    pct,
    prune_spec,
    speedup_list,
)


def cmd_curve(args: argparse.Namespace) -> int:
    import torch

    from ..io.paths import check_outputs
    from ..pipeline.transform import check_model_fits
    from ..training.curve import plot, prunability_curve, write_json
    from ..training.data import calibration_set, make_loaders

    speedups = list(speedup_list(args.speedups, "--speedups"))
    if not speedups:
        raise SpecError("--speedups needs at least one target")
    if args.bn_batches < 0 or args.batch_size < 1:
        raise SpecError("--bn-batches must be >= 0 and --batch-size >= 1")
    inputs = [args.model] + [p for p in (args.metanet, getattr(args, "example_input", None)) if p]
    check_outputs([("--out", args.out), ("--plot", args.plot)], inputs=inputs, force=args.force)
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise SpecError("--plot needs matplotlib: pip install matplotlib")
    metanet = None
    if args.metanet:
        from ..metanet.files import load_metanet_file

        metanet = load_metanet_file(args.metanet)
    torch.set_num_threads(args.threads)
    data = load_run_data(args)
    loaded, x = load_model(args, data)
    check_model_fits(loaded.module, x, data, name=args.model)
    loaders = make_loaders(data, args.batch_size, seed=args.seed)
    split = loaders.val if args.split == "val" else loaders.test
    calibration = calibration_set(data.train, args.bn_batches, args.batch_size, args.seed)
    def progress(text: str) -> None:
        note_line(f"[dim]> {text}[/]")

    # with a metanetwork both curves prune by the weight importance it rewrites for
    spec = prune_spec(args).resolved(with_data=True, prepare=metanet is not None)
    if metanet is not None and spec.importance in DATA_IMPORTANCE:
        raise SpecError(f"a metanetwork rewrites for a prune by weight importance, not {spec.importance!r}: "
                        "drop --importance or --metanet")
    curves = [prunability_curve(loaded.module.eval(), x, split, speedups, calibration=calibration, label="model",
                                split=args.split, spec=spec, progress=progress)]
    if metanet is not None:
        curves.append(_metanet_curve(metanet, loaded.module, x, data, split, speedups, calibration, args, progress))
    if args.out:
        write_json(curves, args.out, force=args.force)
    if args.plot:
        plot(curves, args.plot, force=args.force)
    if is_main_process() and curves[0].language_model:
        table = Table(title=f"{args.model}: {args.split} perplexity right after pruning", title_justify="left")
        table.add_column("target")
        for c in curves:
            table.add_column(f"{c.label}: FLOPs x", justify="right")
            table.add_column("perplexity", justify="right")
        table.add_row("unpruned", *[v for c in curves for v in ("1.00", f"{c.unpruned_perplexity:.3f}")])
        for i, target in enumerate(speedups):
            table.add_row(f"{target:g}x", *[v for c in curves for v in (
                ("-", "unreachable") if c.points[i].error else
                (f"{c.points[i].flops_speedup:.2f}", f"{c.points[i].perplexity:.3f}"))])
        Console(highlight=False, emoji=False).print(table)
    elif is_main_process():
        table = Table(title=f"{args.model}: {args.split} accuracy right after pruning "
                            f"(BatchNorm recalibrated on {args.bn_batches} training batches)", title_justify="left")
        table.add_column("target")
        for c in curves:
            table.add_column(f"{c.label}: FLOPs x", justify="right")
            table.add_column("as pruned", justify="right")
            table.add_column("recalibrated", justify="right")
        table.add_row("unpruned", *[v for c in curves for v in ("1.00", pct(c.unpruned), "")])
        for i, target in enumerate(speedups):
            row = [f"{target:g}x"]
            for c in curves:
                p = c.points[i]
                row += (["-", "unreachable", ""] if p.error else
                        [f"{p.flops_speedup:.2f}", pct(p.accuracy), pct(p.recalibrated_accuracy)])
            table.add_row(*row)
        Console(highlight=False, emoji=False).print(table)
    written = [p for p in (args.out, args.plot) if p]
    if written:
        note_line(f"wrote {', '.join(written)}")
    return 0


def _metanet_curve(metanet: Any, model: Any, x: Any, data: Any, split: Any, speedups: list[float],
                   calibration: list, args: argparse.Namespace, progress: Any) -> Any:
    """The curve of the metanetwork's output. A conditioned metanetwork rewrites once per target (it is
    told each prune); its unpruned accuracy is that of the first target's rewrite."""
    from ..metanet.rewriting import apply, apply_for_prune
    from ..training.curve import prunability_curve
    from ..training.data import calibration_set

    label = "model + metanetwork"
    spec = prune_spec(args).resolved(with_data=True, prepare=True)
    if not metanet.conditioned:
        return prunability_curve(apply(metanet, model, x).eval(), x, split, speedups, calibration=calibration,
                                 label=label, split=args.split, spec=spec, progress=progress)
    batches = calibration_set(data.train, metanet.config.condition_batches, args.batch_size, args.seed)
    merged = None
    for target in speedups:
        spec = spec.with_(speedup=target)
        module, importance = apply_for_prune(metanet, model, x, spec, batches)
        curve = prunability_curve(module.eval(), x, split, [target], calibration=calibration, label=label,
                                  split=args.split, spec=spec.with_(importance=importance), progress=progress)
        if merged is None:
            merged = curve
        else:
            merged.points += curve.points
    return merged


def register_curve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "curve", help="accuracy right after pruning at several FLOPs targets (how easy a network is to prune)",
        description="Prune MODEL to each of --speedups (fxmeta importance, self-checked) and measure accuracy on "
                    "--split right after removal, as pruned and after recomputing BatchNorm statistics on a fixed "
                    "set of training batches (the same at every target). No finetuning. With --metanet, the "
                    "metanetwork's output is measured beside the model itself.",
        epilog="example: fxmeta curve fxmeta:resnet20@base.pt --in-channels 1 --data digits --plot curve.png")
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="data spec (digits, mnist5k, fashion-mnist, cifar10:PATH, text:PATH, ...); for text "
                        "(a language model) the curve is in perplexity")
    p.add_argument("--image-size", type=int, metavar="N", help="resize the data's images to NxN")
    p.add_argument("--block-size", type=int, metavar="T", help="text data: tokens per sequence (default: 128)")
    p.add_argument("--metanet", metavar="FILE", help="also measure the network this metanetwork generates")
    p.add_argument("--speedups", default="1.5,2,3,4,6,8", metavar="X,Y,...",
                   help="FLOPs targets (default: 1.5,2,3,4,6,8)")
    p.add_argument("--importance", choices=list(WEIGHT_IMPORTANCE + DATA_IMPORTANCE),
                   help="channel scores (see fxmeta prune --help); default: the calibrated default, as --data is given")
    p.add_argument("--compensate", choices=list(COMPENSATIONS),
                   help="weight compensation on the calibration batches (see fxmeta prune --help); default: the "
                        "calibrated default")
    p.add_argument("--ridge", type=parse_number, default=1e-3, metavar="R", help="lstsq regulariser (default: 1e-3)")
    p.add_argument("--allocation", choices=list(ALLOCATIONS),
                   help="how each prune spreads its removal over the channel groups, as fxmeta prune "
                        "--allocation (default: the calibrated default; global with --metanet)")
    p.add_argument("--bn-batches", type=int, default=20, metavar="N",
                   help="training batches that recompute BatchNorm statistics after removal; 0: off (default: 20)")
    p.add_argument("--split", choices=["val", "test"], default="test",
                   help="split to score on; use val when choosing anything by the curve (default: test)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="(default: 128)")
    p.add_argument("--seed", type=int, default=0, help="data split and calibration batches (default: 0)")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)), metavar="N",
                   help="torch threads (default: up to 4)")
    p.add_argument("--out", metavar="FILE.json", help="write the curves as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot the curves (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="overwrite --out / --plot if they exist")
    p.set_defaults(func=cmd_curve)
