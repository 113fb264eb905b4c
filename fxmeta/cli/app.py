"""The ``fxmeta`` command line.

Every subcommand is a small function over the library; errors the user can fix are
printed as one line (``--debug`` shows the traceback) with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import torch
from rich.console import Console

from ..errors import FxmetaError

SPEC_HELP = (
    "model spec: torchvision:NAME, fxmeta:NAME, module.path:factory, path/to/file.py:factory, "
    "SPEC@weights.pt, an fxmeta model file (.pt), or a torch.export program (.pt2, needs --trust)"
)

err = Console(stderr=True, highlight=False)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=SPEC_HELP)
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="example input shape (default: the model family's usual shape)")
    p.add_argument("--num-classes", type=int, help="build the architecture with this many outputs")
    p.add_argument("--in-channels", type=int, help="build fxmeta models with this many input channels")
    p.add_argument("--trust", action="store_true",
                   help="allow loading files that run code when read (pickled modules, .pt2, factory specs in files)")


def load_model_and_input(args: argparse.Namespace):
    """Resolve ``args.model`` and build a reproducible example input for it."""
    from ..io.files import parse_input_shape, resolve_model
    from ..tracing import example_from_shape

    # Architectures built from a spec get reproducible random weights (dumps diff cleanly).
    torch.manual_seed(0)
    loaded = resolve_model(args.model, trust=args.trust, num_classes=args.num_classes,
                           in_channels=args.in_channels)
    if args.input_shape:
        shape = parse_input_shape(args.input_shape)
    elif loaded.default_input_shape:
        shape = tuple(loaded.default_input_shape)
    else:
        raise FxmetaError(f"no default input shape is known for {args.model}: pass --input-shape N,C,H,W")
    return loaded, example_from_shape(shape)


def write_output(text: str, out: str | None, force: bool, inputs: Sequence[str]) -> None:
    """Print ``text``, or write it atomically to ``out``."""
    if out is None:
        sys.stdout.write(text)
        return
    from ..io.files import atomic_write_text, check_output_path

    check_output_path(out, list(inputs), force)
    atomic_write_text(text, out, force=force)
    err.print(f"wrote {out}")


# -- subcommands -------------------------------------------------------------------------
def cmd_dump(args: argparse.Namespace) -> int:
    from ..ir.dump import dump
    from ..ir.lowering import lower

    loaded, x = load_model_and_input(args)
    graph = lower(loaded.module, x)
    graph.check()
    for name, why in graph.frozen.items():
        err.print(f"[yellow]note[/]: {name}: {why}")
    write_output(dump(graph, args.format, args.detail), args.out, args.force, [args.model])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxmeta",
        description="Prune PyTorch models with a graph metanetwork: trace with torch.fx, lower to a "
                    "weight-graph IR, rewrite it, raise it back, remove channels, finetune.",
        epilog="Run 'fxmeta COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("dump", help="lower a model to the weight-graph IR and print or save it",
                       description="Lower MODEL to the weight-graph IR and dump it (text: one line per layer).")
    _add_model_args(p)
    p.add_argument("--format", choices=["text", "json", "graphml", "dot"], default="text",
                   help="dump format (default: text)")
    p.add_argument("--detail", choices=["layer", "channel"], default="layer",
                   help="json/graphml/dot granularity: one node per layer (default) or per channel")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_dump)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Further subcommands register themselves here (each lives in its own module).
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _load_extra_commands() -> None:
    from . import commands

    _EXTRA_COMMANDS[:] = commands.REGISTER  # idempotent: main() may be called more than once


def main(argv: Sequence[str] | None = None) -> int:
    _load_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FxmetaError as exc:
        if args.debug:
            raise
        err.print(f"[bold red]error[/]: {exc}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: nothing was written")
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        err.print(f"[bold red]internal error[/]: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)",
                  soft_wrap=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
