"""Pruning plans: plain data that records which units were removed, and replaying one."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..analysis.channels import ChannelAnalysis, analyze
from ..errors import PruningError
from ..keys import PLAN
from .selection import Candidates
from .selfcheck import check_shapes, self_check
from .slimming import slim

PLAN_FORMAT = "fxmeta.plan/1"


def make_plan(analysis: ChannelAnalysis, c: Candidates, counts: Tensor, meta: dict) -> dict:
    entries = []
    for gi, g in enumerate(c.groups):
        k = int(counts[gi])
        if k == 0:
            continue
        sel = c.group_of == gi
        removed_units = torch.nonzero(c.rank[sel] < k).flatten().tolist()
        entries.append({"key": g.key, "units": g.units, "removed": removed_units})
    return {"format": PLAN_FORMAT, "ignore": list(analysis.ignore), "groups": entries, **meta}


def removed_from_plan(analysis: ChannelAnalysis, plan: dict) -> Tensor:
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise PruningError(f"not a pruning plan (expected format {PLAN_FORMAT!r})")
    removed = torch.zeros(analysis.uf.size, dtype=torch.bool)
    for entry in plan["groups"]:
        try:
            g = analysis.group(entry["key"])
        except KeyError:
            raise PruningError(f"plan group {entry['key']!r} does not exist in this model; "
                               "rebuild the plan on the same architecture and input shape") from None
        if g.units != entry["units"]:
            raise PruningError(f"plan group {entry['key']!r} has {entry['units']} units, the model {g.units}")
        idx = torch.tensor(entry["removed"], dtype=torch.long)
        if len(idx) and (idx.min() < 0 or idx.max() >= g.units or len(idx) >= g.units):
            raise PruningError(f"plan group {entry['key']!r} removes invalid units")
        removed[g.roots[idx]] = True
    return removed




def apply_plan(model: nn.Module, plan: dict, example_input: Any, check: bool = True,
               rules: Mapping[Any, Callable] | None = None, capture: str | None = None) -> nn.Module:
    """Replay a plan from ``fxmeta.prune`` on a (fresh) model of the same architecture.

    The model is captured as the plan's model was (``plan["capture"]``) unless ``capture`` says otherwise."""
    ignore = tuple(plan.get("ignore", ())) if isinstance(plan, dict) else ()
    if capture is None:
        capture = plan.get("capture", "auto") if isinstance(plan, dict) else "auto"
    analysis = analyze(model, example_input, ignore=ignore, rules=rules, capture=capture)
    removed = removed_from_plan(analysis, plan)
    pruned = slim(analysis, removed)
    if check:
        self_check(analysis, pruned, removed)
    else:
        check_shapes(analysis, pruned, removed)
    pruned.meta[PLAN] = plan
    return own_class(model, analysis, removed, pruned, example_input)


def own_class(model: Any, analysis: ChannelAnalysis, removed: Tensor, pruned: fx.GraphModule,
              example_input: Any) -> nn.Module:
    """For a module torch.export captured: the model's own class with the smaller weights when that
    reproduces ``pruned`` (``fxmeta.pruning.module_slimming``), else ``pruned`` itself."""
    from ..capture import is_program
    from ..keys import CAPTURE
    from .module_slimming import slim_model

    if analysis.gm.meta.get(CAPTURE) != "export" or is_program(model) or isinstance(model, fx.GraphModule):
        return pruned
    return slim_model(model, analysis, removed, pruned, example_input) or pruned
