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

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch.fx as fx
from torch import Tensor, nn
from torch.export import ExportedProgram

from ..analysis.channels import ChannelAnalysis, analyze
from ..capture import export_program, is_program
from ..errors import PruningError
from ..keys import CAPTURE, PLAN
from .flops import FlopModel, count_flops, count_params
from .importance import Importance, importance_fn
from .plan import PLAN_FORMAT, apply_plan, make_plan, own_class
from .selection import Candidates, candidates, check_allocation, flop_model, removed_mask, select
from .selfcheck import check_shapes, self_check
from .slimming import slim

__all__ = ["PLAN_FORMAT", "Importance", "PruneResult", "apply_plan", "prune"]



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


def _check_speedup(speedup: float) -> None:
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
    speedup: float = 2.0,
    importance: str | Importance = "l2",
    round_to: int | None = None,
    ignore: Sequence[str] = (),
    min_keep: float = 0.1,
    check: bool = True,
    seed: int = 0,
    rules: Mapping[Any, Callable] | None = None,
    capture: str = "auto",
    allocation: str = "global",
) -> PruneResult:
    """Remove channels until FLOPs(original) / FLOPs(pruned) >= ``speedup``.

    ``importance``: "l2" (group L2 norm, normalised per group), "l1", "random", or a
    callable ``(group, params) -> scores of shape (group.units,)``; units are ranked
    globally, weakest removed first. ``allocation`` says how the removal spreads over the groups:
    "global" (scores divided by their group's largest, then one ranking across groups: groups whose
    units are unequal lose more), "global-mean" (divided by the group's mean instead), "uniform" (every
    group loses the same fraction, weakest units first; Torch-Pruning's local pruning).
    ``round_to`` keeps channel counts multiples of N;
    ``min_keep`` is the least fraction of every group that stays; ``ignore`` names
    modules that must not change. ``check`` compares the result with the original model
    with the removed channels masked (on a random input) and raises PruningError, naming
    the group, on any difference. ``rules`` adds channel rules ({op: rule}) over the default
    table for this call only (see ``fxmeta.analysis.rules.table``). The model itself is left
    unchanged, the train/eval flag of every submodule included.

    ``model`` may be a torch.export ``ExportedProgram``: the result then also holds the
    pruned program (``PruneResult.program``, exported with the same example input).
    ``capture`` says how a module becomes a graph: "auto" (fx tracing, torch.export when
    fx cannot trace it), "fx" or "export" (see ``fxmeta.capture.trace``).
    """
    _check_speedup(speedup)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to must be a positive integer, got {round_to!r}")
    if not 0.0 <= min_keep <= 1.0:
        raise PruningError(f"min_keep must be within [0, 1], got {min_keep!r}")
    check_allocation(allocation)
    clock = _Clock()
    analysis = analyze(model, example_input, ignore=ignore, rules=rules, capture=capture)
    clock("analysis")
    c = candidates(analysis, importance_fn(importance, seed), round_to, min_keep, allocation)
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
    reached = reach(analysis, c, model_flops, flops_before, float(speedup), min_keep, round_to, clock)
    counts, removed, pruned, measured = reached.counts, reached.removed, reached.module, reached.speedup
    flops_after = reached.flops
    if check:
        self_check(analysis, pruned, removed, shapes_checked=True)
        clock("check")
    plan = make_plan(analysis, c, counts, {"speedup_target": float(speedup),
                                        "importance": importance if isinstance(importance, str) else "custom",
                                        "allocation": allocation,
                                        "capture": analysis.gm.meta.get(CAPTURE, "fx")})
    pruned.meta[PLAN] = plan
    pruned = own_class(model, analysis, removed, pruned, example_input)
    params_after = count_params(pruned)
    program = None
    if is_program(model):
        program = export_program(pruned, example_input)
        clock("export")
    return PruneResult(pruned, measured, params_after / max(params_before, 1), plan, flops_before, flops_after,
                       params_before, params_after, clock.totals, program)


