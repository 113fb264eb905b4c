"""``fxmeta demo``: the main job on the embedded digits data, with a cache of base networks."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import FxmetaError, SpecError
from .common import DEMO_MODEL, is_main_process, note_line, parse_number, pct, si, stage_note

DEMO_METANET = Path(__file__).parent.parent / "assets" / "metanet_digits.pt"


def cache_dir(given: str | None = None) -> Path:
    """--cache-dir, else $FXMETA_CACHE, else $XDG_CACHE_HOME/fxmeta, else ~/.cache/fxmeta."""
    if given:
        return Path(given)
    if os.environ.get("FXMETA_CACHE"):
        return Path(os.environ["FXMETA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fxmeta"


def _demo_base(args: argparse.Namespace, data: Any, timer: Any) -> tuple[Any, str]:
    """The trained base network (a LoadedModel) and its cache path; trained only when the
    cache holds none for this configuration."""
    import torch

    from .. import __version__
    from ..io.files import resolve_model
    from ..io.saving import save
    from ..pipeline.transform import check_model_fits
    from ..tracing import example_from_shape
    from ..training.loop import TrainConfig, train

    key_data = {"model": args.model, "image_size": args.image_size, "epochs": args.base_epochs,
                "lr": 0.1, "batch_size": args.batch_size, "seed": args.seed,
                "torch": ".".join(torch.__version__.split(".")[:2]), "fxmeta": __version__}
    key = hashlib.sha1(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir(args.cache_dir)
    path = folder / f"base-{args.model.replace(':', '-')}-{key}.pt"
    if path.is_file() and not args.retrain:
        with timer("load cached base"):
            try:
                loaded = resolve_model(str(path))
                note_line(f"base network: cached {path}")
                return loaded, str(path)
            except FxmetaError as exc:
                note_line(f"cached base network unusable ({exc}); training a new one")
    with timer("train base"):
        torch.manual_seed(args.seed)
        loaded = _resolve_demo_model(args.model, data)
        check_model_fits(loaded.module, example_from_shape((1, *data.input_shape)), data, name=args.model,
                         hint="the digits are grayscale: pick an fxmeta:NAME model (built with in_channels=1)")
        note_line(f"training the base network {args.model} on {data.description} for {args.base_epochs} epochs")
        config = TrainConfig(epochs=args.base_epochs, lr=0.1, batch_size=args.batch_size, device=args.device,
                             seed=args.seed, progress=args.progress)
        result = train(loaded.module, data, config)
        loaded.module = result.model.cpu().eval()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save(path, loaded.module, spec=loaded.spec, spec_kwargs=loaded.spec_kwargs, force=True,
             metrics={"val_acc": result.best_val_acc, "test": result.test, "config": key_data})
        note_line(f"base network cached in {path}")
    except OSError as exc:
        note_line(f"could not cache the base network in {folder} ({exc}); it will be trained again next time")
    return loaded, str(path)


def _resolve_demo_model(spec: str, data: Any) -> Any:
    from ..io.files import resolve_model

    kwargs = {"num_classes": data.num_classes}
    if spec.startswith("fxmeta:"):
        kwargs["in_channels"] = data.in_channels
    return resolve_model(spec, **kwargs)


def _demo_outputs(args: argparse.Namespace) -> dict[str, str]:
    if not args.out:
        return {}
    from ..io.paths import check_output

    folder = Path(check_output(args.out, kind="dir", what="--out"))
    outs = {name: str(folder / name) for name in ("pruned.pt", "pruned.pt2", "metrics.json")}
    if folder.is_dir():  # else nothing can be in the way: the folder is made before writing
        for name, path in outs.items():
            check_output(path, force=args.force, what=f"--out {name}")
    return outs


def _demo_metanet_path(args: argparse.Namespace) -> str | None:
    if args.no_metanet:
        return None
    return args.metanet or (str(DEMO_METANET) if DEMO_METANET.is_file() else None)


def _demo_methods(args: argparse.Namespace, config: Any) -> list[tuple[str, Any]]:
    """The demo's columns, each spending ``--epochs`` epochs on the network after its base training."""
    from dataclasses import replace

    from ..training.prepare import PrepareConfig

    if args.prepare_epochs > args.epochs or args.adapt_epochs > args.epochs:
        raise SpecError(f"--prepare-epochs {args.prepare_epochs} and --adapt-epochs {args.adapt_epochs} are part of "
                        f"the --epochs {args.epochs} budget of every column; lower them or raise --epochs")

    def column(stage_epochs: int, **kw: Any) -> Any:
        return replace(config, finetune=replace(config.finetune, epochs=args.epochs - stage_epochs), **kw)

    methods = [("calibrated", column(0))]
    if args.prepare_epochs > 0:
        methods.append(("prepared", column(args.prepare_epochs, prepare=PrepareConfig(epochs=args.prepare_epochs))))
    metanet_path = _demo_metanet_path(args)
    if metanet_path:
        from ..metanet.files import load_metanet_file

        methods.append(("metanetwork", column(args.adapt_epochs, metanet=load_metanet_file(metanet_path),
                                              adapt_epochs=args.adapt_epochs)))
    elif not args.no_metanet:
        note_line(f"no committed metanetwork ({DEMO_METANET.name} is absent): no metanetwork column")
    if args.save not in [name for name, _ in methods]:
        raise SpecError(f"--save {args.save}: that column does not run ({', '.join(n for n, _ in methods)} do)")
    return methods


def render_comparison(title: str, columns: dict[str, dict[str, Any]], budget: dict[str, str]) -> Table:
    """One column per method: accuracy at each step, FLOPs, parameters, latency, epochs spent."""
    first = next(iter(columns.values()))
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("original", justify="right")
    for name in columns:
        table.add_column(name, justify="right")
    before = first["before"]
    rows = [("test acc., finetuned", pct(before["accuracy"]), lambda m: pct(m["after"]["accuracy"])),
            ("  right after removal", "", lambda m: pct(m["removed_accuracy"])),
            ("  + BatchNorm recal.", "", lambda m: pct(m.get("recalibrated_accuracy"))),
            ("FLOPs speed-up", si(before["flops"]), lambda m: f"{m['flops_speedup']:.2f}x"),
            ("parameters kept", si(before["params"]), lambda m: f"{100 * m['params_ratio']:.1f}%")]
    if before["latency"]:
        rows.append(("latency speed-up", f"{before['latency']['median_ms']:.3g} ms",
                     lambda m: f"{m['latency_speedup']:.2f}x"))
    for label, original, cell in rows:
        table.add_row(label, original, *[cell(m) for m in columns.values()])
    table.add_row("epochs on the network", "", *[budget[name] for name in columns])
    objective = {"distill": "distillation", "labels": "labels"}  # the finetune's (see fxmeta transform --distill)
    table.add_row("finetuned on", "", *[objective.get(m.get("finetune_objective"), "-") for m in columns.values()])
    table.add_row("seconds", "", *[f"{sum(m['stages'].values()):.1f}" for m in columns.values()])
    return table


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..io.saving import atomic_write_text, save
    from ..pipeline.transform import StageTimer, TransformConfig, transform
    from ..pruning.spec import PruneSpec
    from ..tracing import example_from_shape
    from ..training.data import load_data
    from ..training.loop import TrainConfig

    if args.no_metanet and args.metanet:
        raise SpecError("--metanet and --no-metanet contradict each other; pick one")
    if args.base_epochs < 0 or args.threads < 1 or args.prepare_epochs < 0:
        raise SpecError("--base-epochs and --prepare-epochs must be >= 0 and --threads >= 1")
    finetune = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                           seed=args.seed, progress=args.progress)
    config = TransformConfig(prune=PruneSpec(args.speedup), adapt_epochs=args.adapt_epochs, bn_batches=args.bn_batches,
                             finetune=finetune, latency_batch=args.latency_batch)  # checks the numbers first
    methods = _demo_methods(args, config)
    outs = _demo_outputs(args)
    torch.set_num_threads(args.threads)
    timer = StageTimer(report=stage_note)
    with timer("load data"):
        data = load_data("digits", seed=args.seed, image_size=args.image_size if args.image_size != 8 else None)
    base, base_path = _demo_base(args, data, timer)
    x = example_from_shape((1, *data.input_shape))
    results, budget = {}, {}
    for name, method_config in methods:
        note_line(f"[bold]{name}[/]")
        results[name] = transform(base.module, x, method_config, data=data,
                                  timer=StageTimer(report=lambda stage, n=name: stage_note(f"{n}: {stage}")))
        stage = method_config.prepare.epochs or (method_config.adapt_epochs if method_config.metanet else 0)
        what = "prepare" if method_config.prepare.epochs else "adapt"
        budget[name] = (f"{stage} {what} + {method_config.finetune.epochs}" if stage
                        else f"{method_config.finetune.epochs}")
    saved = results[args.save]
    metrics = saved.metrics() | {"base": base_path, "data": data.description, "saved": args.save,
                                 "metanet": _demo_metanet_path(args),
                                 "shared_stages": dict(timer.items()),
                                 "methods": {name: r.metrics() for name, r in results.items()}}
    metrics["stages"] = dict(timer.items()) | metrics["stages"]
    if outs:
        with timer("save"):
            from ..io.export import save_program

            Path(args.out).mkdir(parents=True, exist_ok=True)
            save(outs["pruned.pt"], saved.module, spec=base.spec, spec_kwargs=base.spec_kwargs,
                 plan=saved.plan, metrics=metrics, input_shape=tuple(x.shape), force=args.force)
            save_program(saved.module, x, outs["pruned.pt2"], force=args.force)
            atomic_write_text(json.dumps(metrics, indent=1), outs["metrics.json"], force=args.force)
    if is_main_process():
        out = Console(highlight=False, emoji=False)
        title = f"demo: {args.model} on {data.description}, {args.speedup:g}x FLOPs target"
        out.print(render_comparison(title, {n: r.metrics() for n, r in results.items()}, budget))
        shared = ", ".join(f"{name} {sec:.1f} s" for name, sec in timer.items())
        out.print(f"shared stages: {shared}")
        lat = saved.before.latency
        if lat is not None:
            out.print(f"latency: {lat.device}, batch {lat.batch}, {lat.threads} thread(s), original and pruned "
                      "timed in alternation per column")
        kept = [name for name, r in results.items() if r.finetune_best_epoch == 0]
        if kept:
            out.print(f"finetune: {', '.join(kept)} kept the pruned network as it was (no finetune epoch was better "
                      "on validation)")
    if outs:
        note_line(f"wrote {', '.join(outs.values())} (the {args.save} column)")
    return 0


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job on the embedded digits data: train, transform at 2x, finetune, report",
        description="Train a small network on scikit-learn's bundled digits (or load it from the cache), prune it "
                    "to --speedup fewer FLOPs three ways at the same epoch budget: calibrated on training batches (data "
                    "importance and weight compensation, no training), after "
                    "--prepare-epochs of prunability training, and with the committed metanetwork; finetune each and "
                    "print them side by side. Offline; a few minutes on 2 CPU cores.")
    p.add_argument("--model", default=DEMO_MODEL, metavar="SPEC",
                   help=f"architecture to train and prune (default: {DEMO_MODEL}); fxmeta specs get in_channels=1")
    p.add_argument("--image-size", type=int, choices=[8, 16], default=16,
                   help="digits at their native 8x8 or upsampled to 16x16 (default: 16)")
    p.add_argument("--speedup", type=parse_number, default=2.0, metavar="X", help="FLOPs target (default: 2.0)")
    p.add_argument("--metanet", metavar="FILE", help=f"metanetwork to use (default: fxmeta/assets/{DEMO_METANET.name})")
    p.add_argument("--no-metanet", action="store_true", help="no metanetwork column")
    p.add_argument("--base-epochs", type=int, default=15, metavar="N", help="base network training epochs (default: 15)")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="epochs every column spends on the network after base training: its own stage "
                        "(prepare / adapt) plus the finetune after removal (default: 10)")
    p.add_argument("--prepare-epochs", type=int, default=5, metavar="N",
                   help="of those, epochs of prunability training before removal in the prepared column "
                        "(default: 5; 0: no prepared column)")
    p.add_argument("--adapt-epochs", type=int, default=2, metavar="N",
                   help="of those, epochs between metanetwork and removal in the metanetwork column, on the "
                        "prunability objective for the prune it was told (default: 2)")
    p.add_argument("--bn-batches", type=int, default=20, metavar="N",
                   help="training batches that recompute the BatchNorm statistics after removal (default: 20)")
    p.add_argument("--save", choices=["calibrated", "prepared", "metanetwork"], default="prepared",
                   help="which column's pruned network --out saves (default: prepared)")
    p.add_argument("--lr", type=float, default=0.01, help="finetune learning rate (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="(default: 64)")
    p.add_argument("--device", default="cpu", metavar="auto|cpu|cuda", help="(default: cpu)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads for training (default: 1: a net this small gains little from more, and "
                        "on a busy machine extra threads slow it down many times; latency is timed on 1)")
    p.add_argument("--latency-batch", type=int, default=64, metavar="N",
                   help="batch size while timing inference (default: 64; at batch 1 a net this small "
                        "measures Python overhead more than its convolutions)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where trained base networks are kept (default: $FXMETA_CACHE or ~/.cache/fxmeta)")
    p.add_argument("--retrain", action="store_true", help="train the base network again even if cached")
    p.add_argument("--out", metavar="DIR", help="save pruned.pt, pruned.pt2 and metrics.json in DIR")
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-epoch lines")
    p.set_defaults(func=cmd_demo)
