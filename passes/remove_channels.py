"""RemoveChannelsPass: structured pruning to a FLOPs target as a torch.fx pass."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.errors import PruningError
from fxmeta.keys import EXAMPLE_INPUT, IR, PLAN, PREPARED, PRUNE_IMPORTANCE
from fxmeta.pipeline.stages import RemoveChannels, State
from fxmeta.pruning.pruner import resolve_spec
from fxmeta.pruning.spec import PruneSpec

from .base import FxmetaPass

INPUT_KEY = EXAMPLE_INPUT
PLAN_KEY = PLAN


class RemoveChannelsPass(FxmetaPass):
    """Removes channels as ``spec`` says (a ``PruneSpec``; see ``fxmeta.prune``).

    Returns a new, smaller GraphModule (``modified`` True); the plan (plain data, replayable
    with ``fxmeta.pruning.apply_plan``) is stored in ``new_gm.meta["fxmeta.plan"]`` and the
    measured FLOPs ratio in ``new_gm.meta["fxmeta.speedup"]``. Requires an example input
    (``example_input=`` or ``graph_module.meta["fxmeta.example_input"]``); ensures the new
    graph lints. ``speedup`` and keyword ``settings`` (the spec's fields) override the spec.
    ``calibration`` feeds a data-aware spec (taylor / activation importance, compensation).
    After a conditioned metanetwork (MetanetPass, given the same spec) the units are ranked by the
    importance it left in ``gm.meta``: the spec's importance on the weights it was told, so the
    pass removes the channels the metanetwork was told.
    """

    def __init__(self, speedup: float | None = None, *, spec: PruneSpec | None = None, example_input: Any = None,
                 calibration: Any = None, check: bool = True, **settings: Any) -> None:
        super().__init__()
        self.spec = resolve_spec(spec, speedup, settings)
        self.example_input = example_input
        self.calibration = calibration
        self.check = check

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
        # after a conditioned metanetwork the state's importance is the spec's on the weights it was told
        state = RemoveChannels(self.calibration, self.check)(State.of(graph_module, self.spec, self._input(graph_module)))
        new_gm = state.module
        for key, value in graph_module.meta.items():
            if key.startswith("fxmeta.") and key not in new_gm.meta and key not in (IR, PRUNE_IMPORTANCE, PREPARED):
                new_gm.meta[key] = value  # carry state (the IR describes the old shapes: dropped)
        return PassResult(state.into(new_gm), True)
