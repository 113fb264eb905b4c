"""``fxmeta transform`` (the whole pipeline) and ``fxmeta prune`` (channel removal alone).

Every command checks what it can (numbers, output paths, data spec, metanetwork file,
model and input shape) before any long work starts, writes its files atomically and,
under ``torchrun``, prints and writes from rank 0 only.
"""
from __future__ import annotations

import argparse
import os
import textwrap
from typing import Any

from ..errors import SpecError, TrainingDivergedError
from . import hf_output
from .common import (
    add_calibration_data_args,
    add_model_args,
    add_output_args,
    add_prepare_args,
    add_prune_args,
    add_train_args,
    check_numbers,
    check_run_outputs,
    is_main_process,
    load_model,
    load_run_data,
    note_line,
    print_report,
    stage_note,
    train_config,
    transform_config,
)


def _run(args: argparse.Namespace, *, with_training: bool) -> int:
    """transform and prune: validate, load, transform, save, report."""
    from ..io.inputs import first_tensor
    from ..io.paths import Created
    from ..pipeline.transform import StageTimer, check_model_fits, transform

    check_numbers(args)
    if with_training:
        finetune = train_config(args)
    else:  # prune: with --data, calibration and BatchNorm recalibration, never training
        from ..training.loop import TrainConfig

        finetune = TrainConfig(epochs=0, batch_size=getattr(args, "batch_size", 128), seed=getattr(args, "seed", 0),
                               device="cpu", progress=False)
    ckpt_dir = (args.checkpoint_dir or f"{args.out.rstrip(os.sep)}.ckpt") if with_training and args.data else None
    if with_training and args.resume and not args.data:
        raise SpecError("--resume continues an interrupted finetune, which needs --data")
    config = transform_config(args, finetune=finetune, checkpoint_dir=ckpt_dir)  # checks the numbers
    if finetune is not None:
        from ..training.loop import resolve_device

        resolve_device(finetune.device)  # CUDA asked for but absent
    # every file the run reads is an input: no output may overwrite one, --force or not
    inputs = [args.model] + [p for p in (getattr(args, "metanet", None), getattr(args, "example_input", None)) if p]
    if getattr(args, "data", None) and args.data.partition(":")[0] in (
            "cifar10", "cifar100", "imagefolder", "fashion-mnist", "text") and args.data.partition(":")[2]:
        inputs.append(args.data.partition(":")[2])
    stages = [s for s, on in (("adapt", getattr(args, "metanet", None) and config.adapt_epochs > 0),
                              ("prepare", config.prepare.epochs > 0)) if on] if ckpt_dir else []
    check_run_outputs(args, inputs, ckpt_dir, stages)
    hf_output.check_folder_output(args, inputs)
    created = Created()  # what this run adds to the checkpoint folder: all that cleanup may delete
    if ckpt_dir and not args.checkpoint_dir:  # the default OUT.ckpt is fxmeta's own, a resumed run's too
        for sub in ("", "adapt", "prepare", "finetune"):
            created.folder(os.path.join(ckpt_dir, sub), ours=args.resume)
            created.file(os.path.join(ckpt_dir, sub, "last.pt" if sub else "run.json"))
    data = load_run_data(args)
    if getattr(args, "metanet", None):
        from ..metanet.files import load_metanet_file

        config.metanet = load_metanet_file(args.metanet)
    timer = StageTimer()
    with timer("load"):
        loaded, x = load_model(args, data)
        check_model_fits(loaded.module, x, data, name=args.model)
        config.prune = hf_output.prune_spec(args, loaded.module, x, config.prune)  # --out DIR/, --uniform
    if args.export:
        from ..io.export import export_program

        with timer("check export"):  # an unexportable model fails now, not after finetuning
            export_program(loaded.module, x)
    if ckpt_dir and args.resume and not os.path.isdir(ckpt_dir):
        note_line(f"--resume: no checkpoints in {ckpt_dir}, starting from the beginning")
    timer.report = stage_note  # everything is checked: from here on, say what runs
    run_info = {"model": args.model, "data": getattr(args, "data", None), "input_shape": list(first_tensor(x).shape),
                "metanet_file": os.path.abspath(args.metanet) if getattr(args, "metanet", None) else None}
    try:
        result = transform(loaded.module, x, config, data=data, timer=timer, run_info=run_info)
    except TrainingDivergedError as exc:
        kept = [os.path.join(ckpt_dir, s, "last.pt") for s in ("adapt", "prepare", "finetune")] if ckpt_dir else []
        if not any(os.path.isfile(k) for k in kept):
            created.remove()  # nothing to resume from: leave nothing that would refuse the retry
            raise
        raise TrainingDivergedError(f"{exc}; re-run with a lower --lr and --resume to continue from that checkpoint, "
                                    "or --force to start over") from exc
    if is_main_process():
        _save_outputs(args, loaded, x, result, timer, run_info)
        created.remove()  # only fxmeta's own checkpoint files, and folders it made that are now empty
    title = f"{args.model}: {config.speedup:g}x FLOPs target" + (" with metanetwork" if config.metanet is not None else "")
    print_report(title, result.metrics(), timer.items())
    note_line(f"wrote {args.out}" + (f" and {args.export}" if args.export else ""))
    return 0


def _save_outputs(args: argparse.Namespace, loaded: Any, x: Any, result: Any, timer: Any,
                  run_info: dict[str, Any]) -> None:
    from ..io.saving import save

    metrics = result.metrics() | {"source": loaded.source, "run": run_info,
                                  "speedup_target": args.speedup}
    with timer("save"):
        if hf_output.writes_folder(args):
            result.notes.extend(hf_output.save_folder(args, result.module))
        else:
            save(args.out, result.module, plan=result.plan, metrics=metrics, example_input=x, force=args.force,
                 **loaded.save_args())
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
    add_model_args(p)
    p.add_argument("--metanet", metavar="FILE", help="trained metanetwork (from fxmeta meta-train)")
    add_prune_args(p)
    add_train_args(p, epochs=10)
    add_prepare_args(p)
    add_output_args(p)
    hf_output.add_hf_output_args(p)
    p.set_defaults(func=cmd_transform)


def register_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="remove channels to a FLOPs target (no training; calibrated with --data)",
        description=textwrap.fill("Remove the least important channel groups of MODEL until its FLOPs drop by "
                    "--speedup, then save it. Without data channels are scored by their weights; with --data the prune is "
                    "calibrated on training batches (data importance, weight compensation, BatchNorm "
                    "recalibration) and accuracy is measured before and after. No training: finetune later with "
                    "fxmeta transform or your own loop.", 88),
        epilog="examples: fxmeta prune torchvision:resnet18 --speedup 2 --out pruned.pt --export pruned.pt2\n"
               "          fxmeta prune fxmeta:resnet20@base.pt --in-channels 1 --data fashion-mnist --speedup 4 "
               "--out pruned.pt", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_prune_args(p)
    add_calibration_data_args(p)
    add_output_args(p)
    hf_output.add_hf_output_args(p)
    p.set_defaults(func=cmd_prune)
