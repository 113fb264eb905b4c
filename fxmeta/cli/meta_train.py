"""``fxmeta meta-train``: train a metanetwork on a zoo of data models."""
from __future__ import annotations

import argparse

from .common import ALLOCATIONS, note_line, parse_number, pct, speedup_list


def config_from_args(args: argparse.Namespace):
    """The library's preset of --objective (``fxmeta.metatrain.loop.preset``) with the flags a user gave over it."""
    from ..metatrain.loop import preset

    given = {"ratio": args.ratio, "reg": args.reg, "eval_finetune_epochs": args.eval_finetune_epochs,
             "ce_weight": args.ce_weight, "steps": args.steps,
             "mask_speedups": speedup_list(args.mask_speedups, "--mask-speedups") if args.mask_speedups else None,
             **(_step_lr(args.step_lr) if args.step_lr is not None else {})}
    return preset(args.objective, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                    width=args.width, depth=args.depth, learn=args.learn, alpha=args.alpha,
                    batches_per_step=args.batches_per_step, batch_size=args.batch_size, speedup=args.speedup,
                    allocation=args.allocation, eval_bn_batches=args.eval_bn_batches, mask_weight=args.mask_weight,
                    grad_batches=args.grad_batches, seed=args.seed, init=args.init, resume=args.resume,
                    force=args.force, progress=args.progress, **{k: v for k, v in given.items() if v is not None},
                    **({"zero_init": True} if args.zero_init else {}))


def cmd_meta_train(args: argparse.Namespace) -> int:
    from ..io.paths import check_output
    from ..metatrain.loop import meta_train
    from .common import check_numbers

    check_numbers(args)
    config = config_from_args(args)
    from ..metatrain.zoo import load_zoo

    check_output(args.out, inputs=[args.zoo] + ([args.init] if args.init else []), kind="dir", what="--out")
    if args.init:
        from ..metanet.files import load_metanet_file

        load_metanet_file(args.init)  # a missing or broken file fails now, not after loading the zoo
    load_zoo(args.zoo, trust=args.trust)  # a missing, damaged or untrusted zoo fails now
    result = meta_train(args.zoo, args.out, config=config, trust=args.trust)
    note_line(f"best epoch {result.best_epoch} (validation accuracy after a {args.speedup:g}x prune: "
          f"{pct(result.best_score if result.best_score >= 0 else None)}): {result.best_path}")
    note_line(f"next: fxmeta transform MODEL --metanet {result.best_path} --data SPEC --out pruned.pt")
    return 0


def _step_lr(value) -> dict:
    """--step-lr: a number, or auto (the start lr chosen on the held-out members among the preset's)."""
    from ..metatrain.loop import PRESETS

    if value == "auto":
        lrs = PRESETS["conditioned"]["step_lrs"]
        return {"step_lr": lrs[0], "step_lrs": lrs}
    return {"step_lr": float(value), "step_lrs": ()}


def _step_lr_flag(text: str):
    return "auto" if text == "auto" else parse_number(text)


def register_meta_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meta-train", help="train a metanetwork on a zoo of data models",
        description="Meta-train a graph metanetwork on the data models of ZOO (from fxmeta zoo): each step rewrites "
                    "one data model and trains on --objective (by default the prunability objective of a metanet "
                    "told the prune, see --objective); after every "
                    "epoch the held-out members are pruned to --speedup and the best epoch is kept as "
                    "OUT/best.pt (OUT/last.pt resumes, OUT/log.jsonl logs).",
        epilog="example: fxmeta meta-train zoo/ --out metanet/ --epochs 20")
    p.add_argument("zoo", metavar="ZOO", help="zoo folder written by fxmeta zoo")
    p.add_argument("--out", default="metanet/", metavar="DIR", help="checkpoint folder (default: metanet/)")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="(default: 20)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=5e-4, metavar="W", help="(default: 5e-4)")
    p.add_argument("--width", type=int, default=32, metavar="D", help="hidden width of the metanetwork (default: 32)")
    p.add_argument("--depth", type=int, default=6, metavar="L", help="message-passing layers (default: 6)")
    p.add_argument("--ratio", type=float,
                   help="output = input + ratio * decoder(h); small keeps an untrained metanet near the identity "
                        "(default: 1 with --objective conditioned, 0.01 otherwise)")
    p.add_argument("--zero-init", action="store_true",
                   help="start the decoders' last layers at zero: the metanet begins as the identity, so a large "
                        "--ratio (e.g. 1) is safe (always on with --objective conditioned)")
    p.add_argument("--learn", choices=["all", "nodes", "step"], default="all",
                   help="what the metanet may change: all tables, only node tables (norm scales and shifts, "
                        "biases), or only the step sizes of its gradient-step head (--step-lr) (default: all)")
    p.add_argument("--reg", type=float,
                   help="group-sparsity strength (default: 0 with --objective conditioned, 10 otherwise)")
    p.add_argument("--alpha", type=float, default=16.0, help="group-sparsity weighting base (default: 16)")
    p.add_argument("--batches-per-step", type=int, default=4, metavar="N", help="(default: 4)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="(default: 128)")
    p.add_argument("--speedup", type=parse_number, default=2.0, metavar="X",
                   help="FLOPs target of the validation prune that picks the best epoch (default: 2.0)")
    p.add_argument("--allocation", choices=list(ALLOCATIONS), default="global",
                   help="how every prune here (the masks, the prunes told, the validation prune) spreads its "
                        "removal over the channel groups, as fxmeta prune --allocation (default: global)")
    p.add_argument("--eval-bn-batches", type=int, default=20, metavar="N",
                   help="training batches that recompute the pruned models' BatchNorm statistics in that "
                        "validation, before scoring and finetuning; 0: keep the stored ones (default: 20)")
    p.add_argument("--eval-finetune-epochs", type=int, metavar="N",
                   help="finetuning epochs in that validation; 0: score right after the BatchNorm step (default: 0 "
                        "with --objective conditioned, 1 otherwise)")
    p.add_argument("--objective", choices=["conditioned", "prunable", "reference"], default="conditioned",
                   help="reference: the generated network's cross-entropy + group-sparsity penalty (the paper's); "
                        "prunable: also the cross-entropy of the generated network with the channels a prune to "
                        "one of --mask-speedups removes masked out; conditioned: prunable, with the metanet told "
                        "the prune (the channels an importance prune of the original weights removes, and the "
                        "masked-loss gradient on --grad-batches training batches): its output is pruned to exactly "
                        "those channels, and using it needs data; by default a learned optimiser: 3 rewrites with "
                        "a gradient-step head, see --steps, --step-lr (default: conditioned, the best on held-out "
                        "networks: benchmarks/results/prunability.md)")
    p.add_argument("--mask-weight", type=parse_number, default=1.0, metavar="W",
                   help="weight of the masked term of --objective prunable (default: 1)")
    p.add_argument("--ce-weight", type=parse_number, metavar="W",
                   help="weight of the generated network's own cross-entropy (0: only the pruned network's loss "
                        "counts; default: 0 with --objective conditioned, 1 otherwise)")
    p.add_argument("--mask-speedups", metavar="X[,Y...]",
                   help="FLOPs targets of the masked term, one drawn per step (default: 2,4,8 with --objective "
                        "conditioned, --speedup otherwise)")
    p.add_argument("--grad-batches", type=int, default=2, metavar="N",
                   help="training batches of the gradient input of --objective conditioned (default: 2)")
    p.add_argument("--steps", type=int, metavar="T",
                   help="rewrites per use of a conditioned metanetwork, each told the gradient at the weights the "
                        "previous one made; meta-training unrolls them (default: 3 with --objective conditioned, "
                        "else 1)")
    p.add_argument("--step-lr", type=_step_lr_flag, metavar="LR|auto",
                   help="> 0: give the conditioned metanetwork a gradient-step head that starts as SGD with this "
                        "lr on the masked loss and learns per-channel step sizes; auto: the best of "
                        "0.01, 0.03, 0.1, 0.3, 1 for --steps SGD steps on the held-out members "
                        "(default: auto with --objective conditioned, else 0: none)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--init", metavar="FILE", help="start from this metanetwork instead of a fresh one")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--force", action="store_true", help="start over even if OUT holds checkpoints")
    p.add_argument("--trust", action="store_true",
                   help="allow a zoo whose manifest or members name code (a model factory, a data function)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / epoch lines")
    p.set_defaults(func=cmd_meta_train)
