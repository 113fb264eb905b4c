"""``fxmeta zoo``: train and prune the data models a metanetwork is meta-trained on."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..errors import SpecError
from .common import DEMO_MODEL, note_line, parse_number, pct


def cmd_zoo(args: argparse.Namespace) -> int:
    from ..io.paths import check_output
    from ..metatrain.zoo import build_zoo
    from ..pipeline.transform import TransformConfig
    from ..pruning.spec import PruneSpec
    from .common import check_numbers

    check_numbers(args)
    TransformConfig(prune=PruneSpec(args.prune_speedup))  # the same check as every other speed-up
    check_output(args.out, kind="dir", what="--out")
    if min(args.epochs, args.finetune_epochs) < 0:
        raise SpecError("--epochs and --finetune-epochs must be >= 0")
    zoo = build_zoo(args.model, args.data, count=args.count, out=args.out, prune_speedup=args.prune_speedup,
                    epochs=args.epochs, finetune_epochs=args.finetune_epochs, seed=args.seed,
                    val_count=args.val_count, lr=args.lr, batch_size=args.batch_size, progress=args.progress,
                    trust=args.trust)
    table = Table(title=f"zoo {args.out}: {zoo.model_spec} on {zoo.data}", title_justify="left")
    for col in ("member", "split", "seed", "val acc", "FLOPs x", "seconds"):
        table.add_column(col, justify="left" if col in ("member", "split") else "right")
    for m in zoo.members:
        acc = m.metrics.get("val_acc", m.metrics.get("trained_val_acc"))
        table.add_row(m.file, m.split, str(m.seed), pct(acc), f"{m.metrics.get('speedup', 1.0):.2f}",
                      f"{m.metrics.get('seconds', 0):.1f}")
    Console(highlight=False, emoji=False).print(table)
    note_line(f"next: fxmeta meta-train {args.out} --out metanet/")
    return 0


def register_zoo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo", help="train the data models a metanetwork learns from",
        description="Train --count networks of one family (seeds --seed, --seed+1, ...), pre-prune each to "
                    "--prune-speedup and finetune it, and save them with a zoo.json manifest in --out. The last "
                    "--val-count members are held out to pick the meta-training checkpoint. Interrupted builds "
                    "resume: re-run the same command and finished members are skipped.",
        epilog="example: fxmeta zoo fxmeta:resnet20 --data digits --count 10 --out zoo/")
    p.add_argument("model", metavar="MODEL", nargs="?", default=DEMO_MODEL,
                   help=f"architecture spec of the family (default: {DEMO_MODEL}); built with the data's "
                        "classes and input channels")
    p.add_argument("--data", default="digits", metavar="SPEC", help="training data spec (default: digits)")
    p.add_argument("--count", type=int, default=10, metavar="N", help="number of data models (default: 10)")
    p.add_argument("--val-count", type=int, default=2, metavar="N", help="of which held out (default: 2)")
    p.add_argument("--out", default="zoo/", metavar="DIR", help="zoo folder (default: zoo/)")
    p.add_argument("--prune-speedup", type=parse_number, default=1.3, metavar="X",
                   help="light pre-pruning of every member, FLOPs ratio (default: 1.3; 1 = none)")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="training epochs per member (default: 20)")
    p.add_argument("--finetune-epochs", type=int, default=10, metavar="N",
                   help="finetuning epochs after the pre-pruning (default: 10)")
    p.add_argument("--lr", type=float, default=0.1, help="training learning rate (default: 0.1; finetuning: a tenth)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="(default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first member (default: 0)")
    p.add_argument("--trust", action="store_true",
                   help="allow resuming a zoo whose zoo.json names code (a factory or data function): a spec read "
                        "from a file may only run code with --trust. A MODEL or --data spec given on the command "
                        "line is yours and runs without it")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-epoch lines")
    p.set_defaults(func=cmd_zoo)
