"""The ``fxmeta`` command line.

Every subcommand is a small function over the library; errors the user can fix are
printed as one line (``--debug`` shows the traceback) with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.markup import escape

from ..errors import FxmetaError
from . import curve, demo, dump, meta_train, transform, zoo
from .common import err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxmeta",
        description="Prune PyTorch models with a graph metanetwork: trace with torch.fx, lower to a "
                    "weight-graph IR, rewrite it, raise it back, remove channels, finetune.",
        epilog="Run 'fxmeta COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dump.register(sub)
    transform.register_transform(sub)
    transform.register_prune(sub)
    demo.register_demo(sub)
    curve.register_curve(sub)
    zoo.register_zoo(sub)
    meta_train.register_meta_train(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FxmetaError as exc:
        if args.debug:
            raise
        # escaped: messages such as "pip install 'fxmeta[hf]'" are text, not rich markup
        err.print(f"[bold red]error[/]: {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print(f"[bold red]interrupted[/]: {_interrupt_note(args)}", soft_wrap=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            raise
        err.print(f"[bold red]internal error[/]: {type(exc).__name__}: {escape(str(exc))} (re-run with --debug for the traceback)",
                  soft_wrap=True)
        return 1


def _interrupt_note(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind: checkpoints to --resume from, or nothing."""
    import os

    out = getattr(args, "out", None)
    if args.command in ("transform", "demo") and out:
        folder = getattr(args, "checkpoint_dir", None) or f"{out}.ckpt"
        kept = [os.path.join(folder, s, "last.pt") for s in ("adapt", "prepare", "finetune")]
        if any(os.path.isfile(k) for k in kept):
            return (f"the outputs were not written; the checkpoints in {folder} are kept: re-run the same "
                    "command with --resume to continue")
    if args.command == "meta-train" and out and os.path.isfile(os.path.join(out, "last.pt")):
        return f"{os.path.join(out, 'last.pt')} is kept: re-run the same command with --resume to continue"
    if args.command == "zoo" and out and os.path.isfile(os.path.join(out, "zoo.json")):
        return f"the finished members in {out} are kept: re-run the same command to build the rest"
    return "nothing was written"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
