"""RemoveChannelsPass: structured pruning to a FLOPs target as a torch.fx pass."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.errors import PruningError
from fxmeta.keys import EXAMPLE_INPUT, IR, PLAN, PRUNE_IMPORTANCE, SPEEDUP
from fxmeta.pruning import Importance, prune

from .base import FxmetaPass

INPUT_KEY = EXAMPLE_INPUT
PLAN_KEY = PLAN


class RemoveChannelsPass(FxmetaPass):
    """Removes channels until FLOPs drop by ``speedup`` (see ``fxmeta.prune``).

    Returns a new, smaller GraphModule (``modified`` True); the plan (plain data, replayable
    with ``fxmeta.pruning.apply_plan``) is stored in ``new_gm.meta["fxmeta.plan"]`` and the
    measured FLOPs ratio in ``new_gm.meta["fxmeta.speedup"]``. Requires an example input
    (``example_input=`` or ``graph_module.meta["fxmeta.example_input"]``); ensures the new
    graph lints. ``rules`` adds channel rules for this pass only. ``importance`` defaults to the
    one a conditioned metanetwork left in ``gm.meta`` (MetanetPass), else l2.
    """

    def __init__(
        self,
        speedup: float = 2.0,
        importance: str | Importance | None = None,
        example_input: Any = None,
        round_to: int | None = None,
        ignore: Sequence[str] = (),
        min_keep: float = 0.1,
        check: bool = True,
        rules: Mapping[Any, Callable] | None = None,
    ) -> None:
        super().__init__()
        self.speedup = speedup
        self.importance = importance
        self.example_input = example_input
        self.round_to = round_to
        self.ignore = tuple(ignore)
        self.min_keep = min_keep
        self.check = check
        self.rules = rules

    def _input(self, graph_module: fx.GraphModule) -> Any:
        x = self.example_input if self.example_input is not None else graph_module.meta.get(EXAMPLE_INPUT)
        if x is None:
            raise PruningError(
                f"RemoveChannelsPass needs an example input: pass example_input= or set "
                f"graph_module.meta[{EXAMPLE_INPUT!r}]"
            )
        return x

    def requires(self, graph_module: fx.GraphModule) -> None:
        self._input(graph_module)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        x = self._input(graph_module)
        # default: the importance a conditioned metanetwork left (MetanetPass), else l2
        importance = self.importance or graph_module.meta.get(PRUNE_IMPORTANCE, "l2")
        result = prune(graph_module, x, speedup=self.speedup, importance=importance, round_to=self.round_to,
                       ignore=self.ignore, min_keep=self.min_keep, check=self.check, rules=self.rules)
        new_gm = result.module
        for key, value in graph_module.meta.items():
            if key.startswith("fxmeta.") and key not in new_gm.meta and key not in (IR, PRUNE_IMPORTANCE):
                new_gm.meta[key] = value  # carry state (the IR describes the old shapes: dropped)
        new_gm.meta[EXAMPLE_INPUT] = x
        new_gm.meta[PLAN] = result.plan
        new_gm.meta[SPEEDUP] = result.speedup
        return PassResult(new_gm, True)
