"""``fxmeta dump``: lower a model to the IR and print or save it."""
from __future__ import annotations

import argparse

from .common import add_model_args, err, load_model_and_input, write_output


def cmd_dump(args: argparse.Namespace) -> int:
    from ..io.saving import check_output_path
    from ..ir.dump import dump
    from ..ir.lowering import lower

    if args.out is not None:
        check_output_path(args.out, [args.model], args.force)  # before loading and lowering
    loaded, x = load_model_and_input(args)
    graph = lower(loaded.module, x)
    graph.check()
    for name, why in graph.frozen.items():
        err.print(f"[yellow]note[/]: {name}: {why}")
    if not graph.layers:
        hint = (" with --capture fx a torch.export program is an ATen-level graph, which the lowering rules do not "
                "cover: drop --capture fx" if str(args.model).endswith(".pt2") and args.capture == "fx"
                else " it holds no layer the lowering knows (convolutions, linear layers, norms)")
        err.print(f"[yellow]note[/]: the IR of {args.model} is empty;{hint}", soft_wrap=True)
    write_output(dump(graph, args.format, args.detail), args.out, args.force, [args.model])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dump", help="lower a model to the weight-graph IR and print or save it",
                       description="Lower MODEL to the weight-graph IR and dump it (text: one line per layer).")
    add_model_args(p)
    p.add_argument("--format", choices=["text", "json", "graphml", "dot"], default="text",
                   help="dump format (default: text)")
    p.add_argument("--detail", choices=["layer", "channel"], default="layer",
                   help="json/graphml/dot granularity: one node per layer (default) or per channel")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_dump)
