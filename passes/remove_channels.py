"""RemoveChannelsPass: structured pruning to a FLOPs target as a torch.fx pass."""
from __future__ import annotations

from typing import Any, Sequence

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxmeta.errors import PruningError
from fxmeta.pruning.pruner import Importance, prune

INPUT_KEY = "fxmeta.example_input"
PLAN_KEY = "fxmeta.plan"


class RemoveChannelsPass(PassBase):
    """Removes channels until FLOPs drop by ``speedup`` (see ``fxmeta.pruning.pruner.prune``).

    Returns a new, smaller GraphModule; the plan (plain data, replayable with
    ``fxmeta.pruning.pruner.apply_plan``) is stored in ``new_gm.meta["fxmeta.plan"]`` and the
    measured FLOPs ratio in ``new_gm.meta["fxmeta.speedup"]``. The example input comes
    from ``example_input=`` or ``graph_module.meta["fxmeta.example_input"]``.
    """

    def __init__(
        self,
        speedup: float = 2.0,
        importance: str | Importance = "l2",
        example_input: Any = None,
        round_to: int | None = None,
        ignore: Sequence[str] = (),
        min_keep: float = 0.1,
        check: bool = True,
    ) -> None:
        super().__init__()
        self.speedup = speedup
        self.importance = importance
        self.example_input = example_input
        self.round_to = round_to
        self.ignore = tuple(ignore)
        self.min_keep = min_keep
        self.check = check

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        x = self.example_input if self.example_input is not None else graph_module.meta.get(INPUT_KEY)
        if x is None:
            raise PruningError(
                f"RemoveChannelsPass needs an example input: pass example_input= or set graph_module.meta[{INPUT_KEY!r}]"
            )
        result = prune(graph_module, x, speedup=self.speedup, importance=self.importance, round_to=self.round_to,
                       ignore=self.ignore, min_keep=self.min_keep, check=self.check)
        new_gm = result.module
        for key, value in graph_module.meta.items():
            if key.startswith("fxmeta.") and key not in new_gm.meta and key != "fxmeta.ir":
                new_gm.meta[key] = value  # carry state (the IR describes the old shapes: dropped)
        new_gm.meta[INPUT_KEY] = x
        new_gm.meta[PLAN_KEY] = result.plan
        new_gm.meta["fxmeta.speedup"] = result.speedup
        return PassResult(new_gm, True)
