"""``fxmeta transform``, ``prune``, ``demo``, ``zoo`` and ``meta-train``: the product commands.

Every command checks what it can (numbers, output paths, data spec, metanetwork file,
model and input shape) before any long work starts, writes its files atomically and,
under ``torchrun``, prints and writes from rank 0 only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .app import _add_model_args, err
from ..errors import FxmetaError, InputShapeError, OutputExistsError, SpecError

DEMO_MODEL = "fxmeta:resnet20"
DEMO_METANET = Path(__file__).parent.parent / "assets" / "metanet_digits.pt"


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun job (which must stay quiet)."""
    return int(os.environ.get("RANK", "0")) == 0


def _note(text: str) -> None:
    if is_main_process():
        err.print(text, soft_wrap=True)


def _stage_note(name: str) -> None:
    _note(f"[dim]> {name}[/]")


# ------------------------------------------------------------------------ arguments


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning")
    g.add_argument("--speedup", type=_number, default=2.0, metavar="X",
                   help="target FLOPs ratio original / pruned, >= 1 (default: 2.0)")
    g.add_argument("--importance", choices=["l2", "l1", "random"], default="l2",
                   help="channel-group importance used to pick what to remove (default: l2, the group's L2 norm)")
    g.add_argument("--round-to", type=int, metavar="N",
                   help="keep channel counts multiples of N (e.g. 8) so kernels stay fast")
    g.add_argument("--ignore", action="append", default=[], metavar="LAYER",
                   help="never prune this layer (module name, repeatable)")
    g.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the self-check that the pruned model equals the original with the removed channels zeroed")
    g.add_argument("--latency-threads", type=int, default=1, metavar="N",
                   help="torch threads while timing inference (default: 1, for stable numbers)")
    g.add_argument("--latency-batch", type=int, default=1, metavar="N",
                   help="batch size while timing inference (default: 1)")


def _add_output_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", required=required, metavar="FILE",
                   help="write the pruned model here (fxmeta model file, loads with torch.load(weights_only=True) "
                        "and fxmeta.load)")
    g.add_argument("--export", metavar="FILE.pt2",
                   help="also write a torch.export program that runs without fxmeta (torch.export.load)")
    g.add_argument("--force", action="store_true", help="overwrite output files that exist")


def _add_train_args(p: argparse.ArgumentParser, epochs: int) -> None:
    g = p.add_argument_group("finetuning (needs --data)")
    g.add_argument("--data", metavar="SPEC",
                   help="training data: digits, cifar10:PATH, cifar100:PATH, imagefolder:PATH or module.path:function; "
                        "without it there is no finetuning and no accuracy")
    g.add_argument("--image-size", type=int, metavar="N", help="resize the data's images to NxN")
    g.add_argument("--epochs", type=int, default=epochs, metavar="N",
                   help=f"finetuning epochs after channel removal (default: {epochs})")
    g.add_argument("--adapt-epochs", type=int, default=0, metavar="N",
                   help="short finetune between the metanetwork and channel removal (default: 0)")
    g.add_argument("--bn-batches", type=int, default=20, metavar="N",
                   help="recompute the BatchNorm statistics on N training batches right after channel removal, "
                        "before finetuning; restores much of the accuracy removal costs (default: 20; 0: off)")
    g.add_argument("--batch-size", type=int, default=128, metavar="B", help="per-process batch size (default: 128)")
    g.add_argument("--lr", type=float, default=0.01, help="peak learning rate, cosine schedule (default: 0.01)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="(default: sgd)")
    g.add_argument("--weight-decay", type=float, default=5e-4, metavar="W", help="(default: 5e-4)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="training device; auto picks CUDA when available (default: auto)")
    g.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision; auto: bf16/fp16 on CUDA, off on CPU (default: auto)")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="data loader worker processes (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation and splits (default: 0)")
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help="checkpoint every epoch here (default: OUT.ckpt, removed after success; a given DIR is kept)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    g.add_argument("--log", "--log-file", dest="log", metavar="FILE.jsonl",
                   help="write per-epoch metrics as JSON lines (appended to on --resume); under torchrun spell it "
                        "--log-file, torchrun's own parser reads --log as an abbreviation of its options")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / per-epoch lines")


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prepare for pruning (needs --data)")
    g.add_argument("--prepare-epochs", type=int, default=0, metavar="N",
                   help="before channel removal, train N epochs on the prunability objective: the loss of the "
                        "network plus the loss of the network with the channels the prune will remove masked out. "
                        "Recommended without --metanet, e.g. 5-10 (default: 0, off)")
    g.add_argument("--prepare-speedups", metavar="X[,Y...]",
                   help="FLOPs targets whose masks the prepare stage trains, one drawn per step "
                        "(default: --speedup)")
    g.add_argument("--prepare-weight", type=_number, default=1.0, metavar="W",
                   help="weight of the masked network's loss (default: 1)")
    g.add_argument("--prepare-mask-every", type=int, default=0, metavar="STEPS",
                   help="recompute the mask every STEPS steps as well as at every epoch start (default: 0, "
                        "once per epoch)")
    g.add_argument("--prepare-lr", type=_number, metavar="LR", help="learning rate of the prepare stage (default: --lr)")


def _prepare_config(args: argparse.Namespace):
    from .prepare import PrepareConfig

    speedups = ()
    if getattr(args, "prepare_speedups", None):
        try:
            speedups = tuple(float(v) for v in args.prepare_speedups.split(","))
        except ValueError:
            raise SpecError(f"--prepare-speedups wants numbers separated by commas, got {args.prepare_speedups!r}"
                            ) from None
    return PrepareConfig(epochs=getattr(args, "prepare_epochs", 0), speedups=speedups,
                         weight=getattr(args, "prepare_weight", 1.0), mask_every=getattr(args, "prepare_mask_every", 0),
                         lr=getattr(args, "prepare_lr", None))


def _train_config(args: argparse.Namespace):
    from ..training.loop import TrainConfig

    if args.epochs < 0 or args.adapt_epochs < 0:
        raise SpecError("--epochs and --adapt-epochs must be >= 0")
    return TrainConfig(
        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        batch_size=args.batch_size, num_workers=args.workers, device=args.device, amp=args.amp,
        seed=args.seed, log_path=args.log, progress=args.progress and is_main_process(),
    )


def _transform_config(args: argparse.Namespace, *, finetune: Any = None, checkpoint_dir: str | None = None):
    from ..training.loop import TrainConfig
    from ..pipeline.transform import TransformConfig

    return TransformConfig(
        speedup=args.speedup, importance=args.importance, round_to=args.round_to, ignore=tuple(args.ignore),
        check=args.check, adapt_epochs=getattr(args, "adapt_epochs", 0), bn_batches=getattr(args, "bn_batches", 0),
        prepare=_prepare_config(args),
        finetune=finetune or TrainConfig(epochs=0, device="cpu", progress=False),
        checkpoint_dir=checkpoint_dir, resume=getattr(args, "resume", False),
        latency_threads=args.latency_threads, latency_batch=args.latency_batch,
    )


def _check_outputs(args: argparse.Namespace, inputs: list[str]) -> None:
    from ..io.files import check_output_path

    outs = [o for o in (args.out, args.export) if o]
    if len(outs) == 2 and os.path.abspath(outs[0]) == os.path.abspath(outs[1]):
        raise OutputExistsError(f"--out and --export are both {args.out}; give them different paths")
    for out in outs:
        check_output_path(out, inputs, args.force)
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise FxmetaError(f"output folder {folder} does not exist; create it first")


def _load_data(args: argparse.Namespace):
    if not getattr(args, "data", None):
        return None
    from ..training.data import load_data

    if args.image_size is not None and args.image_size < 1:
        raise SpecError(f"--image-size must be >= 1, got {args.image_size}")
    return load_data(args.data, seed=args.seed, image_size=args.image_size)


def _load_model(args: argparse.Namespace, data) -> tuple[Any, Any]:
    """The model and an example input: from --input-shape, else the data's sample shape,
    else the model family's usual shape."""
    import torch

    from ..io.files import parse_input_shape, resolve_model
    from ..tracing import example_from_shape

    torch.manual_seed(args.seed if hasattr(args, "seed") else 0)  # spec-built models: reproducible weights
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    loaded = resolve_model(args.model, trust=args.trust, num_classes=args.num_classes, in_channels=args.in_channels)
    if shape is None:
        if data is not None:
            shape = (1, *data.input_shape)
        elif loaded.default_input_shape:
            shape = tuple(loaded.default_input_shape)
        else:
            raise InputShapeError(f"no default input shape is known for {args.model}: pass --input-shape N,C,H,W")
    return loaded, example_from_shape(shape)


def _save_spec(loaded: Any, model_arg: str) -> tuple[str, dict]:
    """Spec that rebuilds the network that was pruned (a pruned input file: that file)."""
    if loaded.plan is not None:
        return os.path.abspath(model_arg), {}
    return loaded.spec, dict(loaded.spec_kwargs)


# ---------------------------------------------------------------------------- table


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def render_table(title: str, metrics: dict[str, Any], stages: list[tuple[str, float]]) -> list[Table]:
    """The before / after table and the time-per-stage table."""
    before, after = metrics["before"], metrics["after"]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("change", justify="right")
    if before["accuracy"] is not None:
        delta = 100 * (after["accuracy"] - before["accuracy"])
        table.add_row("test accuracy", _pct(before["accuracy"]), _pct(after["accuracy"]), f"{delta:+.2f} pt")
        table.add_row("  right after removal", "", _pct(metrics["removed_accuracy"]), "")
        if metrics.get("recalibrated_accuracy") is not None:
            table.add_row("  + BatchNorm recalibration", "", _pct(metrics["recalibrated_accuracy"]), "")
    else:
        table.add_row("test accuracy", "-", "-", "no data")
    table.add_row("FLOPs", _si(before["flops"]), _si(after["flops"]), f"{metrics['flops_speedup']:.2f}x fewer")
    table.add_row("parameters", _si(before["params"]), _si(after["params"]), f"{100 * metrics['params_ratio']:.1f}% kept")
    if before["latency"] and after["latency"]:
        lat = before["latency"]
        where = f"{lat['device']}, batch {lat['batch']}, {lat['threads']} thr"
        table.add_row(f"latency ({where})", f"{before['latency']['median_ms']:.3g} ms",
                      f"{after['latency']['median_ms']:.3g} ms", f"{metrics['latency_speedup']:.2f}x faster")
    times = Table(title="time per stage", title_justify="left")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for name, sec in stages:
        times.add_row(name, f"{sec:.2f}")
    times.add_row("total", f"{sum(s for _, s in stages):.2f}", style="bold")
    return [table, times]


def _print_report(title: str, metrics: dict[str, Any], stages: list[tuple[str, float]]) -> None:
    if not is_main_process():
        return
    out = Console(highlight=False)
    for table in render_table(title, metrics, stages):
        out.print(table)
    for note in metrics.get("notes", []):
        out.print(f"note: {note}")


# --------------------------------------------------------------------------- commands


def _run(args: argparse.Namespace, *, with_training: bool) -> int:
    """transform and prune: validate, load, transform, save, report."""
    import shutil

    from ..pipeline.transform import StageTimer, check_model_fits, transform

    finetune = _train_config(args) if with_training else None
    ckpt_dir = (args.checkpoint_dir or f"{args.out}.ckpt") if with_training and args.data else None
    if with_training and args.resume and not args.data:
        raise SpecError("--resume continues an interrupted finetune, which needs --data")
    config = _transform_config(args, finetune=finetune, checkpoint_dir=ckpt_dir)  # checks the numbers
    if finetune is not None:
        from ..training.loop import resolve_device

        resolve_device(finetune.device)  # CUDA asked for but absent
    inputs = [args.model] + ([args.metanet] if getattr(args, "metanet", None) else [])
    _check_outputs(args, inputs)
    data = _load_data(args) if with_training else None
    if getattr(args, "metanet", None):
        from passes.metanet import load_metanet_file

        config.metanet = load_metanet_file(args.metanet)
    timer = StageTimer()
    with timer("load"):
        loaded, x = _load_model(args, data)
        check_model_fits(loaded.module, x, data, name=args.model)
    if args.export:
        from ..io.export import export_program

        with timer("check export"):  # an unexportable model fails now, not after finetuning
            export_program(loaded.module, x)
    if ckpt_dir and args.resume and not os.path.isdir(ckpt_dir):
        _note(f"--resume: no checkpoints in {ckpt_dir}, starting from the beginning")
    timer.report = _stage_note  # everything is checked: from here on, say what runs
    run_info = {"model": args.model, "data": getattr(args, "data", None), "input_shape": list(x.shape),
                "metanet_file": os.path.abspath(args.metanet) if getattr(args, "metanet", None) else None}
    result = transform(loaded.module, x, config, data=data, timer=timer, run_info=run_info)
    if is_main_process():
        _save_outputs(args, loaded, x, result, timer, run_info)
        if ckpt_dir and not args.checkpoint_dir:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    title = f"{args.model}: {config.speedup:g}x FLOPs target" + (" with metanetwork" if config.metanet is not None else "")
    _print_report(title, result.metrics(), timer.items())
    _note(f"wrote {args.out}" + (f" and {args.export}" if args.export else ""))
    return 0


def _save_outputs(args: argparse.Namespace, loaded: Any, x: Any, result: Any, timer: Any,
                  run_info: dict[str, Any]) -> None:
    from ..io.files import save

    spec, spec_kwargs = _save_spec(loaded, args.model)
    metrics = result.metrics() | {"source": loaded.source, "run": run_info,
                                  "speedup_target": args.speedup}
    with timer("save"):
        save(args.out, result.module, spec=spec, spec_kwargs=spec_kwargs, plan=result.plan, metrics=metrics,
             input_shape=tuple(x.shape), force=args.force)
    if args.export:
        from ..io.export import save_program

        with timer("export"):
            save_program(result.module, x, args.export, force=args.force)


def cmd_transform(args: argparse.Namespace) -> int:
    return _run(args, with_training=True)


def cmd_prune(args: argparse.Namespace) -> int:
    return _run(args, with_training=False)


def register_transform(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transform", help="metanetwork + channel removal + finetune: the whole pipeline",
        description="Load MODEL, trace and lower it, rewrite it with a metanetwork (--metanet; without one, "
                    "channels are chosen by importance alone), raise it, remove channels until FLOPs drop by "
                    "--speedup, finetune on --data, save, and print accuracy / FLOPs / params / latency before "
                    "and after with the time per stage. Multi-GPU: torchrun --nproc_per_node N -m fxmeta transform ...",
        epilog="example: fxmeta transform fxmeta:resnet20@base.pt --in-channels 1 --data digits --out pruned.pt")
    _add_model_args(p)
    p.add_argument("--metanet", metavar="FILE", help="trained metanetwork (from fxmeta meta-train)")
    _add_prune_args(p)
    _add_train_args(p, epochs=10)
    _add_prepare_args(p)
    _add_output_args(p)
    p.set_defaults(func=cmd_transform)


def register_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="remove channels to a FLOPs target by importance (no data, no finetune)",
        description="Remove the least important channel groups of MODEL until its FLOPs drop by --speedup, "
                    "then save it. No data needed; finetune later with fxmeta transform or your own loop.",
        epilog="example: fxmeta prune torchvision:resnet18 --speedup 2 --out pruned.pt --export pruned.pt2")
    _add_model_args(p)
    _add_prune_args(p)
    _add_output_args(p)
    p.set_defaults(func=cmd_prune)


# ------------------------------------------------------------------------------ demo


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
    from ..io.files import resolve_model, save
    from ..tracing import example_from_shape
    from ..training.loop import TrainConfig, train
    from ..pipeline.transform import check_model_fits

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
                _note(f"base network: cached {path}")
                return loaded, str(path)
            except FxmetaError as exc:
                _note(f"cached base network unusable ({exc}); training a new one")
    with timer("train base"):
        torch.manual_seed(args.seed)
        loaded = _resolve_demo_model(args.model, data)
        check_model_fits(loaded.module, example_from_shape((1, *data.input_shape)), data, name=args.model,
                         hint="the digits are grayscale: pick an fxmeta:NAME model (built with in_channels=1)")
        _note(f"training the base network {args.model} on {data.description} for {args.base_epochs} epochs")
        config = TrainConfig(epochs=args.base_epochs, lr=0.1, batch_size=args.batch_size, device=args.device,
                             seed=args.seed, progress=args.progress)
        result = train(loaded.module, data, config)
        loaded.module = result.model.cpu().eval()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save(path, loaded.module, spec=loaded.spec, spec_kwargs=loaded.spec_kwargs, force=True,
             metrics={"val_acc": result.best_val_acc, "test": result.test, "config": key_data})
        _note(f"base network cached in {path}")
    except OSError as exc:
        _note(f"could not cache the base network in {folder} ({exc}); it will be trained again next time")
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
    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"--out {folder} is a file; give a folder for the demo's results")
    outs = {name: str(folder / name) for name in ("pruned.pt", "pruned.pt2", "metrics.json")}
    for path in outs.values():
        if os.path.exists(path) and not args.force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it, or choose another --out folder")
    return outs


def _demo_metanet_path(args: argparse.Namespace) -> str | None:
    if args.no_metanet:
        return None
    return args.metanet or (str(DEMO_METANET) if DEMO_METANET.is_file() else None)


def _demo_methods(args: argparse.Namespace, config: Any) -> list[tuple[str, Any]]:
    """The demo's columns, each spending ``--epochs`` epochs on the network after its base training."""
    from dataclasses import replace

    from .prepare import PrepareConfig

    if args.prepare_epochs > args.epochs or args.adapt_epochs > args.epochs:
        raise SpecError(f"--prepare-epochs {args.prepare_epochs} and --adapt-epochs {args.adapt_epochs} are part of "
                        f"the --epochs {args.epochs} budget of every column; lower them or raise --epochs")

    def column(stage_epochs: int, **kw: Any) -> Any:
        return replace(config, finetune=replace(config.finetune, epochs=args.epochs - stage_epochs), **kw)

    methods = [("importance", column(0))]
    if args.prepare_epochs > 0:
        methods.append(("prepared", column(args.prepare_epochs, prepare=PrepareConfig(epochs=args.prepare_epochs))))
    metanet_path = _demo_metanet_path(args)
    if metanet_path:
        from passes.metanet import load_metanet_file

        methods.append(("metanetwork", column(args.adapt_epochs, metanet=load_metanet_file(metanet_path),
                                              adapt_epochs=args.adapt_epochs)))
    elif not args.no_metanet:
        _note(f"no committed metanetwork ({DEMO_METANET.name} is absent): no metanetwork column")
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
    rows = [("test acc., finetuned", _pct(before["accuracy"]), lambda m: _pct(m["after"]["accuracy"])),
            ("  right after removal", "", lambda m: _pct(m["removed_accuracy"])),
            ("  + BatchNorm recal.", "", lambda m: _pct(m.get("recalibrated_accuracy"))),
            ("FLOPs speed-up", _si(before["flops"]), lambda m: f"{m['flops_speedup']:.2f}x"),
            ("parameters kept", _si(before["params"]), lambda m: f"{100 * m['params_ratio']:.1f}%")]
    if before["latency"]:
        rows.append(("latency speed-up", f"{before['latency']['median_ms']:.3g} ms",
                     lambda m: f"{m['latency_speedup']:.2f}x"))
    for label, original, cell in rows:
        table.add_row(label, original, *[cell(m) for m in columns.values()])
    table.add_row("epochs on the network", "", *[budget[name] for name in columns])
    table.add_row("seconds", "", *[f"{sum(m['stages'].values()):.1f}" for m in columns.values()])
    return table


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..training.data import load_data
    from ..io.files import atomic_write_text, save
    from ..tracing import example_from_shape
    from ..training.loop import TrainConfig
    from ..pipeline.transform import StageTimer, TransformConfig, transform

    if args.no_metanet and args.metanet:
        raise SpecError("--metanet and --no-metanet contradict each other; pick one")
    if args.base_epochs < 0 or args.threads < 1 or args.prepare_epochs < 0:
        raise SpecError("--base-epochs and --prepare-epochs must be >= 0 and --threads >= 1")
    finetune = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                           seed=args.seed, progress=args.progress)
    config = TransformConfig(speedup=args.speedup, adapt_epochs=args.adapt_epochs, bn_batches=args.bn_batches,
                             finetune=finetune, latency_batch=args.latency_batch)  # checks the numbers first
    methods = _demo_methods(args, config)
    outs = _demo_outputs(args)
    torch.set_num_threads(args.threads)
    timer = StageTimer(report=_stage_note)
    with timer("load data"):
        data = load_data("digits", seed=args.seed, image_size=args.image_size if args.image_size != 8 else None)
    base, base_path = _demo_base(args, data, timer)
    x = example_from_shape((1, *data.input_shape))
    results, budget = {}, {}
    for name, method_config in methods:
        _note(f"[bold]{name}[/]")
        results[name] = transform(base.module, x, method_config, data=data,
                                  timer=StageTimer(report=lambda stage, n=name: _stage_note(f"{n}: {stage}")))
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
        out = Console(highlight=False)
        title = f"demo: {args.model} on {data.description}, {args.speedup:g}x FLOPs target"
        out.print(render_comparison(title, {n: r.metrics() for n, r in results.items()}, budget))
        shared = ", ".join(f"{name} {sec:.1f} s" for name, sec in timer.items())
        out.print(f"shared stages: {shared}")
        lat = saved.before.latency
        if lat is not None:
            out.print(f"latency: {lat.device}, batch {lat.batch}, {lat.threads} thread(s), original and pruned "
                      "timed in alternation per column")
    if outs:
        _note(f"wrote {', '.join(outs.values())} (the {args.save} column)")
    return 0


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job on the embedded digits data: train, transform at 2x, finetune, report",
        description="Train a small network on scikit-learn's bundled digits (or load it from the cache), prune it "
                    "to --speedup fewer FLOPs three ways at the same epoch budget: by importance alone, after "
                    "--prepare-epochs of prunability training, and with the committed metanetwork; finetune each and "
                    "print them side by side. Offline; a few minutes on 2 CPU cores.")
    p.add_argument("--model", default=DEMO_MODEL, metavar="SPEC",
                   help=f"architecture to train and prune (default: {DEMO_MODEL}); fxmeta specs get in_channels=1")
    p.add_argument("--image-size", type=int, choices=[8, 16], default=16,
                   help="digits at their native 8x8 or upsampled to 16x16 (default: 16)")
    p.add_argument("--speedup", type=_number, default=2.0, metavar="X", help="FLOPs target (default: 2.0)")
    p.add_argument("--metanet", metavar="FILE", help=f"metanetwork to use (default: fxmeta/assets/{DEMO_METANET.name})")
    p.add_argument("--no-metanet", action="store_true", help="prune by importance alone")
    p.add_argument("--base-epochs", type=int, default=15, metavar="N", help="base network training epochs (default: 15)")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="epochs every column spends on the network after base training: its own stage "
                        "(prepare / adapt) plus the finetune after removal (default: 10)")
    p.add_argument("--prepare-epochs", type=int, default=5, metavar="N",
                   help="of those, epochs of prunability training before removal in the prepared column "
                        "(default: 5; 0: no prepared column)")
    p.add_argument("--adapt-epochs", type=int, default=2, metavar="N",
                   help="of those, finetune epochs between metanetwork and removal in the metanetwork column "
                        "(default: 2)")
    p.add_argument("--bn-batches", type=int, default=20, metavar="N",
                   help="training batches that recompute the BatchNorm statistics after removal (default: 20)")
    p.add_argument("--save", choices=["importance", "prepared", "metanetwork"], default="prepared",
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


# ------------------------------------------------------------------ zoo / meta-train


def cmd_zoo(args: argparse.Namespace) -> int:
    from ..pipeline.transform import TransformConfig
    from ..metatrain.zoo import build_zoo

    TransformConfig(speedup=args.prune_speedup)  # the same check as every other speed-up
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
        table.add_row(m.file, m.split, str(m.seed), _pct(acc), f"{m.metrics.get('speedup', 1.0):.2f}",
                      f"{m.metrics.get('seconds', 0):.1f}")
    Console(highlight=False).print(table)
    _note(f"next: fxmeta meta-train {args.out} --out metanet/")
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
    p.add_argument("--prune-speedup", type=_number, default=1.3, metavar="X",
                   help="light pre-pruning of every member, FLOPs ratio (default: 1.3; 1 = none)")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="training epochs per member (default: 20)")
    p.add_argument("--finetune-epochs", type=int, default=10, metavar="N",
                   help="finetuning epochs after the pre-pruning (default: 10)")
    p.add_argument("--lr", type=float, default=0.1, help="training learning rate (default: 0.1; finetuning: a tenth)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="(default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first member (default: 0)")
    p.add_argument("--trust", action="store_true", help="allow a MODEL spec that imports code from a file")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-epoch lines")
    p.set_defaults(func=cmd_zoo)


def cmd_meta_train(args: argparse.Namespace) -> int:
    from ..metatrain.loop import MetaTrainConfig, meta_train

    config = MetaTrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, width=args.width, depth=args.depth,
        ratio=args.ratio, reg=args.reg, alpha=args.alpha, batches_per_step=args.batches_per_step,
        batch_size=args.batch_size, speedup=args.speedup, eval_bn_batches=args.eval_bn_batches,
        eval_finetune_epochs=args.eval_finetune_epochs, seed=args.seed, init=args.init, resume=args.resume, force=args.force, progress=args.progress)
    if args.init:
        from passes.metanet import load_metanet_file

        load_metanet_file(args.init)  # a missing or broken file fails now, not after loading the zoo
    result = meta_train(args.zoo, args.out, config=config)
    _note(f"best epoch {result.best_epoch} (validation accuracy after a {args.speedup:g}x prune: "
          f"{_pct(result.best_score if result.best_score >= 0 else None)}): {result.best_path}")
    _note(f"next: fxmeta transform MODEL --metanet {result.best_path} --data SPEC --out pruned.pt")
    return 0


def register_meta_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meta-train", help="train a metanetwork on a zoo of data models",
        description="Meta-train a graph metanetwork on the data models of ZOO (from fxmeta zoo): each step rewrites "
                    "one data model and trains on its cross-entropy plus a group-sparsity penalty; after every "
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
    p.add_argument("--ratio", type=float, default=0.01,
                   help="output = input + ratio * decoder(h); small keeps an untrained metanet near the identity "
                        "(default: 0.01)")
    p.add_argument("--reg", type=float, default=10.0, help="group-sparsity strength (default: 10)")
    p.add_argument("--alpha", type=float, default=16.0, help="group-sparsity weighting base (default: 16)")
    p.add_argument("--batches-per-step", type=int, default=4, metavar="N", help="(default: 4)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="(default: 128)")
    p.add_argument("--speedup", type=_number, default=2.0, metavar="X",
                   help="FLOPs target of the validation prune that picks the best epoch (default: 2.0)")
    p.add_argument("--eval-bn-batches", type=int, default=20, metavar="N",
                   help="training batches that recompute the pruned models' BatchNorm statistics in that "
                        "validation, before scoring and finetuning; 0: keep the stored ones (default: 20)")
    p.add_argument("--eval-finetune-epochs", type=int, default=1, metavar="N",
                   help="finetuning epochs in that validation; 0: score right after the BatchNorm step (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--init", metavar="FILE", help="start from this metanetwork instead of a fresh one")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--force", action="store_true", help="start over even if OUT holds checkpoints")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / epoch lines")
    p.set_defaults(func=cmd_meta_train)


register_all = [register_transform, register_prune, register_demo, register_zoo, register_meta_train]
