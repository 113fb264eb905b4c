"""What the commands share: model / output / training arguments, loading, notes, the report table.

Under ``torchrun`` only rank 0 prints (``is_main_process``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.table import Table

from ..errors import InputShapeError, OutputExistsError, SpecError
from ..pruning.selection import ALLOCATIONS
from ..pruning.spec import CALIBRATED, COMPENSATIONS, DATA_IMPORTANCE, WEIGHT_IMPORTANCE

SPEC_HELP = (
    "model spec: torchvision:NAME, fxmeta:NAME, timm:NAME, hf:CONFIG.json or hf:FOLDER (transformers), "
    "module.path:factory, path/to/file.py:factory, SPEC@weights.pt, an fxmeta model file (.pt), or a "
    "torch.export program (.pt2, needs --trust)"
)

DEMO_MODEL = "fxmeta:resnet20"  # what demo and zoo train when given no MODEL

err = Console(stderr=True, highlight=False, emoji=False)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=SPEC_HELP)
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="example input shape (default: the model family's usual shape)")
    p.add_argument("--input-dtype", metavar="DTYPE",
                   help="example input dtype: float (default) or long for token ids, which are drawn from "
                        "[0, vocab size) when the model names one (transformers configs), else [0, 2) "
                        "(default: the model family's, long for hf: text models)")
    p.add_argument("--example-input", metavar="FILE.pt",
                   help="the example input itself: a tensor or a tuple of tensors (the positional inputs) saved "
                        "with torch.save; read with weights_only=True. Replaces --input-shape / --input-dtype")
    p.add_argument("--num-classes", type=int, help="build the architecture with this many outputs")
    p.add_argument("--in-channels", type=int, help="build fxmeta models with this many input channels")
    p.add_argument("--trust", action="store_true",
                   help="allow loading files that run code when read (pickled modules, .pt2, factory specs in files)")
    p.add_argument("--capture", choices=["auto", "fx", "export"], default="auto",
                   help="how the model becomes a graph: fx (symbolic tracing), export (torch.export, then its ATen "
                        "ops mapped to modules and torch calls), auto (fx; torch.export when fx cannot trace the "
                        "model). A .pt2 program is captured from torch.export unless --capture fx (default: auto)")


def capture_model(loaded: Any, x: Any, how: str) -> Any:
    """``loaded`` with its module captured as ``--capture`` asks (``fxmeta.capture.trace``).

    A .pt2 program is captured from the program itself (auto / export); ``fx`` traces its
    ATen-level module as it is. For modules, ``auto`` is left to the stages (they capture
    with fallback), ``fx`` and ``export`` capture here once, so every stage uses that graph."""
    import dataclasses

    from ..capture import trace

    if loaded.program is not None:
        return loaded if how == "fx" else dataclasses.replace(loaded, module=trace(loaded.program, x))
    if how == "auto":
        # transformers models (loaded.capture "export"): the stages capture them themselves, so that
        # the prune gives the model's own class back (generate, any batch and sequence length)
        # instead of a graph fixed to the example input's shape
        return loaded
    return dataclasses.replace(loaded, module=trace(loaded.module, x, capture=how))


def load_model_and_input(args: argparse.Namespace):
    """Resolve ``args.model`` and build a reproducible example input for it."""
    from ..io.files import resolve_model

    # Architectures built from a spec get reproducible random weights (dumps diff cleanly).
    torch.manual_seed(0)
    loaded = resolve_model(args.model, trust=args.trust, num_classes=args.num_classes,
                           in_channels=args.in_channels)
    x = example_for(args, loaded)
    return capture_model(loaded, x, getattr(args, "capture", "auto")), x


def example_for(args: argparse.Namespace, loaded: Any, data_shape: Sequence[int] | None = None) -> Any:
    """The example input: --example-input, else --input-shape / --input-dtype, else the data's
    sample shape, else the model family's usual shape and dtype."""
    from ..io.inputs import example_input, load_example_input, parse_dtype, parse_input_shape

    path = getattr(args, "example_input", None)
    if path is not None:
        if args.input_shape is not None or getattr(args, "input_dtype", None) is not None:
            raise InputShapeError("--example-input is the input itself; drop --input-shape / --input-dtype")
        return load_example_input(path)
    dtype = parse_dtype(args.input_dtype) if getattr(args, "input_dtype", None) else loaded.default_input_dtype
    if args.input_shape is not None:
        shape = parse_input_shape(args.input_shape)
    elif data_shape is not None:
        shape = (1, *data_shape)
    elif loaded.default_input_shape:
        shape = tuple(loaded.default_input_shape)
    else:
        raise InputShapeError(f"no default input shape is known for {args.model}: pass --input-shape N,C,H,W "
                              "or --example-input FILE.pt")
    return example_input(shape, dtype, loaded.module)


def write_output(text: str, out: str | None, force: bool, inputs: Sequence[str]) -> None:
    """Print ``text``, or write it atomically to ``out``."""
    if out is None:
        sys.stdout.write(text)
        return
    from ..io.saving import atomic_write_text, check_output_path

    check_output_path(out, list(inputs), force)
    atomic_write_text(text, out, force=force)
    err.print(f"wrote {out}")


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun job (which must stay quiet)."""
    return int(os.environ.get("RANK", "0")) == 0


def note_line(text: str) -> None:
    if is_main_process():
        err.print(text, soft_wrap=True)


def stage_note(name: str) -> None:
    note_line(f"[dim]> {name}[/]")


# ------------------------------------------------------------------------ arguments


def parse_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_prune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning")
    g.add_argument("--speedup", type=parse_number, default=2.0, metavar="X",
                   help="target FLOPs ratio original / pruned, >= 1 (default: 2.0)")
    g.add_argument("--importance", choices=list(WEIGHT_IMPORTANCE + DATA_IMPORTANCE),
                   help="how channels are scored, weakest removed first: l2 / l1 (the group's weight norm), random, "
                        "taylor (first-order loss change of removing the channel, on the calibration batches), "
                        "activation (input RMS x weight "
                        "norm of the layers reading the channel). Default: l2 without --data; with --data the "
                        f"calibrated default ({CALIBRATED['importance']}; l2 after a prepare stage or a metanetwork)")
    g.add_argument("--compensate", choices=list(COMPENSATIONS),
                   help="change the weights that stay so the network loses less, on the calibration batches: bias "
                        "(each layer that loses inputs gets their mean contribution added to its bias) or lstsq "
                        "(its kept weights refit by ridge least squares to its original output). Default: none "
                        f"without --data, {CALIBRATED['compensate']} with it")
    g.add_argument("--calib-batches", type=int, default=8, metavar="N",
                   help="calibration batches (of --batch-size) drawn from the training split of --data with --seed, "
                        "for data importance and compensation (default: 8)")
    g.add_argument("--ridge", type=parse_number, default=1e-3, metavar="R",
                   help="least-squares regulariser of --compensate lstsq, relative to the inputs' mean energy "
                        "(default: 1e-3)")
    g.add_argument("--round-to", type=int, metavar="N",
                   help="keep channel counts multiples of N (e.g. 8) so kernels stay fast")
    g.add_argument("--min-keep", type=parse_number, default=0.1, metavar="F",
                   help="the least fraction of every channel group that stays; 0.5 spreads the removal over "
                        "every kind of group (e.g. a transformer's width, heads and MLP) (default: 0.1)")
    g.add_argument("--allocation", choices=list(ALLOCATIONS),
                   help="how the removal spreads over the channel groups: global (scores divided by their group's "
                        "largest, one ranking across groups), global-mean (divided by the group's mean), uniform "
                        "(every group loses the same fraction) or uniform-tied (and groups of one size keep exactly "
                        "the same count). Default: global without --data, "
                        f"{CALIBRATED['allocation']} with it")
    g.add_argument("--ignore", action="append", default=[], metavar="LAYER",
                   help="never prune this layer (module name, repeatable)")
    g.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the self-check that the pruned model equals the original with the removed channels zeroed")
    g.add_argument("--latency-threads", type=int, default=1, metavar="N",
                   help="torch threads while timing inference (default: 1, for stable numbers)")
    g.add_argument("--latency-batch", type=int, default=1, metavar="N",
                   help="batch size while timing inference (default: 1)")


def add_output_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", required=required, metavar="FILE",
                   help="write the pruned model here (fxmeta model file, loads with torch.load(weights_only=True) "
                        "and fxmeta.load); a transformers model to DIR/ (or, for hf: models, any path without .pt "
                        "/ .pt2) is written as a Hugging Face save_pretrained folder")
    g.add_argument("--export", metavar="FILE.pt2",
                   help="also write a torch.export program that runs without fxmeta (torch.export.load)")
    g.add_argument("--force", action="store_true", help="overwrite output files that exist")


def add_train_args(p: argparse.ArgumentParser, epochs: int) -> None:
    g = p.add_argument_group("finetuning (needs --data)")
    g.add_argument("--data", metavar="SPEC",
                   help="training data: digits, mnist5k, fashion-mnist[:PATH], cifar10:PATH, cifar100:PATH, imagefolder:PATH, "
                        "text:PATH (a language model's text: a file or a folder, tokenised with the tokenizer in the "
                        "hf: model's folder, else as bytes) or module.path:function; without it there is no "
                        "finetuning and no accuracy / perplexity")
    g.add_argument("--image-size", type=int, metavar="N", help="resize the data's images to NxN")
    g.add_argument("--block-size", type=int, metavar="T",
                   help="text data: tokens per training sequence (default: 128)")
    g.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                   help="finetune on the KL divergence to the unpruned model's outputs (recovery by distillation) "
                        "instead of on the labels / next tokens (default: distil when a copy of the unpruned model "
                        "takes at most a quarter of the training device's free memory, the finetune is not "
                        "FSDP-sharded and the unpruned model scores better than the pruned one on validation; "
                        "--no-distill: on the labels)")
    g.add_argument("--distill-temperature", type=float, default=1.0, metavar="T",
                   help="softmax temperature of --distill (default: 1)")
    g.add_argument("--epochs", type=int, default=epochs, metavar="N",
                   help=f"finetuning epochs after channel removal (default: {epochs})")
    g.add_argument("--adapt-epochs", type=int, default=0, metavar="N",
                   help="short finetune between the metanetwork and channel removal; after a metanetwork told the "
                        "prune (--objective conditioned), on the prunability objective for that prune (default: 0)")
    g.add_argument("--bn-batches", type=int, default=20, metavar="N",
                   help="recompute the BatchNorm statistics on N training batches right after channel removal, "
                        "before finetuning; restores much of the accuracy removal costs; not after --compensate "
                        "lstsq, which refits the layers to the stored ones (default: 20; 0: off)")
    g.add_argument("--batch-size", type=int, default=128, metavar="B", help="per-process batch size (default: 128)")
    g.add_argument("--lr", type=float, default=0.01, help="peak learning rate, cosine schedule (default: 0.01)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="(default: sgd)")
    g.add_argument("--weight-decay", type=float, default=5e-4, metavar="W", help="(default: 5e-4)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="training device; auto picks CUDA when available (default: auto)")
    g.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision; auto: bf16/fp16 on CUDA, off on CPU (default: auto)")
    g.add_argument("--sharding", choices=["ddp", "fsdp"], default="ddp",
                   help="under torchrun: ddp replicates the model on every process, fsdp shards parameters, "
                        "gradients and optimizer state (torch's fully_shard, one unit per transformer block; "
                        "not with --distill or --prepare-epochs) (default: ddp)")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="data loader worker processes (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation and splits (default: 0)")
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help="checkpoint every epoch here (default: OUT.ckpt, removed after success; a given DIR is kept)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    g.add_argument("--log", "--log-file", dest="log", metavar="FILE.jsonl",
                   help="write per-epoch metrics as JSON lines (appended to on --resume); under torchrun spell it "
                        "--log-file, torchrun's own parser reads --log as an abbreviation of its options")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / per-epoch lines")


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prepare for pruning (needs --data)")
    g.add_argument("--prepare-epochs", type=int, default=0, metavar="N",
                   help="before channel removal, train N epochs on the prunability objective: the loss of the "
                        "network plus the loss of the network with the channels the prune will remove masked out. "
                        "Recommended without --metanet, e.g. 5-10 (default: 0, off)")
    g.add_argument("--prepare-speedups", metavar="X[,Y...]",
                   help="FLOPs targets whose masks the prepare stage trains, one drawn per step "
                        "(default: --speedup)")
    g.add_argument("--prepare-weight", type=parse_number, default=1.0, metavar="W",
                   help="weight of the masked network's loss (default: 1)")
    g.add_argument("--prepare-mask-every", type=int, default=0, metavar="STEPS",
                   help="recompute the mask every STEPS steps as well as at every epoch start (default: 0, "
                        "once per epoch)")
    g.add_argument("--prepare-lr", type=parse_number, metavar="LR", help="learning rate of the prepare stage (default: --lr)")
    g.add_argument("--prepare-sparsity", type=parse_number, default=0.0, metavar="D",
                   help="graded weight decay on the prunable channels during the prepare stage: D on each group's "
                        "strongest channel, growing to 16 D on its weakest; a regulariser where the network would "
                        "otherwise fit its training set, e.g. 0.01; choose it on validation (default: 0, off)")


def speedup_list(text: str | None, flag: str) -> tuple[float, ...]:
    """A comma-separated list of FLOPs targets (each >= 1); empty or None gives ()."""
    if not text:
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecError(f"{flag} wants numbers separated by commas, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v >= 1) for v in values):
        raise SpecError(f"{flag} wants finite numbers >= 1, got {text!r}")
    return values


def _prepare_config(args: argparse.Namespace):
    from ..training.prepare import PrepareConfig

    speedups = speedup_list(getattr(args, "prepare_speedups", None), "--prepare-speedups")
    config = PrepareConfig(epochs=getattr(args, "prepare_epochs", 0), speedups=speedups,
                           weight=getattr(args, "prepare_weight", 1.0), mask_every=getattr(args, "prepare_mask_every", 0),
                           lr=getattr(args, "prepare_lr", None), sparsity=getattr(args, "prepare_sparsity", 0.0))
    if not config.epochs:  # a setting of a stage that does not run would be lost silently
        # the adapt epochs after a conditioned metanetwork train with the weight, mask schedule and decay
        adapt = ("weight", "mask_every", "sparsity") if getattr(args, "adapt_epochs", 0) > 0 else ()
        default = PrepareConfig()
        given = [f"--prepare-{name.replace('_', '-')}" for name in ("speedups", "weight", "mask_every", "lr", "sparsity")
                 if getattr(config, name) != getattr(default, name) and name not in adapt]
        if given:
            raise SpecError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with "
                            "--prepare-epochs N > 0: without it no prepare stage runs")
    return config


def train_config(args: argparse.Namespace):
    from ..training.loop import TrainConfig

    check_numbers(args)
    return TrainConfig(
        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        batch_size=args.batch_size, num_workers=args.workers, device=args.device, amp=args.amp,
        sharding=args.sharding, seed=args.seed, log_path=args.log, progress=args.progress and is_main_process(),
    )


def prune_spec(args: argparse.Namespace):
    """The one PruneSpec of a command, from its flags; importance and compensation left unset take
    the library's defaults for a run with or without data (``PruneSpec.resolved``)."""
    from ..pruning.spec import PruneSpec

    importance, compensate = args.importance, getattr(args, "compensate", None)
    if not getattr(args, "data", None) and (importance in DATA_IMPORTANCE or compensate not in (None, "none")):
        wants = f"--importance {importance}" if importance in DATA_IMPORTANCE else f"--compensate {compensate}"
        raise SpecError(f"{wants} reads calibration data: give --data")
    return PruneSpec(speedup=getattr(args, "speedup", 2.0), importance=importance,
                     allocation=getattr(args, "allocation", None), round_to=getattr(args, "round_to", None),
                     min_keep=getattr(args, "min_keep", 0.1), ignore=tuple(getattr(args, "ignore", ())),
                     compensate=compensate, ridge=getattr(args, "ridge", 1e-3)).check(SpecError)


def add_calibration_data_args(p: argparse.ArgumentParser) -> None:
    """``fxmeta prune``'s data: calibration and BatchNorm recalibration, no training."""
    g = p.add_argument_group("calibration data (optional; no training)")
    g.add_argument("--data", metavar="SPEC",
                   help="data to calibrate the prune on (the training split only) and to measure accuracy before "
                        "and after: digits, mnist5k, fashion-mnist[:PATH], cifar10:PATH, cifar100:PATH, "
                        "imagefolder:PATH, text:PATH (a language model's text) or module.path:function")
    g.add_argument("--image-size", type=int, metavar="N", help="resize the data's images to NxN")
    g.add_argument("--block-size", type=int, metavar="T",
                   help="text data: tokens per calibration sequence (default: 128)")
    g.add_argument("--bn-batches", type=int, default=20, metavar="N",
                   help="recompute the BatchNorm statistics on N training batches after removal; not after "
                        "--compensate lstsq, which refits the layers to the stored ones (default: 20; 0: off)")
    g.add_argument("--batch-size", type=int, default=128, metavar="B", help="calibration batch size (default: 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of the calibration draw (default: 0)")


def transform_config(args: argparse.Namespace, *, finetune: Any = None, checkpoint_dir: str | None = None):
    from ..pipeline.transform import TransformConfig
    from ..training.loop import TrainConfig

    return TransformConfig(
        prune=prune_spec(args), calib_batches=getattr(args, "calib_batches", 8),
        check=args.check, adapt_epochs=getattr(args, "adapt_epochs", 0), bn_batches=getattr(args, "bn_batches", 0),
        prepare=_prepare_config(args),
        finetune=finetune or TrainConfig(epochs=0, device="cpu", progress=False),
        checkpoint_dir=checkpoint_dir, resume=getattr(args, "resume", False),
        latency_threads=args.latency_threads, latency_batch=args.latency_batch,
        distill=getattr(args, "distill", None), distill_temperature=getattr(args, "distill_temperature", 1.0),
    )


def stage_logs(log: str | None, stages: Sequence[str]) -> list[tuple[str, str]]:
    """The log files of the stages before the finetune (the pipeline's naming: LOG.STAGE.jsonl)."""
    if not log:
        return []
    stem, ext = os.path.splitext(log)
    return [(f"--log ({stage} stage)", f"{stem}.{stage}{ext or '.jsonl'}") for stage in stages]


def check_run_outputs(args: argparse.Namespace, inputs: list[str], checkpoint_dir: str | None = None,
                   log_stages: Sequence[str] = ()) -> None:
    """Every path this run writes, checked before any work (``fxmeta.io.paths.check_outputs``)."""
    from ..io.hf_folder import wants_folder
    from ..io.paths import check_outputs

    log = getattr(args, "log", None)
    resume = getattr(args, "resume", False)
    folder = getattr(args, "model", None) and wants_folder(args.out, args.model)  # checked by cli.hf_output
    files = [("--out", None if folder else args.out), ("--export", args.export), ("--log", log),
             *stage_logs(log, log_stages)]
    logs = [what for what, _ in files if what.startswith("--log")]
    check_outputs(files, inputs=inputs, force=args.force, dirs=[("--checkpoint-dir", checkpoint_dir)],
                  existing_ok=logs if resume else ())
    if checkpoint_dir and not resume and not args.force:
        held = [os.path.join(checkpoint_dir, *parts) for parts in
                (("run.json",), ("adapt", "last.pt"), ("prepare", "last.pt"), ("finetune", "last.pt"))]
        if any(os.path.isfile(p) for p in held):
            raise OutputExistsError(f"{checkpoint_dir} holds the checkpoints of an earlier run; pass --resume to "
                                    "continue it, or --force to start over (they are then overwritten)")


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag in range, before anything is loaded."""
    import math

    def need(name: str, ok: bool, what: str) -> None:
        value = getattr(args, name.lstrip("-").replace("-", "_"), None)
        if value is not None and not ok:
            raise SpecError(f"{name} must be {what}, got {value}")

    def val(name: str) -> Any:
        return getattr(args, name, None)

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    for name in ("lr", "prepare_lr"):
        v = val(name)
        need("--" + name.replace("_", "-"), v is None or (finite(v) and v > 0), "a finite number > 0")
    v = val("min_keep")
    need("--min-keep", v is None or (finite(v) and 0 <= v <= 1), "within [0, 1]")
    for name in ("weight_decay", "prepare_weight", "prepare_sparsity"):
        v = val(name)
        need("--" + name.replace("_", "-"), v is None or (finite(v) and v >= 0), "a finite number >= 0")
    for name in ("workers", "epochs", "adapt_epochs", "bn_batches", "prepare_epochs", "prepare_mask_every",
                 "finetune_epochs", "eval_bn_batches", "eval_finetune_epochs"):
        v = val(name)
        need("--" + name.replace("_", "-"), v is None or v >= 0, ">= 0")
    for name in ("num_classes", "in_channels", "batch_size", "image_size", "round_to", "latency_threads",
                 "latency_batch", "count", "width", "depth", "batches_per_step", "grad_batches"):
        v = val(name)
        need("--" + name.replace("_", "-"), v is None or v >= 1, ">= 1")
    v = val("ridge")
    need("--ridge", v is None or (finite(v) and v >= 0), "a finite number >= 0")
    v = val("calib_batches")
    need("--calib-batches", v is None or v >= 1, ">= 1")
    shape = val("input_shape")
    if shape is not None:
        from ..io.inputs import parse_input_shape

        parse_input_shape(shape)  # "" is an error, not the default


def load_run_data(args: argparse.Namespace):
    if not getattr(args, "data", None):
        return None
    from ..training.data import load_data

    if args.image_size is not None and args.image_size < 1:
        raise SpecError(f"--image-size must be >= 1, got {args.image_size}")
    block = getattr(args, "block_size", None)
    if block is not None and block < 2:
        raise SpecError(f"--block-size must be >= 2, got {block}")
    if args.data.partition(":")[0] != "text":
        return load_data(args.data, seed=args.seed, image_size=args.image_size)
    tokenizer, vocab = text_model_info(args.model)
    return load_data(args.data, seed=args.seed, tokenizer=tokenizer, block_size=block, vocab_size=vocab)


def text_model_info(model: str) -> tuple[Any, int | None]:
    """For text data: the tokenizer in an ``hf:`` model's folder (None: bytes) and its vocabulary size."""
    import json

    from ..training.text import folder_tokenizer

    if not model.startswith("hf:"):
        return None, None
    path = model[3:].split("@", 1)[0]  # hf:FOLDER@weights.pt: the folder holds the tokenizer
    config = path if path.endswith(".json") else os.path.join(path, "config.json")
    try:
        vocab = json.loads(open(config).read()).get("vocab_size")
    except (OSError, ValueError):
        vocab = None  # the model's loading reports a broken config
    return folder_tokenizer(path if os.path.isdir(path) else os.path.dirname(path) or "."), vocab


def load_model(args: argparse.Namespace, data) -> tuple[Any, Any]:
    """The model and an example input (``example_for``)."""
    import torch

    from ..io.files import resolve_model
    from ..io.inputs import parse_input_shape

    torch.manual_seed(args.seed if hasattr(args, "seed") else 0)  # spec-built models: reproducible weights
    if args.input_shape is not None:
        parse_input_shape(args.input_shape)  # a bad shape fails before the model is built
    loaded = resolve_model(args.model, trust=args.trust, num_classes=args.num_classes, in_channels=args.in_channels)
    x = example_for(args, loaded, data.input_shape if data is not None else None)
    return capture_model(loaded, x, getattr(args, "capture", "auto")), x


def _save_spec(loaded: Any, model_arg: str) -> tuple[str, dict]:
    """Spec that rebuilds the architecture of the network that was pruned (see ``LoadedModel.save_args``)."""
    return loaded.spec, dict(loaded.spec_kwargs)


# ---------------------------------------------------------------------------- table


def si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def render_table(title: str, metrics: dict[str, Any], stages: list[tuple[str, float]]) -> list[Table]:
    """The before / after table and the time-per-stage table."""
    before, after = metrics["before"], metrics["after"]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("change", justify="right")
    if before.get("perplexity") is not None:
        ratio = after["perplexity"] / before["perplexity"]
        table.add_row("test perplexity", f"{before['perplexity']:.3f}", f"{after['perplexity']:.3f}", f"{ratio:.3f}x")
        if metrics.get("removed_perplexity") is not None:
            table.add_row("  right after removal", "", f"{metrics['removed_perplexity']:.3f}", "")
        table.add_row("next-token accuracy", pct(before["accuracy"]), pct(after["accuracy"]),
                      f"{100 * (after['accuracy'] - before['accuracy']):+.2f} pt")
    elif before["accuracy"] is not None:
        delta = 100 * (after["accuracy"] - before["accuracy"])
        table.add_row("test accuracy", pct(before["accuracy"]), pct(after["accuracy"]), f"{delta:+.2f} pt")
        table.add_row("  right after removal", "", pct(metrics["removed_accuracy"]), "")
        if metrics.get("recalibrated_accuracy") is not None:
            table.add_row("  + BatchNorm recalibration", "", pct(metrics["recalibrated_accuracy"]), "")
    else:
        table.add_row("test accuracy", "-", "-", "no data")
    table.add_row("FLOPs", si(before["flops"]), si(after["flops"]), f"{metrics['flops_speedup']:.2f}x fewer")
    table.add_row("parameters", si(before["params"]), si(after["params"]), f"{100 * metrics['params_ratio']:.1f}% kept")
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


def print_report(title: str, metrics: dict[str, Any], stages: list[tuple[str, float]]) -> None:
    if not is_main_process():
        return
    out = Console(highlight=False, emoji=False)
    for table in render_table(title, metrics, stages):
        out.print(table)
    for note in metrics.get("notes", []):
        out.print(f"note: {note}")
