"""LowerPass and RaisePass: the IR round trip as torch.fx passes."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.keys import AUTO_LEAVES, TRACED
from fxmeta.pipeline.stages import Lower, Raise, State
from fxmeta.pruning.spec import PruneSpec

from .base import INPUT_KEY, IR_KEY, FxmetaPass, example_input_of, require_ir

__all__ = ["INPUT_KEY", "IR_KEY", "LowerPass", "RaisePass", "example_input_of"]


class LowerPass(FxmetaPass):
    """Lowers the module to a WeightGraph and stores it in ``gm.meta["fxmeta.ir"]``.

    The module's graph and weights are unchanged, but the IR is state this pass owns and
    (re)writes, so ``PassResult.modified`` is True. Needs an example input (argument or
    ``gm.meta["fxmeta.example_input"]``); ensures the IR passes ``WeightGraph.check()``.
    ``spec`` (a ``PruneSpec``) brings its channel ``rules`` to the lowering
    (``fxmeta.ir.lower(rules=)``), as the later passes given the same spec use them.
    """

    def __init__(self, example_input: Any = None, *, spec: Any = None) -> None:
        super().__init__()
        self.example_input = example_input
        self.spec = spec or PruneSpec()

    def requires(self, graph_module: fx.GraphModule) -> None:
        example_input_of(graph_module, self.example_input)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        x = example_input_of(graph_module, self.example_input)
        graph_module.meta.setdefault(TRACED, True)
        graph_module.meta.setdefault(AUTO_LEAVES, {})
        state = Lower(own_graph=True)(State.of(graph_module, self.spec, x))
        return PassResult(state.into(graph_module), True)


class RaisePass(FxmetaPass):
    """Builds a new module from ``gm.meta["fxmeta.ir"]`` (e.g. after MetanetPass).

    Needs an IR (run LowerPass first); returns a new module (``modified`` True) that carries
    the example input but not the IR, which describes the old module.
    """

    def requires(self, graph_module: fx.GraphModule) -> None:
        require_ir(graph_module, "RaisePass").check()

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        require_ir(graph_module, "RaisePass")
        # a conditioned metanetwork's importance (MetanetPass) travels on with the state
        state = Raise()(State.of(graph_module, PruneSpec()))
        return PassResult(state.into(state.module), True)
