"""The whole pipeline as one library call: measure, lower, metanetwork, raise, (adapt),
remove channels, finetune, measure again.

``transform(model, example_input, TransformConfig(...), data=splits)`` returns the
pruned ``fx.GraphModule``, its pruning plan and before / after measurements (FLOPs,
parameters, latency, accuracy) with the time each stage took. Without a metanetwork the
channels are chosen by importance alone; without data there is no finetuning and no
accuracy. Under ``torchrun`` every rank runs the same deterministic pipeline and the
finetuning runs as DDP; only rank 0 measures latency and writes files.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
from torch import nn

from ..capture import is_program, trace
from ..errors import InputShapeError, SpecError
from ..pruning.flops import count_flops, count_params
from ..pruning.spec import DATA_IMPORTANCE, PruneSpec, recalibrates
from ..tracing import as_tuple, eval_mode
from ..training.data import DataSplits, Loaders, calibration_set, make_loaders
from ..training.loop import TrainConfig, distributed_context, evaluate, recalibrate_bn, resolve_device, score_of, train
from ..training.prepare import PrepareConfig
from .latency import Latency, compare_latency
from .stages import Adapt, Prepare, State, prune_stages, run_stages

_RUN_FILE = "run.json"


@dataclass
class TransformConfig:
    """What to prune, how, and how to finetune.

    ``prune`` is the :class:`~fxmeta.pruning.spec.PruneSpec` every stage that selects, masks or
    removes channels works from (the prepare stage, a conditioned metanetwork, the removal);
    ``calib_batches`` training batches (of ``finetune.batch_size``, a fixed seeded draw) are the
    calibration data of a data-aware spec (taylor / activation importance, compensation).
    ``metanet`` is a Metanet, the path of a saved one, or None (importance pruning
    alone). ``finetune`` holds the training settings; ``finetune.epochs`` epochs run
    after channel removal and ``adapt_epochs`` between the metanetwork and removal
    (both need data; after a metanetwork conditioned on the prune, the adapt epochs
    train for that prune, on the prunability objective with the channels it was told, as
    ``fxmeta.prepare``: plain epochs would train the channels about to go).
    ``prepare.epochs`` epochs of the prunability objective run right before removal
    (``fxmeta.prepare``; its targets default to ``speedup``, its lr to the finetune's).
    ``bn_batches`` training batches recompute the BatchNorm statistics
    right after removal, before the finetune (0: off; see ``train.recalibrate_bn``), unless the
    prune refit the weights to the stored statistics (``fxmeta.pruning.spec.recalibrates``).
    Checkpoints go to ``checkpoint_dir/{adapt,prepare,finetune}``; ``resume`` continues
    from them. ``distill``: the finetune trains the pruned network on the KL divergence to the
    original network's outputs at ``distill_temperature`` (``fxmeta.training.distill``) instead of
    on the labels / next tokens; None (the default) distils when the original's copy fits the
    training device (``distill.teacher_fits``), the finetune is not FSDP-sharded and the original
    scores better than the pruned network on validation (a teacher no better than its student
    has nothing to teach). On validation, distillation recovered better than, or level with,
    the plain finetune on five of the six families measured, a prepared network within a point
    of its teacher included, also at equal wall time; on digits ResNet56s it was mixed
    (docs/results.md).
    """

    prune: PruneSpec = field(default_factory=PruneSpec)
    calib_batches: int = 8
    check: bool = True
    metanet: Any = None
    adapt_epochs: int = 0
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    bn_batches: int = 20
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10))
    checkpoint_dir: str | None = None
    resume: bool = False
    latency_threads: int = 1
    latency_batch: int = 1
    distill: bool | None = None
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.prune, PruneSpec):
            raise SpecError(f"prune must be a PruneSpec, got {type(self.prune).__name__}")
        if self.calib_batches < 1:
            raise SpecError(f"calibration batches must be >= 1, got {self.calib_batches}")
        if isinstance(self.prune.importance, str) and self.prune.importance in DATA_IMPORTANCE:
            if self.prepare.epochs > 0:
                raise SpecError(f"the prepare stage trains for a prune by weight importance (l2, l1, random), not "
                                f"{self.prune.importance!r}: drop --prepare-epochs or use --importance l2")
            if self.metanet is not None:
                raise SpecError(f"a metanetwork rewrites for a prune by weight importance (l2, l1, random), not "
                                f"{self.prune.importance!r}: drop --metanet or use --importance l2")
        if self.adapt_epochs < 0:
            raise SpecError(f"adapt epochs must be >= 0, got {self.adapt_epochs}")
        if self.bn_batches < 0:
            raise SpecError(f"BatchNorm recalibration batches must be >= 0, got {self.bn_batches}")
        if self.latency_threads < 1 or self.latency_batch < 1:
            raise SpecError("latency threads and batch must be >= 1")
        if self.resume and not self.checkpoint_dir:
            raise SpecError("resume needs a checkpoint directory (--checkpoint-dir)")
        if getattr(self.finetune, "sharding", "ddp") == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and (
                self.distill or self.prepare.epochs > 0 or self.adapt_epochs > 0):
            raise SpecError("--sharding fsdp trains the plain objective only: drop --distill, --prepare-epochs and "
                            "--adapt-epochs, or use --sharding ddp")
        if not (self.distill_temperature > 0 and self.distill_temperature < float("inf")):
            raise SpecError(f"the distillation temperature must be a positive number, got {self.distill_temperature}")

    @property
    def speedup(self) -> float:
        return self.prune.speedup


@dataclass
class Measurement:
    """One model's cost and quality; ``accuracy`` (next-token accuracy for a language model) and
    ``perplexity`` (language models only) are on the test split (None without data)."""

    flops: int
    params: int
    latency: Latency | None = None
    accuracy: float | None = None
    perplexity: float | None = None


@dataclass
class TransformResult:
    """The pruned module, its plan (plain data for ``fxmeta.io.save``) and how it compares."""

    module: fx.GraphModule
    plan: Any
    before: Measurement
    after: Measurement
    removed_accuracy: float | None  # right after channel removal, before finetuning
    stages: list[tuple[str, float]]
    notes: list[str]
    finetune_best_epoch: int | None = None
    recalibrated_accuracy: float | None = None  # after removal and BatchNorm recalibration
    removed_perplexity: float | None = None  # a language model's, right after channel removal
    finetune_objective: str | None = None  # "distill" or "labels"; None: no finetune

    @property
    def speedup(self) -> float:
        """Measured FLOPs ratio, original / pruned."""
        return self.before.flops / max(self.after.flops, 1)

    @property
    def latency_speedup(self) -> float | None:
        if self.before.latency is None or self.after.latency is None:
            return None
        return self.before.latency.median_ms / max(self.after.latency.median_ms, 1e-9)

    def metrics(self) -> dict[str, Any]:
        """Plain-data summary stored in the output file and printed as a table."""
        return {
            "before": asdict(self.before), "after": asdict(self.after),
            "removed_accuracy": self.removed_accuracy, "recalibrated_accuracy": self.recalibrated_accuracy,
            "removed_perplexity": self.removed_perplexity,
            "flops_speedup": self.speedup,
            "latency_speedup": self.latency_speedup, "params_ratio": self.after.params / max(self.before.params, 1),
            "finetune_best_epoch": self.finetune_best_epoch, "finetune_objective": self.finetune_objective,
            "stages": {name: round(sec, 3) for name, sec in self.stages}, "notes": list(self.notes),
        }


class StageTimer:
    """Wall time per named stage, in order; a stage entered twice accumulates."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.report = report

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.report:
            self.report(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def items(self) -> list[tuple[str, float]]:
        return list(self.seconds.items())


# ------------------------------------------------------------------------- checks


def check_model_fits(model: nn.Module, example_input: Any, data: DataSplits | None = None, *,
                     name: str = "the model", hint: str | None = None) -> None:
    """Fail early, in one line, when the model does not run on the example input or its
    outputs do not match the data's classes; ``hint`` replaces the default what-to-do."""
    shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else None
    if data is not None and shape is not None and shape[1:] != tuple(data.input_shape):
        raise InputShapeError(
            f"input shape {','.join(map(str, shape))} does not fit the data's samples "
            f"{'x'.join(map(str, data.input_shape))}; drop --input-shape or make it 1,{','.join(map(str, data.input_shape))}")
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(*as_tuple(example_input))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the input does not fit
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        weight = next((p for p in model.parameters() if p.is_floating_point()), None) \
            if isinstance(model, nn.Module) else None
        x0 = example_input if isinstance(example_input, torch.Tensor) else None
        if hint is None and weight is not None and x0 is not None and x0.is_floating_point() and x0.dtype != weight.dtype:
            hint = (f"the input is {str(x0.dtype).replace('torch.', '')} and the weights are "
                    f"{str(weight.dtype).replace('torch.', '')}: drop --input-dtype (or use the weights' dtype)")
        hint = hint or (f"build it with --in-channels {data.in_channels}" if data is not None
                        else "pass a fitting --input-shape")
        raise InputShapeError(f"{name} does not run on an input of shape {shape} "
                              f"({type(exc).__name__}: {text}); {hint}") from exc
    if data is None:
        return
    if data.task == "causal-lm":
        from ..pruning.calibration import logits_of

        try:
            logits = logits_of(out)
        except Exception:  # noqa: BLE001 - no logits to find: say what it returned
            logits = None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            raise InputShapeError(f"{name} returns {_describe(out)}; a language model on text data must return "
                                  "(batch, tokens, vocabulary) logits")
        if logits.shape[-1] < data.num_classes:
            raise InputShapeError(f"{name} has a vocabulary of {logits.shape[-1]} but the text is tokenised into "
                                  f"{data.num_classes} ids")
        return
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputShapeError(f"{name} returns {_describe(out)}; finetuning needs (batch, classes) logits")
    if out.shape[1] != data.num_classes:
        raise InputShapeError(f"{name} has {out.shape[1]} outputs but the data has {data.num_classes} classes; "
                              f"build it with --num-classes {data.num_classes}")


def _describe(out: Any) -> str:
    return f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"


def _run_record(config: TransformConfig, spec: PruneSpec, extra: dict[str, Any]) -> dict[str, Any]:
    """What decides the pruned network before finetuning (``spec``: the resolved prune): a resumed
    run must match it."""
    metanet = config.metanet
    default = PruneSpec().resolved(with_data=False)
    importance = spec.importance if isinstance(spec.importance, str) else "custom"
    return {
        "speedup": spec.speedup, "importance": importance, "round_to": spec.round_to,
        "ignore": list(spec.ignore), "adapt_epochs": config.adapt_epochs, "seed": config.finetune.seed,
        "prepare": asdict(config.prepare),
        # only when set: the records of runs made before they existed stay resumable
        **({"min_keep": spec.min_keep} if spec.min_keep != default.min_keep else {}),
        **({"allocation": spec.allocation} if spec.allocation != default.allocation else {}),
        **({"compensate": spec.compensate, "ridge": spec.ridge} if spec.compensate != default.compensate else {}),
        **({"calib_batches": config.calib_batches} if spec.needs_data else {}),
        **({"distill_temperature": config.distill_temperature} if config.distill else {}),
        "metanet": os.path.abspath(os.fspath(metanet)) if isinstance(metanet, (str, os.PathLike)) else
        (None if metanet is None else type(metanet).__name__), **extra,
    }


def _check_resume(folder: Path, record: dict[str, Any], resume: bool, is_main: bool) -> None:
    path = folder / _RUN_FILE
    record = json.loads(json.dumps(record))  # as it reads back: tuples are lists there
    if resume and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read {path} ({exc}); delete {folder} or drop --resume") from None
        diff = [f"{k}: {old.get(k)!r} then, {record.get(k)!r} now" for k in record if old.get(k) != record.get(k)]
        if diff:
            raise SpecError(f"the checkpoints in {folder} belong to another run ({'; '.join(diff[:3])}); "
                            "drop --resume or use another --checkpoint-dir")
    if is_main:
        from ..io.saving import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(record, indent=1, sort_keys=True), path, force=True)


# ----------------------------------------------------------------------- pipeline


def _measure(model: nn.Module, x: Any, loaders: Loaders | None, device: torch.device) -> Measurement:
    """FLOPs, parameters and test accuracy; latency is timed later, for both models at once."""
    flops, params = count_flops(model, x), count_params(model)
    scores: dict[str, float] = {}
    if loaders is not None:
        model.to(device)
        scores = evaluate(model, loaders.test, device)
    return Measurement(flops, params, None, scores.get("acc"), scores.get("ppl"))


def _stage_config(config: TransformConfig, stage: str, epochs: int, lr: float | None = None) -> TrainConfig:
    base = config.finetune if lr is None else replace(config.finetune, lr=lr)
    log = base.log_path
    if log and stage != "finetune":
        stem, ext = os.path.splitext(log)
        log = f"{stem}.{stage}{ext or '.jsonl'}"
    folder = os.path.join(config.checkpoint_dir, stage) if config.checkpoint_dir else None
    # the finetune after the prune keeps the pruned network itself if no epoch beats it on validation
    keep = "best-or-start" if stage == "finetune" and base.keep == "best" else base.keep
    return replace(base, epochs=epochs, checkpoint_dir=folder, resume=config.resume, log_path=log, keep=keep)


def _plain_module(model: nn.Module) -> tuple[nn.Module, bool]:
    """A torch.export module refuses ``.eval()``; a plain GraphModule over its graph does not.
    Returns the module to work on and whether it came from torch.export."""
    try:
        model.eval()
        return model, False
    except NotImplementedError:
        return fx.GraphModule(model, model.graph), True


def _stages(config: TransformConfig, spec: PruneSpec, data: DataSplits | None, loaders: Loaders | None,
            calibration: Any, notes: list[str]) -> list[Any]:
    """The transform's stages up to the pruned network (``fxmeta.pipeline.stages.prune_stages``):
    the training ones only with data."""
    batches: list[Any] = []  # a conditioned metanetwork's gradient input
    metanet = config.metanet
    if metanet is not None and data is not None:
        if isinstance(metanet, (str, os.PathLike)):
            from ..metanet.files import load_metanet_file
            metanet = load_metanet_file(metanet)
        if getattr(metanet, "conditioned", False):
            batches = calibration_set(data.train, metanet.config.condition_batches, config.finetune.batch_size,
                                      seed=config.finetune.seed)
    adapt = prepare_stage = None
    if loaders is not None and config.metanet is not None and config.adapt_epochs > 0:
        adapt = Adapt(loaders, _stage_config(config, "adapt", config.adapt_epochs), config.prepare)
    p = config.prepare
    if loaders is not None and p.epochs > 0:
        prepare_stage = Prepare(loaders, _stage_config(config, "prepare", p.epochs, p.lr), p)
    elif p.epochs > 0:
        notes.append("no data given: the prepare stage is skipped")
    return prune_stages(metanet=metanet, batches=batches, adapt=adapt, prepare_stage=prepare_stage,
                        calibration=calibration, check=config.check)


def _finetune_distills(config: TransformConfig, model: nn.Module, pruned: nn.Module, loaders: Loaders,
                       device: torch.device, ctx: Any, notes: list[str]) -> bool:
    """Whether the finetune distils from ``model`` into ``pruned`` (``TransformConfig.distill``;
    None decides by memory and validation score, the same on every rank)."""
    if config.distill is not None:
        return config.distill
    if config.finetune.sharding == "fsdp" and ctx.distributed:
        notes.append("finetune on the labels: an FSDP-sharded finetune trains the plain objective")
        return False
    from ..training.distill import teacher_fits

    fits, figures = teacher_fits(model, device)
    if ctx.distributed:  # every rank trains the same objective
        flag = torch.tensor([int(fits)], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        fits = bool(flag.item())
    if not fits:
        notes.append(f"finetune on the labels: a teacher copy would not fit ({figures}; --distill forces it)")
        return False
    model.to(device)
    teacher, student = evaluate(model, loaders.val, device), evaluate(pruned, loaders.val, device)
    model.cpu()
    if score_of(teacher) <= score_of(student):
        notes.append(f"finetune on the labels: the unpruned network is no better on validation than the pruned one "
                     f"({_score(teacher)} vs {_score(student)}; --distill forces distillation)")
        return False
    notes.append(f"finetune by distillation from the unpruned network ({_score(teacher)} vs {_score(student)} on "
                 f"validation; {figures}; --no-distill: on the labels)")
    return True


def _score(metrics: dict[str, float]) -> str:
    """What ``score_of`` reads in ``evaluate``'s metrics, as a person reads it."""
    return f"loss {metrics['loss']:.3f}" if "ppl" in metrics else f"{100 * metrics['acc']:.1f} %"


def transform(
    model: nn.Module,
    example_input: Any,
    config: TransformConfig | None = None,
    *,
    data: DataSplits | None = None,
    timer: StageTimer | None = None,
    run_info: dict[str, Any] | None = None,
) -> TransformResult:
    """Prune ``model`` to ``config.speedup`` x fewer FLOPs and finetune it on ``data``.

    ``model``'s weights are left as they are; it is put in eval mode, on the CPU. It may be
    a torch.export program (captured with ``fxmeta.capture.trace``).

    ``timer`` collects the wall time of each stage (pass one to add your own stages
    such as loading and saving); ``run_info`` is extra plain data that identifies the
    run (e.g. the model spec) and must match when resuming from checkpoints.
    """
    config = config or TransformConfig()
    # a prepare stage or a metanetwork trains / rewrites for a weight-importance prune: that is the default then
    spec = config.prune.resolved(with_data=data is not None,
                                 prepare=config.prepare.epochs > 0 or config.metanet is not None)
    if is_program(model):  # a torch.export program: its captured torch-level graph is the model
        model = trace(model, example_input)
    model, exported = _plain_module(model)
    timer = timer or StageTimer()
    notes: list[str] = []
    if data is None:
        notes.append("no data given: finetuning and accuracy skipped")
    if config.metanet is None:
        notes.append("no metanetwork: channels chosen by importance alone")
    train_device = config.finetune.device
    with distributed_context(train_device if data is not None else "cpu") as ctx:
        device = resolve_device(train_device, ctx)
        if config.checkpoint_dir and data is not None:
            _check_resume(Path(config.checkpoint_dir), _run_record(config, spec, run_info or {}), config.resume, ctx.is_main)
        loaders = None
        if data is not None:
            loaders = make_loaders(data, config.finetune.batch_size, num_workers=config.finetune.num_workers,
                                   seed=config.finetune.seed, distributed=ctx.distributed,
                                   pin_memory=device.type == "cuda")
        with timer("measure original"):
            before = _measure(model, example_input, loaders, device)
        model.cpu()
        calibration = None
        if spec.needs_data:
            if data is None:
                raise SpecError(f"{spec.reads_data} reads calibration data: give --data")
            calibration = calibration_set(data.train, config.calib_batches, config.finetune.batch_size,
                                          seed=config.finetune.seed)
        stages = _stages(config, spec, data, loaders, calibration, notes)
        if config.metanet is None and any(isinstance(s, Prepare) for s in stages):
            work = copy.deepcopy(model)  # prepare trains in place: never the caller's own model
        else:
            work = model
        state = run_stages(stages, State(work.eval(), example_input, spec, exported=exported), timer)
        pruned_module, plan = state.module, state.plan
        module, removed_acc, recalibrated_acc, best_epoch = pruned_module, None, None, None
        removed_ppl = objective_name = None
        if loaders is not None:
            module.to(device)
            removed = evaluate(module, loaders.test, device)
            removed_acc, removed_ppl = removed["acc"], removed.get("ppl")
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
            if config.bn_batches > 0 and not recalibrates(spec) and has_bn:
                notes.append("BatchNorm statistics kept: the lstsq compensation refit the layers to them")
            if config.bn_batches > 0 and recalibrates(spec) and has_bn:
                with timer("recalibrate BatchNorm"):
                    recalibrate_bn(module, loaders.train, config.bn_batches, device)
                recalibrated_acc = evaluate(module, loaders.test, device)["acc"]
            if config.finetune.epochs > 0:
                objective, objective_name = None, "labels"
                if _finetune_distills(config, model, module, loaders, device, ctx, notes):
                    # recover by matching the dense network's outputs
                    objective_name = "distill"
                    from ..training.distill import DistillObjective

                    objective = DistillObjective(model, temperature=config.distill_temperature)
                with timer("finetune"):
                    result = train(module, loaders, _stage_config(config, "finetune", config.finetune.epochs),
                                   objective)
                module, best_epoch = result.model, result.best_epoch
                if best_epoch == 0:
                    hint = ""
                    if config.prepare.epochs > 0 and not config.prepare.sparsity:
                        # the measured cause: the prepare stage fitted the training set, nothing is left to learn
                        hint = " (a prepared network that fits its training set gains nothing from a finetune: " \
                               "--prepare-sparsity, e.g. 0.01, regularises the prepare stage)"
                    notes.append("the finetune kept the pruned network as it was: no epoch beat it on validation" + hint)
            else:
                notes.append("finetune epochs = 0: the pruned network is not finetuned")
        module.eval()
        with timer("measure pruned"):
            after = _measure(module, _to(example_input, device), loaders, device)
        module.cpu()
        if ctx.is_main:
            with timer("time latency"):  # original and pruned in alternation: same machine load for both
                before.latency, after.latency = compare_latency(
                    [model, module], example_input, device=device, threads=config.latency_threads,
                    batch=config.latency_batch)
        if ctx.distributed:
            # Rank 0 times latency alone: leave the process group together, else a rank that
            # tears it down while the other still holds it can abort at exit (gloo).
            torch.distributed.barrier()
    return TransformResult(module, plan, before, after, removed_acc, timer.items(), notes, best_epoch,
                           recalibrated_acc, removed_ppl, objective_name)


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x
