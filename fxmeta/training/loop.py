"""Training and finetuning: one loop for CPU and CUDA.

AMP (bf16 / fp16) and channels_last on CUDA, ``torchrun`` DDP (gloo on CPU, nccl on CUDA) or
FSDP (``TrainConfig.sharding="fsdp"``: torch's ``fully_shard``), an atomic checkpoint every
epoch with exact resume, a JSON-lines metrics log and a rich progress bar. The best epoch is
picked on the validation split; test is evaluated once, on the returned weights.

Multi-process pieces (the process group, DDP buffer averaging, FSDP's sharded copy and its
full-state checkpoints) live in ``fxmeta.training.distributed``. Under FSDP the module passed
in stays a plain module where it is and receives the trained weights at the end.

Exact resume: every epoch's randomness (data order, augmentation, dropout) is a pure
function of (seed, epoch, rank), and so is the learning rate. A run stopped after any
epoch and resumed therefore ends with the same weights as an uninterrupted run, also
under DDP, without saving per-rank RNG states. Note that training reseeds torch's global
RNG at every epoch.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import SpecError, TrainingDivergedError
from ..io.saving import atomic_save
from ..pruning.calibration import logits_of
from .data import DataSplits, Loaders, make_loaders
from .distributed import (
    DistContext,
    average_buffers,
    distributed_context,
    full_state,
    fully_shard_model,
    gather_optimizer_state,
    grad_scaler,
    load_states,
    missing_steps,
    reduce_sums,
    reshard,
)

_CHECKPOINT = "last.pt"
_FORMAT = 1


@dataclass
class TrainConfig:
    """Hyper-parameters and run settings; defaults are the usual CIFAR recipe."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # "sgd" | "adamw"
    schedule: str = "cosine"  # "cosine" | "step"
    milestones: tuple[int, ...] = ()  # step schedule; empty means 50% and 75% of epochs
    gamma: float = 0.1
    label_smoothing: float = 0.0
    batch_size: int = 128
    num_workers: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: str = "auto"  # "auto" | "off" | "bf16" | "fp16"; auto: bf16 (or fp16) on CUDA, off on CPU
    channels_last: bool = False  # CUDA only
    seed: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    log_path: str | None = None
    progress: bool = True
    # "best": the best validation epoch's weights; "last": the last epoch's; "best-or-start": the best
    # of the network as given and every epoch (a finetune then never returns a network worse on
    # validation than the one it was given: a pruned network that already fits its training set can
    # only lose in a finetune, and this keeps it as it was)
    keep: str = "best"
    # under torchrun: "ddp" replicates the model, "fsdp" shards parameters, gradients and optimizer
    # state with torch's fully_shard (plain loss only, no Objective); a single process trains unsharded
    sharding: str = "ddp"

    def __post_init__(self) -> None:
        choices = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine", "step"),
                   "amp": ("auto", "off", "bf16", "fp16"), "keep": ("best", "last", "best-or-start"),
                   "sharding": ("ddp", "fsdp")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise SpecError(f"device={self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.epochs < 0 or self.batch_size < 1:
            raise SpecError(f"need epochs >= 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
        for name, low, strict in (("lr", 0.0, False), ("weight_decay", 0.0, False), ("momentum", 0.0, False),
                                  ("gamma", 0.0, False), ("label_smoothing", 0.0, False)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= low if strict else v < low):
                raise SpecError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {v}")
        if self.num_workers < 0:
            raise SpecError(f"num_workers (--workers) must be >= 0, got {self.num_workers}")
        self.milestones = tuple(self.milestones)


@dataclass
class TrainResult:
    """The model with the best-validation weights loaded (eval mode) and how it got there."""

    model: nn.Module
    best_epoch: int  # 1-based; 0 when no epoch ran or, with keep="best-or-start", none beat the start
    best_val_acc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    test: dict | None = None  # evaluate() of the returned weights on the test split


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """"auto" means CUDA when available; under DDP each process takes its LOCAL_RANK GPU."""
    ctx = ctx or DistContext()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"device={name!r} but CUDA is not available; use device='cpu' or 'auto'")
    if name == "cuda":
        return torch.device("cuda", ctx.local_rank if ctx.distributed else torch.cuda.current_device())
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise SpecError("amp='fp16' needs CUDA; use amp='bf16' or 'off' on CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def lr_factor(epoch: int, config: TrainConfig) -> float:
    """Learning-rate multiplier for a 0-based epoch: a pure function, so resume is exact."""
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(config.epochs, 1)))
    milestones = set(config.milestones or (config.epochs // 2, config.epochs * 3 // 4))
    return config.gamma ** sum(epoch >= m for m in milestones)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def flat_logits(out: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, classes)`` logits in float32 and ``(rows,)`` targets: a classifier's batch as it is,
    a language model's blocks position by position (``y`` holds each position's next token), so
    one cross-entropy is the classification loss and the next-token loss alike. ``out`` may be a
    model output object (Hugging Face): its logits are used."""
    logits = logits_of(out)
    return logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)


def score_of(metrics: dict[str, float]) -> float:
    """What picks the best epoch: accuracy for a classifier, minus the loss for a language model
    (``evaluate`` reports perplexity for those)."""
    return -metrics["loss"] if "ppl" in metrics else metrics["acc"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu", *,
             amp: torch.dtype | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the loader, summed across ranks when sharded.

    For token blocks (targets with a sequence dim: a language model) the means are per token,
    ``acc`` is next-token accuracy, and ``ppl`` (perplexity, ``exp(loss)``) and, when the data
    records its bytes per token, ``bpb`` (bits per UTF-8 byte) are added."""
    device = torch.device(device)
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct
    count, sequence, x = 0, False, None
    # FSDP all-gathers parameters inside every forward: a rank with fewer batches than another
    # runs as many extra (uncounted) forwards at the end, or the other ranks would wait forever
    missing = missing_steps(model, loader, device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        logits, target = flat_logits(out, y)
        loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        sums += torch.stack([loss.double(), (logits.argmax(1) == target).sum().double()])
        count += target.numel()
        sequence = sequence or y.dim() > 1
    for _ in range(missing):
        if x is None:
            x = torch.utils.data.default_collate([loader.dataset[0]])[0].to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x)
    reshard(model)
    loss_sum, correct, _ = reduce_sums(sums, count, loader)
    result = {"acc": correct, "loss": loss_sum}
    if sequence:
        result["ppl"] = math.exp(min(loss_sum, 700.0))
        per_token = getattr(loader.dataset, "bytes_per_token", None)
        if per_token:
            result["bpb"] = loss_sum / math.log(2) / per_token
    return result


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: DataLoader, batches: int = 20,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``batches`` training batches, in place.

    Removing channels changes what each BatchNorm sees (a residual sum loses terms), so the
    statistics stored from training no longer match and a pruned network can sit at chance
    accuracy until they are recomputed (figures in benchmarks/results/). Only the
    BatchNorms run in training mode (dropout stays off); their statistics become the plain
    average over the batches. Returns ``model`` in eval mode.
    """
    device = torch.device(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not norms or batches < 1:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    try:
        for index, (x, _) in enumerate(loader):
            if index >= batches:
                break
            model(x.to(device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


class Objective(Protocol):
    """A training loss other than plain cross-entropy (e.g. ``fxmeta.training.prepare``'s).

    ``wrap`` gives the module the loop runs (and wraps in DDP) in place of the model;
    ``begin_epoch`` / ``before_step`` run before each epoch and each step, after the
    epoch's RNG is seeded; ``loss`` turns the wrapped module's output into the loss and
    the logits that accuracy is counted on. An objective may also define
    ``after_backward()``, called between backward and the optimizer step (gradient
    regularisers such as DepGraph's sparsity learning; the gradients are unscaled first
    when fp16 loss scaling is on).
    """

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def begin_epoch(self, epoch: int) -> None: ...

    def before_step(self, step: int) -> None: ...

    def loss(self, out: Any, y: torch.Tensor, criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]: ...


def _train_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, criterion: nn.Module, device: torch.device,
                 amp: torch.dtype | None, channels_last: bool, bar: Any,
                 objective: Objective | None = None) -> dict[str, float]:
    net.train()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct
    count = 0
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if objective is not None:
            objective.before_step(step)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(x)
            if objective is None:
                loss = criterion(*flat_logits(out, y))
            else:
                loss, out = objective.loss(out, y, criterion)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if objective is not None and hasattr(objective, "after_backward"):
            scaler.unscale_(optimizer)
            objective.after_backward()
        scaler.step(optimizer)
        scaler.update()
        # accumulate on device: no host sync per step
        logits, target = flat_logits(out, y)
        sums += torch.stack([loss.detach().double() * target.numel(), (logits.argmax(1) == target).sum().double()])
        count += target.numel()
    loss_sum, correct, samples = reduce_sums(sums, count, loader)
    return {"loss": loss_sum, "acc": correct, "samples": samples}


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


# ------------------------------------------------------------------------------ FSDP


@dataclass
class _Progress:
    """Everything a checkpoint must restore besides model / optimizer / scaler."""

    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_weights: dict | None = None
    best_score: float = -math.inf  # score_of(the best epoch's validation metrics)
    history: list[dict] = field(default_factory=list)


def _save_checkpoint(path: Path, model_state: dict, optimizer_state: dict,
                     scaler: torch.amp.GradScaler, run: _Progress, config: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({
        "format": _FORMAT, "epoch": run.epoch, "model": model_state,
        "optimizer": optimizer_state, "scaler": scaler.state_dict(),
        # the schedule is lr_factor(epoch, config): its whole state is the epoch
        "scheduler": {"schedule": config.schedule, "epoch": run.epoch},
        "best": {"epoch": run.best_epoch, "val_acc": run.best_val_acc, "weights": run.best_weights,
                 "score": run.best_score},
        "history": run.history, "config": asdict(config),
    }, path, force=True)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, device: torch.device) -> _Progress:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        load_states(model, optimizer, ckpt["model"], ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        best = ckpt["best"]
    except Exception as exc:
        raise SpecError(f"cannot resume from {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
                        "delete it or start without resume") from None
    weights = best["weights"] and _cpu_copy(best["weights"])
    return _Progress(ckpt["epoch"], best["epoch"], best["val_acc"], weights, history=list(ckpt["history"]),
                     best_score=best.get("score", best["val_acc"]))


class _JsonLog:
    """Append-only JSON-lines metrics; a fresh run starts a fresh file."""

    def __init__(self, path: str | None, append: bool) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _check_finite(state: dict[str, torch.Tensor], loss: float, epoch: int, lr: float, kept: Path | None) -> None:
    """Stop a diverged run: a non-finite loss or weights are never trained on, saved or returned."""
    what = None
    if not math.isfinite(loss):
        what = f"the training loss became {loss}"
    else:
        bad = next((k for k, v in state.items()
                    if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            what = f"the weights became NaN or infinite ({bad})"
    if what is None:
        return
    where = (f"; the checkpoint of the last finite epoch ({epoch - 1}) is kept in {kept}" if kept and kept.is_file()
             else "")
    raise TrainingDivergedError(f"training diverged in epoch {epoch}: {what} at learning rate {lr:.3g}; "
                                f"lower --lr (or --weight-decay) and start again; no model was saved{where}")


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), transient=True, disable=not enabled)


def _tracked(bar: Any, loader: DataLoader, description: str) -> Iterator:
    """Iterate ``loader`` with a bar that disappears when the epoch is done."""
    task = bar.add_task(description, total=len(loader))
    for item in loader:
        yield item
        bar.advance(task)
    bar.remove_task(task)


def train(model: nn.Module, data: DataSplits | Loaders, config: TrainConfig | None = None,
          objective: Objective | None = None) -> TrainResult:
    """Train ``model`` in place and return it with the weights of its best validation epoch
    (``config.keep="last"``: of its last epoch; "best-or-start": or the weights it was given, epoch 0,
    if no epoch beats them); ``objective`` replaces the cross-entropy.

    ``config.sharding="fsdp"`` under torchrun trains a sharded copy (see the module doc) and
    loads its weights into ``model`` at the end; in a single process it trains as "ddp" does."""
    config = config or TrainConfig()
    started = time.perf_counter()
    with distributed_context(config.device) as ctx:
        device = resolve_device(config.device, ctx)
        amp = resolve_amp(config.amp, device)
        channels_last = config.channels_last and device.type == "cuda"
        sharded = config.sharding == "fsdp" and ctx.distributed
        if sharded and objective is not None:
            raise SpecError("sharding='fsdp' trains on the plain loss; an objective (--distill, the prepare "
                            "stage) runs under sharding='ddp'")
        loaders = data if isinstance(data, Loaders) else make_loaders(
            data, config.batch_size, num_workers=config.num_workers, seed=config.seed,
            distributed=ctx.distributed, pin_memory=device.type == "cuda")
        if sharded:
            trained = fully_shard_model(model, device, channels_last)  # the module whose weights train
        else:
            trained = model.to(device)
            if channels_last:
                model.to(memory_format=torch.channels_last)
        optimizer = _make_optimizer(trained, config)
        scaler = grad_scaler(device, amp, sharded)
        ckpt_path = Path(config.checkpoint_dir) / _CHECKPOINT if config.checkpoint_dir else None
        resumed = bool(config.resume and ckpt_path and ckpt_path.is_file())
        run = _load_checkpoint(ckpt_path, trained, optimizer, scaler, device) if resumed else _Progress()
        net = trained if objective is None else objective.wrap(model).to(device)
        if ctx.distributed and not sharded:
            ids = [device.index] if device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        log = _JsonLog(config.log_path if ctx.is_main else None, append=resumed)
        say = print if (config.progress and ctx.is_main) else (lambda *a, **k: None)
        if resumed:
            say(f"resuming from {ckpt_path} after epoch {run.epoch}")
        if config.keep == "best-or-start" and run.epoch == 0 and config.epochs > 0:  # the start is a candidate
            start = evaluate(trained, loaders.val, device, amp=amp)
            run.best_val_acc, run.best_score = start["acc"], score_of(start)
            run.best_weights = _cpu_copy(full_state(trained))
            log.write({"epoch": 0, "val_loss": start["loss"], "val_acc": start["acc"]})
        with _progress_bar(config.progress and ctx.is_main and sys.stderr.isatty()) as bar:
            for epoch in range(run.epoch, config.epochs):
                t0 = time.perf_counter()
                lr = config.lr * lr_factor(epoch, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(_epoch_seed(config.seed, epoch, ctx.rank))
                if loaders.train.generator is not None:
                    loaders.train.generator.manual_seed(config.seed + epoch)
                if isinstance(loaders.train.sampler, DistributedSampler):
                    loaders.train.sampler.set_epoch(epoch)
                if objective is not None:
                    objective.begin_epoch(epoch)
                steps = _tracked(bar, loaders.train, f"epoch {epoch + 1}/{config.epochs}")
                fit = _train_epoch(net, loaders.train, optimizer, scaler, criterion, device, amp,
                                   channels_last, steps, objective)
                if ctx.distributed:
                    average_buffers(trained, ctx.world_size)
                state = full_state(trained)
                _check_finite(state, fit["loss"], epoch + 1, lr, ckpt_path if run.epoch > 0 else None)
                val = evaluate(trained, loaders.val, device, amp=amp)
                run.epoch = epoch + 1
                record = {"epoch": run.epoch, "lr": lr, "train_loss": fit["loss"], "train_acc": fit["acc"],
                          "samples": fit["samples"], "val_loss": val["loss"], "val_acc": val["acc"],
                          **({"val_ppl": val["ppl"]} if "ppl" in val else {}),
                          "seconds": round(time.perf_counter() - t0, 3)}
                keep = run.epoch == config.epochs if config.keep == "last" else score_of(val) > run.best_score
                if keep:
                    run.best_epoch, run.best_val_acc, run.best_score = run.epoch, val["acc"], score_of(val)
                    run.best_weights = _cpu_copy(state)
                run.history.append(record)
                log.write(record)
                quality = f"ppl {val['ppl']:.3f}" if "ppl" in val else f"acc {val['acc']:.4f}"
                say(f"epoch {run.epoch}/{config.epochs}  lr {lr:.4g}  train loss {fit['loss']:.4f} "
                    f"acc {fit['acc']:.4f}  val loss {val['loss']:.4f} {quality}  "
                    f"({record['seconds']:.1f}s)")
                if ckpt_path:
                    optimizer_state = gather_optimizer_state(trained, optimizer)  # a collective under FSDP
                    if ctx.is_main:
                        _save_checkpoint(ckpt_path, state, optimizer_state, scaler, run, config)
        if sharded:  # the plain module takes the trained weights
            if run.best_weights is None:
                run.best_weights = _cpu_copy(full_state(trained))
            model.to(device)
            if channels_last:
                model.to(memory_format=torch.channels_last)
        if run.best_weights is not None:
            model.load_state_dict(run.best_weights)
        test = evaluate(model, loaders.test, device, amp=amp)
        log.write({"final": True, "best_epoch": run.best_epoch, "best_val_acc": run.best_val_acc,
                   "test_acc": test["acc"], "test_loss": test["loss"]})
        if "ppl" in test:
            say(f"best epoch {run.best_epoch}: test perplexity {test['ppl']:.3f} (loss {test['loss']:.4f})")
        else:
            say(f"best epoch {run.best_epoch}: val acc {run.best_val_acc:.4f}, test acc {test['acc']:.4f}")
    return TrainResult(model, run.best_epoch, max(run.best_val_acc, 0.0), run.history,
                       time.perf_counter() - started, test)
