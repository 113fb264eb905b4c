"""Remove channels: importance, FLOPs-targeted selection, physical slimming, self-check.

``prune(model, example_input, speedup=2.0)`` analyses the channel groups
(``fxmeta.analysis``), ranks their units globally by importance, removes the weakest
until the analytic FLOPs model says the target is met, builds a new, smaller
``fx.GraphModule`` (new modules, sliced parameters, rewritten graph constants) and
checks it: its output must equal the original model's output with the removed channels
masked out, else a ``PruningError`` names the group. The removal is returned as a
plain-data plan that ``apply_plan`` replays on a fresh copy of the architecture.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import torch.fx as fx
from torch import Tensor, nn
from torch.export import ExportedProgram

from ..analysis.channels import ChannelAnalysis, analyze
from ..capture import export_program, is_program
from ..errors import PruningError
from ..keys import CAPTURE, PLAN
from .calibration import Calibration
from .compensation import compensate
from .flops import FlopModel, count_flops, count_params
from .importance import Importance, data_importance, importance_fn
from .plan import PLAN_FORMAT, apply_plan, make_plan, own_class
from .selection import Candidates, candidates, flop_model, removed_mask, select
from .selfcheck import check_shapes, self_check
from .slimming import slim
from .spec import DATA_IMPORTANCE, PruneSpec
from .targets import TargetRecorder

__all__ = ["PLAN_FORMAT", "Calibration", "Importance", "PruneResult", "PruneSpec", "apply_plan", "prune"]



@dataclass
class PruneResult:
    """A pruned model and what it cost.

    ``speedup`` is the measured FLOPs ratio original / pruned; ``params_ratio`` is the
    fraction of parameters kept (pruned / original); ``plan`` is plain data that
    ``apply_plan`` replays (saveable with ``torch.save``, loadable with weights_only=True).
    ``program`` is the pruned module as a torch.export program when the model was one
    (``torch.export.save`` / ``load`` it; it runs without fxmeta), else None.

    ``module`` is a GraphModule, except for a module that torch.export had to capture (Hugging
    Face transformers, many timm models): then it is the model's own class with smaller
    weights whenever that computes exactly what the pruned graph computes and runs at another
    batch size too (``fxmeta.pruning.module_slimming``), so ``generate``, keyword inputs and
    any batch or sequence length keep working; the plan is then in ``plan`` only.
    """

    module: nn.Module
    speedup: float
    params_ratio: float
    plan: dict
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    program: ExportedProgram | None = None



# --------------------------------------------------------------------------- API


class _Clock:
    """Accumulates wall time per stage name."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - self.last
        self.last = now


def check_speedup(speedup: float) -> None:
    if not isinstance(speedup, (int, float)) or not math.isfinite(speedup) or speedup < 1.0:
        raise PruningError(f"speedup must be a number >= 1 (FLOPs original / pruned), got {speedup!r}")




@dataclass
class Reached:
    """A selection that measures at least the target once slimmed, and the analytic target that gave it."""

    counts: Tensor
    removed: Tensor
    module: fx.GraphModule
    flops: int
    speedup: float
    target: float


def reach(analysis: ChannelAnalysis, c: Candidates, model_flops: FlopModel, flops_before: int, speedup: float,
          min_keep: float, round_to: int | None, clock: Callable[[str], None] | None = None) -> Reached:
    """Select, slim and measure until the measured FLOPs ratio reaches ``speedup``.

    The analytic model can miss FLOPs of ops it has no term for; each miss raises the
    analytic target by the shortfall and tries again (at most four times)."""
    clock = clock or (lambda stage: None)
    target = float(speedup)
    for _attempt in range(4):
        counts = select(analysis, c, model_flops, flops_before, target, min_keep, round_to)
        removed = removed_mask(c, counts, analysis.uf.size)
        clock("selection")
        pruned = slim(analysis, removed)
        clock("slimming")
        check_shapes(analysis, pruned, removed)
        clock("check")
        flops_after = count_flops(pruned, analysis.example_input)
        clock("flops")
        measured = flops_before / max(flops_after, 1)
        if measured >= speedup * (1 - 1e-9):
            return Reached(counts, removed, pruned, flops_after, measured, target)
        target *= speedup / measured * 1.001  # the analytic model missed something: aim higher
    raise PruningError(f"reached only {measured:.3g}x of the {speedup:.3g}x FLOPs target")


def prune(
    model: nn.Module,
    example_input: Any,
    speedup: float | None = None,
    *,
    spec: PruneSpec | None = None,
    calibration: Calibration | Sequence | None = None,
    check: bool = True,
    capture: str = "auto",
    **settings: Any,
) -> PruneResult:
    """Remove channels until FLOPs(original) / FLOPs(pruned) >= ``speedup``.

    What to remove and how is one :class:`~fxmeta.pruning.spec.PruneSpec`: pass ``spec=``, or
    its fields as keyword arguments (``importance``, ``allocation="global"``, ``round_to``,
    ``min_keep=0.1``, ``ignore``, ``rules``, ``compensate``, ``ridge``, ``seed``), which also
    override the fields of a given ``spec``. Importance and compensation left unset are l2 and
    none without ``calibration``, the calibrated defaults with it (``PruneSpec.resolved``). Units are ranked by
    importance ("l2", "l1", "random"; "taylor" and "activation" read ``calibration``; or a
    callable ``(group, params) -> scores of shape (group.units,)``), weakest removed first, spread
    over the groups as ``allocation`` says. ``compensate`` ("bias", "lstsq") changes the weights
    that stay so the network loses less on ``calibration``, before removal
    (``fxmeta.pruning.compensation``).

    ``calibration``: a :class:`~fxmeta.pruning.calibration.Calibration` or a list of batches
    (inputs, or ``(input, target)`` pairs), needed by the data-aware settings only.
    ``check`` compares the result with the original model with the removed channels masked
    (after compensation; on a random input) and raises PruningError, naming the group, on any
    difference. The model itself is left unchanged, the train/eval flag of every submodule
    included.

    ``model`` may be a torch.export ``ExportedProgram``: the result then also holds the
    pruned program (``PruneResult.program``, exported with the same example input).
    ``capture`` says how a module becomes a graph: "auto" (fx tracing, torch.export when
    fx cannot trace it), "fx" or "export" (see ``fxmeta.capture.trace``).
    """
    spec = resolve_spec(spec, speedup, settings)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration(calibration)
    spec = spec.resolved(with_data=calibration is not None)
    if spec.needs_data and calibration is None:
        raise PruningError(f"{spec.reads_data} reads data: give calibration batches (--data, or "
                           "fxmeta.prune(..., calibration=...))")
    clock = _Clock()
    work = model
    if spec.compensate != "none":
        work = copy.deepcopy(model)  # compensation changes weights: the caller's model stays as it is
    analysis = analyze(work, example_input, ignore=spec.ignore, rules=spec.rules, capture=capture)
    clock("analysis")
    # the original network's outputs the compensation fits to, recorded by a data importance pass
    recorded = TargetRecorder(calibration.samples, means=spec.compensate == "bias") if spec.compensate != "none" else None
    if isinstance(spec.importance, str) and spec.importance in DATA_IMPORTANCE:
        score = data_importance(spec.importance, analysis, calibration, recorded)
    else:
        score = importance_fn(spec.importance, spec.seed)
    c = candidates(analysis, score, spec.round_to, spec.min_keep, spec.allocation)
    clock("importance")
    if not c.groups:
        raise PruningError(
            f"{type(model).__name__} has no prunable channel groups (every channel is frozen: model inputs/outputs, "
            "ignored layers, or ops without a rule); nothing to remove"
        )
    flops_before = count_flops(analysis.gm, example_input)
    params_before = count_params(analysis.gm)
    clock("flops")
    model_flops = flop_model(analysis)
    model_flops.constant = flops_before - model_flops.evaluate()  # FLOPs no term describes (frozen ops)
    reached = reach(analysis, c, model_flops, flops_before, float(spec.speedup), spec.min_keep, spec.round_to, clock)
    counts, removed, pruned, measured = reached.counts, reached.removed, reached.module, reached.speedup
    flops_after = reached.flops
    meta = {**spec.describe(), "capture": analysis.gm.meta.get(CAPTURE, "fx")}
    if spec.compensate != "none":
        # refits the slimmed network in place and writes its weights back into analysis.gm
        done = compensate(analysis, removed, calibration, spec.compensate, spec.ridge, recorded=recorded, small=pruned)
        clock("compensation")
        meta["compensation"] = done.to_plan()
    if check:
        self_check(analysis, pruned, removed, shapes_checked=True)
        clock("check")
    plan = make_plan(analysis, c, counts, meta)
    pruned.meta[PLAN] = plan
    pruned = own_class(work, analysis, removed, pruned, example_input)
    params_after = count_params(pruned)
    program = None
    if is_program(model):
        program = export_program(pruned, example_input)
        clock("export")
    return PruneResult(pruned, measured, params_after / max(params_before, 1), plan, flops_before, flops_after,
                       params_before, params_after, clock.totals, program)


def resolve_spec(spec: PruneSpec | None, speedup: float | None, settings: dict[str, Any]) -> PruneSpec:
    """The spec a library call means: ``spec`` (or the defaults) with ``speedup`` and ``settings`` over it."""
    unknown = set(settings) - {f.name for f in fields(PruneSpec)}
    if unknown:
        raise TypeError(f"unknown prune setting(s): {', '.join(sorted(unknown))}")
    changes = dict(settings)
    if speedup is not None:
        changes["speedup"] = speedup
    base = spec or PruneSpec()
    return replace(base, **changes) if changes else base
