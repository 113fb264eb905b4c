"""Meta-training: teach the metanetwork to make networks easy to prune.

Each step takes one training data model of a zoo (``fxmeta.metatrain.zoo``): its WeightGraph goes
through the metanetwork, the new tables are raised differentiably and the generated
network runs with ``torch.func.functional_call`` (BatchNorm in eval mode) on training
batches. The loss is the generated network's cross-entropy plus the group-sparsity
penalty (``fxmeta.metatrain.regularizer``) on its weights. The reference sums the cross-entropy
gradient over every batch of the training set per step and adds ``reg * gamma * theta``
on top; we estimate that sum from ``batches_per_step`` batches (mean x batches per data
epoch), so ``reg`` keeps the reference's meaning and scale.

After every epoch each held-out data model is passed through the metanetwork, pruned to
the target FLOPs speed-up and (optionally) finetuned briefly; the mean validation
accuracy picks the best checkpoint (``best.pt``). ``last.pt`` allows resuming; the
JSON-lines log is ``log.jsonl``. Both checkpoints load with ``torch.load(weights_only=True)``
and ``load_metanet``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FxmetaError, OutputExistsError, SpecError, TrainingDivergedError
from ..ir.graph import WeightGraph
from ..ir.lowering import lower
from ..ir.raising import raise_graph, raise_params
from ..metanet.files import load_metanet, save_metanet
from ..metanet.model import FORMAT as METANET_FORMAT
from ..metanet.model import Metanet, MetanetConfig, kinds_of
from ..pruning.selection import check_allocation
from .regularizer import GroupRegularizer, group_regularizer

LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"
CHECKPOINT_FORMAT = "fxmeta.meta-train/1"


@dataclass
class MetaTrainConfig:
    """Meta-training settings; defaults follow the reference (AdamW 1e-3, wd 5e-4, reg 10, alpha 16).

    ``objective="prunable"`` adds the prunability term (``fxmeta.pruning.masking``): the
    cross-entropy of the generated network with the channels that a prune to a target
    speed-up (one of ``mask_speedups``, drawn per step; default ``speedup``) would remove
    from it masked out, BatchNorm on batch statistics, weighted by ``mask_weight``; the generated
    network's own cross-entropy is weighted by ``ce_weight`` (0: only the pruned network counts).

    ``conditioned=True`` (prunable objective only) trains a metanetwork that is told the prune
    (``fxmeta.metanet.condition``): per step the target's channels are fixed from the member's
    original weights, its nodes get the removal flags and the masked-loss gradient on
    ``grad_batches`` training batches, and the masked term removes exactly those channels.
    ``steps`` rewrites are unrolled per step (each told the gradient at the previous one's
    weights); ``step_lr > 0`` adds the gradient-step head (``MetanetConfig.step_lr``).
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()  # epochs after which lr *= gamma; empty: 75% of epochs
    gamma: float = 0.1
    width: int = 32
    depth: int = 6
    ratio: float = 0.01
    reg: float = 10.0
    alpha: float = 16.0
    batches_per_step: int = 4
    batch_size: int = 128
    speedup: float = 2.0  # FLOPs target of the validation prune
    allocation: str = "global"  # how every prune here spreads its removal over the groups (fxmeta.prune)
    eval_bn_batches: int = 20  # BatchNorm recalibration of the pruned held-out models before scoring
    eval_finetune_epochs: int = 1
    objective: str = "reference"  # "reference" | "prunable"
    zero_init: bool = False  # decoders' last layers start at zero (Metanet.zero_outputs): identity at step 0
    # "all" | "nodes" | "step": with "nodes" only node tables (norm scales, biases) change; with "step" the
    # decoders stay zero and only the gradient-step head's per-channel sizes and lr are learned
    learn: str = "all"
    mask_weight: float = 1.0
    ce_weight: float = 1.0
    mask_speedups: tuple[float, ...] = ()
    conditioned: bool = False
    grad_batches: int = 2
    steps: int = 1  # rewrites per use of a conditioned metanet, each told a fresh gradient
    step_lr: float = 0.0  # > 0: a gradient-step head starting at this lr (MetanetConfig.step_lr)
    # non-empty: the start lr is the one of these whose SGD steps (the untrained metanet) score best on
    # the held-out members, the baseline meta-training then has to beat
    step_lrs: tuple[float, ...] = ()
    seed: int = 0
    init: str | None = None  # start from this metanet file instead of a fresh one
    resume: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batches_per_step < 1 or self.batch_size < 1:
            raise SpecError("need epochs >= 0, batches_per_step >= 1 and batch_size >= 1")
        if self.eval_bn_batches < 0 or self.eval_finetune_epochs < 0:
            raise SpecError("need eval_bn_batches >= 0 and eval_finetune_epochs >= 0")
        if self.speedup < 1.0:
            raise SpecError(f"speedup must be >= 1, got {self.speedup}")
        check_allocation(self.allocation, SpecError)
        if self.learn not in ("all", "nodes", "step"):
            raise SpecError(f"learn={self.learn!r} is not one of all, nodes, step")
        if self.learn == "step" and not self.step_lr:
            raise SpecError("learn='step' learns the gradient-step head: it needs step_lr > 0 (--step-lr)")
        if self.objective not in ("reference", "prunable"):
            raise SpecError(f"objective={self.objective!r} is not one of reference, prunable")
        if self.conditioned and self.objective != "prunable":
            raise SpecError("a conditioned metanetwork trains with the prunable objective: pass objective='prunable' "
                            "(--objective prunable)")
        if self.grad_batches < 1:
            raise SpecError(f"grad_batches must be >= 1, got {self.grad_batches}")
        if self.steps < 1 or not math.isfinite(self.step_lr) or self.step_lr < 0:
            raise SpecError(f"need steps >= 1 and a finite step_lr >= 0, got steps {self.steps}, "
                            f"step_lr {self.step_lr}")
        self.step_lrs = tuple(float(x) for x in self.step_lrs)
        if self.step_lrs and (not self.step_lr or not self.zero_init or
                              any(not math.isfinite(x) or x <= 0 for x in self.step_lrs)):
            raise SpecError(f"step_lrs {self.step_lrs} choose the start of a gradient-step head: they need "
                            "step_lr > 0, zero_init=True and finite values > 0")
        if (self.steps > 1 or self.step_lr) and not self.conditioned:
            raise SpecError("steps and step_lr are settings of a conditioned metanetwork (conditioned=True, "
                            "--objective conditioned)")
        for name in ("mask_weight", "ce_weight"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise SpecError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.ce_weight == 0 and (self.objective != "prunable" or self.mask_weight == 0):
            raise SpecError("ce_weight=0 leaves nothing to train: it needs the prunable objective with mask_weight > 0")
        self.mask_speedups = tuple(float(s) for s in self.mask_speedups)
        if any(not math.isfinite(s) or s < 1 for s in self.mask_speedups):
            raise SpecError(f"mask speed-ups must be finite numbers >= 1, got {self.mask_speedups}")
        self.milestones = tuple(int(m) for m in self.milestones)

    def lr_at(self, epoch: int) -> float:
        milestones = self.milestones or (max(1, math.ceil(0.75 * self.epochs)),)
        return self.lr * self.gamma ** sum(epoch >= m for m in milestones)


@dataclass
class MetaTrainResult:
    """The metanetwork with the best checkpoint's weights, and how it got there."""

    metanet: Metanet
    best_epoch: int
    best_score: float
    best_path: str
    history: list[dict] = field(default_factory=list)


@dataclass
class _DataModel:
    path: str
    graph: WeightGraph
    regularizer: GroupRegularizer
    masking: Any = None  # _Masking for the prunable objective
    example: Any = None
    conditions: dict[float, Any] = field(default_factory=dict)  # speed-up -> metanet.condition.Condition
    allocation: str = "global"  # fxmeta.prune's allocation of the prunes it is masked with / told

    def condition(self, speedup: float) -> Any:
        """The fixed prune of this member to ``speedup`` (built once)."""
        from ..metanet.condition import Condition

        if speedup not in self.conditions:
            self.conditions[speedup] = Condition(self.graph, self.example, speedup, allocation=self.allocation)
        return self.conditions[speedup]


@dataclass
class _Masking:
    """The masked twin of a data model and its calibrated FLOPs targets."""

    network: Any  # fxmeta.masking.MaskedNetwork over the data model's module
    targets: list[tuple[float, float]]  # (speed-up, analytic FLOPs target)
    flops: Any
    allocation: str = "global"

    def removed(self, params: dict[str, torch.Tensor], pick: int) -> torch.Tensor:
        from ..pruning.masking import removal

        speedup, target = self.targets[pick]
        return removal(self.network.analysis, speedup, flops_target=target, flops=self.flops,
                       allocation=self.allocation,
                       params={k: v.detach() for k, v in params.items()})


# Named settings of meta-training; ``fxmeta meta-train --objective NAME`` and ``meta_train(preset=NAME)``
# start from the same one. "conditioned" (the default): a learned optimiser told the prune, the best of the
# objective sweep on held-out zoo members (docs/results.md); "reference" and "prunable": the paper's
# settings with its objective or with the prunability term added.
PRESETS: dict[str, dict[str, Any]] = {
    "conditioned": {"objective": "prunable", "conditioned": True, "zero_init": True, "ratio": 1.0, "reg": 0.0,
                    "eval_finetune_epochs": 0, "mask_speedups": (2.0, 4.0, 8.0), "steps": 3, "step_lr": 0.01,
                    "step_lrs": (0.01, 0.03, 0.1, 0.3, 1.0), "ce_weight": 0.0},
    "prunable": {"objective": "prunable"},
    "reference": {"objective": "reference"},
}
DEFAULT_PRESET = "conditioned"


def preset(name: str = DEFAULT_PRESET, **settings: Any) -> MetaTrainConfig:
    """The :class:`MetaTrainConfig` of a named preset (:data:`PRESETS`) with ``settings`` over it."""
    if name not in PRESETS:
        raise SpecError(f"unknown meta-training preset {name!r}; use one of {', '.join(PRESETS)}")
    return MetaTrainConfig(**{**PRESETS[name], **settings})


def meta_train(zoo_dir: str | os.PathLike, out: str | os.PathLike = "metanet/", epochs: int | None = None,
               config: MetaTrainConfig | None = None, *, trust: bool = False, preset_name: str = DEFAULT_PRESET,
               **settings: Any) -> MetaTrainResult:
    """Meta-train a metanetwork on the data models of ``zoo_dir``; write checkpoints to ``out``.

    Settings are the fields of :class:`MetaTrainConfig`, given as keywords over ``config``, or,
    without one, over the preset ``preset_name`` (:data:`PRESETS`; "conditioned", as for
    ``fxmeta meta-train``).
    ``trust`` allows a zoo whose manifest or members name code (a user's model factory or
    data function), which loading them runs.
    """
    from ..tracing import example_from_shape
    from ..training.data import load_data, make_loaders
    from .zoo import load_zoo

    config = replace(config or preset(preset_name), **settings)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    zoo = load_zoo(zoo_dir, trust=trust)
    train_members, val_members = zoo.split("train"), zoo.split("val")
    if not train_members:
        raise FxmetaError(f"{zoo_dir} has no training data models; build the zoo with more members than val_count")
    from ..io.paths import Created

    created = Created()
    created.folder(out)
    folder = _output_folder(out, config)
    try:
        splits = load_data(zoo.data, seed=0)
        loaders = make_loaders(splits, config.batch_size, seed=config.seed)
        example = example_from_shape(zoo.input_shape)
        train_models = [load_data_model(zoo.path(m), example, config, trust) for m in train_members]
        val_models = [load_data_model(zoo.path(m), example, config, trust) for m in val_members]
    except BaseException:
        created.remove()  # a folder this run made, still empty: gone again
        raise
    net = make_metanet([d.graph for d in train_models + val_models], config)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    state = {"epoch": 0, "best_epoch": 0, "best_score": -1.0, "history": []}
    if config.resume and (folder / LAST).is_file():
        state = _load_last(folder / LAST, net, optimizer)
    log = _JsonLog(folder / LOG, append=config.resume and state["epoch"] > 0)
    say = print if config.progress else (lambda *a, **k: None)
    ce_scale = len(loaders.train)
    finetune_lr = float(zoo.settings.get("lr", 0.1)) * 0.1
    if state["epoch"] == 0 and val_models:
        baseline = _validate(None, val_models, loaders, example, config, finetune_lr)
        log.write({"epoch": 0, "baseline": True, **baseline})
        say(f"without metanet: {_describe(baseline)}")
    if state["epoch"] == 0 and config.step_lrs and not config.init:
        _choose_step_lr(net, val_models, loaders, example, config, finetune_lr, log, say)
    batches = _forever(loaders.train)
    with _progress(config.progress) as bar:
        for epoch in range(state["epoch"], config.epochs):
            started = time.perf_counter()
            lr = config.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order = torch.randperm(len(train_models), generator=torch.Generator().manual_seed(config.seed + epoch))
            task = bar.add_task(f"meta epoch {epoch + 1}/{config.epochs}", total=len(order))
            net.train()
            picks = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)  # mask targets, resumable
            for step, i in enumerate(order.tolist()):
                record = _train_step(net, optimizer, train_models[i], batches, config, ce_scale, picks)
                if not math.isfinite(record["loss"]):
                    raise TrainingDivergedError(f"meta-training diverged in epoch {epoch + 1}: the loss became "
                                                f"{record['loss']}; lower --lr and start again")
                record.update(epoch=epoch + 1, step=step + 1, lr=lr, model=os.path.basename(train_models[i].path))
                log.write(record)
                bar.update(task, advance=1, description=f"meta epoch {epoch + 1}/{config.epochs} "
                                                        f"ce {record['ce']:.3f} penalty {record['penalty']:.3g}")
            bar.remove_task(task)
            summary = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - started, 2)}
            if val_models:
                summary.update(_validate(net, val_models, loaders, example, config, finetune_lr))
            score = summary.get("score", float(epoch))  # without validation models: keep the last
            if score > state["best_score"]:
                state["best_score"], state["best_epoch"] = score, epoch + 1
                save_metanet(net, str(folder / BEST), force=True,
                             extra={"epoch": epoch + 1, "score": score, "zoo": os.fspath(zoo_dir)})
            summary["best_epoch"] = state["best_epoch"]
            state["epoch"] = epoch + 1
            state["history"].append(summary)
            log.write(summary)
            say(f"meta epoch {epoch + 1}/{config.epochs}: {_describe(summary)}")
            _save_last(folder / LAST, net, optimizer, state, config)
    best = folder / BEST
    if not best.is_file():  # no epoch ran (epochs=0): the initial metanet is the result
        save_metanet(net, str(best), force=True, extra={"epoch": 0, "score": state["best_score"]})
    return MetaTrainResult(load_metanet(str(best)), state["best_epoch"], state["best_score"], str(best),
                           state["history"])


# -- pieces ---------------------------------------------------------------------------------------
def _output_folder(out: str | os.PathLike, config: MetaTrainConfig) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file; meta-training writes a folder of checkpoints")
    busy = [name for name in (LAST, BEST, LOG) if (folder / name).exists()]
    if busy and not (config.resume or config.force):
        raise OutputExistsError(f"{folder} already holds {', '.join(busy)}; pass resume=True (--resume) to "
                                "continue that run or force=True (--force) to start over")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_data_model(path: str, example: torch.Tensor, config: MetaTrainConfig, trust: bool = False) -> _DataModel:
    """One zoo member as meta-training sees it: its frozen network lowered to a WeightGraph, its group
    regulariser, and (``objective="prunable"`` or conditioned) the prunes it is trained for."""
    from ..io.files import load

    model = load(path, trust=trust).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # data, not trained here: gradients go to the metanetwork only
    graph = lower(model, example)
    graph.module.eval()
    regularizer = group_regularizer(model, example, reg=config.reg, alpha=config.alpha)
    masking = None
    if config.conditioned:
        data_model = _DataModel(path, graph, regularizer, None, example, allocation=config.allocation)
        for speedup in config.mask_speedups or (config.speedup,):
            data_model.condition(speedup)
        return data_model
    if config.objective == "prunable":
        from ..analysis.channels import analyze
        from ..pruning.masking import MaskedNetwork, analytic_flops, calibrate_target

        analysis = analyze(graph.module, example)
        speedups = config.mask_speedups or (config.speedup,)
        targets = [(s, calibrate_target(analysis, s, allocation=config.allocation)) for s in speedups]
        masking = _Masking(MaskedNetwork(analysis), targets, analytic_flops(analysis), config.allocation)
    return _DataModel(path, graph, regularizer, masking, example, allocation=config.allocation)


def make_metanet(graphs: list[WeightGraph], config: MetaTrainConfig) -> Metanet:
    """The metanetwork ``config`` starts from: ``config.init`` loaded, or a fresh one (seeded) for the node
    and edge kinds of ``graphs``."""
    if config.init:
        net = load_metanet(config.init)
        if net.conditioned != config.conditioned:
            raise FxmetaError(f"{config.init} is {'a' if net.conditioned else 'not a'} conditioned metanetwork; "
                              f"{'pass' if net.conditioned else 'leave out'} conditioned=True (--objective conditioned)")
        for graph in graphs:
            net.check_graph(graph)
        _restrict(net, config.learn)
        return net
    nodes: dict[str, list[str]] = {}
    edges: dict[str, int] = {}
    for graph in graphs:
        n, e = kinds_of(graph)
        for kind, cols in n.items():
            if nodes.setdefault(kind, cols) != cols:
                raise FxmetaError(f"node kind {kind!r} has different columns in different data models")
        for kind, k in e.items():
            if edges.setdefault(kind, k) != k:
                raise FxmetaError(f"edge kind {kind!r} has different widths in different data models")
    torch.manual_seed(config.seed)
    from ..metanet.condition import FEATURES

    condition = len(FEATURES) if config.conditioned else 0
    net = Metanet(MetanetConfig(nodes, edges, config.width, config.depth, config.ratio, condition=condition,
                                condition_batches=config.grad_batches, steps=config.steps, step_lr=config.step_lr))
    if config.zero_init:
        net.zero_outputs()
    _restrict(net, config.learn)
    return net


def _restrict(net: Metanet, learn: str) -> None:
    """With ``learn="nodes"`` the edge decoders output zero and are not trained: only node tables
    (norm scales and shifts, biases) change, a far smaller space to generalise in. With
    ``learn="step"`` no decoder is trained: only the gradient-step head's sizes and lr change."""
    if learn not in ("step", "nodes"):
        return
    frozen = [*net.edge_codecs.values(), *(net.node_codecs.values() if learn == "step" else ())]
    net.zero_outputs(nodes=learn == "step")
    for codec in frozen:
        if hasattr(codec, "dec"):
            codec.dec.requires_grad_(False)


def _choose_step_lr(net: Metanet, val_models: list, loaders, example: torch.Tensor, config: MetaTrainConfig,
                    finetune_lr: float, log: "_JsonLog", say) -> None:
    """Start the gradient-step head at the best of ``config.step_lrs``: the untrained metanetwork is
    exactly SGD at its lr, scored like every checkpoint (held-out members, validation split)."""
    if not val_models:
        raise FxmetaError("step_lrs choose the start lr on held-out zoo members; this zoo has none (--val-count)")
    scores = {}
    for lr in config.step_lrs:
        with torch.no_grad():
            net.log_step_lr.fill_(math.log(lr))
        scores[lr] = _validate(net, val_models, loaders, example, config, finetune_lr)["score"]
        log.write({"epoch": 0, "step_lr": lr, "score": scores[lr]})
    best = max(scores, key=scores.get)
    with torch.no_grad():
        net.log_step_lr.fill_(math.log(best))
    net.config.step_lr = best
    say("start: SGD at lr " + ", ".join(f"{lr:g} {100 * v:.1f}%" for lr, v in scores.items()) + f": {best:g}")


def _forever(loader):
    while True:
        yield from loader


def _train_step(net: Metanet, optimizer: torch.optim.Optimizer, data_model: _DataModel, batches,
                config: MetaTrainConfig, ce_scale: int, picks: torch.Generator | None = None) -> dict:
    started = time.perf_counter()
    masking, masked_net = data_model.masking, None
    if data_model.conditions:  # a conditioned metanet: the prune is fixed first and announced
        targets = list(data_model.conditions)
        pick = int(torch.randint(len(targets), (), generator=picks)) if len(targets) > 1 and picks is not None else 0
        condition = data_model.conditions[targets[pick]]
        from ..metanet.condition import rewrite_steps

        told = [next(batches) for _ in range(config.grad_batches)]
        params = raise_params(rewrite_steps(net, data_model.graph, condition, told))
        masked_net = condition.network.gm
    else:
        params = raise_params(net(data_model.graph))
    if masking is not None:
        n = len(masking.targets)
        pick = int(torch.randint(n, (), generator=picks)) if n > 1 and picks is not None else 0
        masking.network.set_removed(masking.removed(params, pick))
        masked_net = masking.network.gm
    ce = masked_ce = 0.0
    correct = total = 0
    for _ in range(config.batches_per_step):
        x, y = next(batches)
        out = torch.func.functional_call(data_model.graph.module, params, (x,))
        ce = ce + F.cross_entropy(out, y) / config.batches_per_step
        if masked_net is not None:
            # the generated network as the prune will leave it, BatchNorm on this batch's statistics
            masked = torch.func.functional_call(masked_net, params, (x,), strict=False)
            masked_ce = masked_ce + F.cross_entropy(masked, y) / config.batches_per_step
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    penalty = data_model.regularizer(params)
    loss = ce_scale * (config.ce_weight * ce + config.mask_weight * masked_ce) + penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    record = {"ce": ce.item(), "penalty": penalty.item(), "loss": loss.item(), "acc": correct / max(total, 1),
              "seconds": round(time.perf_counter() - started, 3)}
    if masked_net is not None:
        record["masked_ce"] = masked_ce.item()
    return record


def _validate(net: Metanet | None, models: list[_DataModel], loaders, example: torch.Tensor,
              config: MetaTrainConfig, finetune_lr: float) -> dict:
    """Per held-out data model: accuracy after the metanetwork (none: the model itself), and its
    prunability curve point at the target speed-up (``fxmeta.training.curve``): right after pruning,
    and after recomputing BatchNorm statistics on ``eval_bn_batches`` fixed training batches (the
    same batches every epoch, so epochs compare); then, optionally, after a short finetune from
    there. ``score`` averages the last one measured."""
    from ..pruning.pruner import prune
    from ..training.curve import prunability_curve
    from ..training.data import calibration_set
    from ..training.loop import TrainConfig, evaluate, recalibrate_bn, train

    calibration = calibration_set(loaders.train.dataset, config.eval_bn_batches, config.batch_size,
                                      seed=config.seed) if config.eval_bn_batches > 0 else []
    grad_batches: list = []  # a conditioned metanet's gradient input, the same batches every epoch
    if net is not None and net.conditioned:
        grad_batches = calibration[:config.grad_batches] or calibration_set(
            loaders.train.dataset, config.grad_batches, config.batch_size, seed=config.seed)
    results = []
    for data_model in models:
        graph, importance = data_model.graph, "l2"
        if net is not None:
            net.eval()
            with torch.no_grad():
                if net.conditioned:  # told the prune to the validation target; gradient on fixed training batches
                    from ..metanet.condition import rewrite_steps

                    fixed = data_model.condition(config.speedup)
                    importance = fixed.importance()
                    graph = rewrite_steps(net, graph, fixed, grad_batches)
                else:
                    graph = net(graph)
        module = raise_graph(graph).eval()
        for p in module.parameters():
            p.requires_grad_(True)  # the data model's were switched off; the finetune trains them
        curve = prunability_curve(module, example, loaders.val, [config.speedup], calibration=calibration,
                                  label=os.path.basename(data_model.path), split="val", importance=importance,
                                  allocation=config.allocation)
        point = curve.points[0]
        if point.error and _diverged(module, example):
            # the rewrite blew the network up (a step size far too large): it scores nothing, the run goes on
            results.append({"model": curve.label, "acc": curve.unpruned, "diverged": True, "pruned_acc": 0.0,
                            **({"recalibrated_acc": 0.0} if calibration else {}),
                            **({"finetuned_acc": 0.0} if config.eval_finetune_epochs > 0 else {})})
            continue
        if point.error:
            raise FxmetaError(f"held-out {curve.label} cannot be pruned to {config.speedup:g}x: {point.error}")
        entry = {"model": curve.label, "acc": curve.unpruned, "speedup": point.flops_speedup,
                 "pruned_acc": point.accuracy}
        if point.recalibrated_accuracy is not None:
            entry["recalibrated_acc"] = point.recalibrated_accuracy
        if config.eval_finetune_epochs > 0:
            pruned = prune(module, example, speedup=config.speedup, importance=importance,
                           allocation=config.allocation)
            if calibration:
                recalibrate_bn(pruned.module, calibration, len(calibration))
            tuned = train(pruned.module, loaders, TrainConfig(epochs=config.eval_finetune_epochs, lr=finetune_lr,
                                                              seed=config.seed, progress=False, device="cpu"))
            entry["finetuned_acc"] = evaluate(tuned.model, loaders.val)["acc"]
        results.append(entry)
    key = next(k for k in ("finetuned_acc", "recalibrated_acc", "pruned_acc") if k in results[0])
    summary = {"val": results, "score": sum(r[key] for r in results) / len(results)}
    for name in ("acc", "pruned_acc", "recalibrated_acc", "finetuned_acc"):
        if name in results[0]:
            summary[f"mean_{name}"] = sum(r[name] for r in results) / len(results)
    return summary


def _diverged(module: torch.nn.Module, example: Any) -> bool:
    """Whether ``module`` computes non-finite outputs on ``example`` (no prune can be checked then)."""
    with torch.no_grad():
        out = module(*example) if isinstance(example, tuple) else module(example)
    leaves = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else (out,)
    return not all(torch.isfinite(t).all() for t in leaves if torch.is_tensor(t))


def _describe(summary: dict) -> str:
    parts = [f"{k.removeprefix('mean_')} {summary[k]:.4f}" for k in ("mean_acc", "mean_pruned_acc",
                                                                     "mean_recalibrated_acc", "mean_finetuned_acc")
             if k in summary]
    if "best_epoch" in summary:
        parts.append(f"best epoch {summary['best_epoch']}")
    return ", ".join(parts) or "done"


def _save_last(path: Path, net: Metanet, optimizer: torch.optim.Optimizer, state: dict,
               config: MetaTrainConfig) -> None:
    from ..io.saving import atomic_save, plain_data

    obj = {"format": CHECKPOINT_FORMAT,
           "metanet": {"format": METANET_FORMAT, "config": net.config.to_dict(), "state_dict": net.state_dict()},
           "optimizer": optimizer.state_dict(), "state": json.dumps(state), "config": plain_data(asdict(config))}
    atomic_save(obj, path, force=True)


def _load_last(path: Path, net: Metanet, optimizer: torch.optim.Optimizer) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise FxmetaError(f"{path} is not a meta-training checkpoint; remove it or pass force=True to start over")
    saved = MetanetConfig.from_dict(obj["metanet"]["config"])
    if saved != net.config:
        raise FxmetaError(f"{path} was written by a metanetwork of other settings or kinds "
                          f"(width {saved.width}, depth {saved.depth}); resume with the same settings")
    net.load_state_dict(obj["metanet"]["state_dict"])
    optimizer.load_state_dict(obj["optimizer"])
    return json.loads(obj["state"])


class _JsonLog:
    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        if not append:
            path.write_text("")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True, disable=not (enabled and sys.stderr.isatty()))
