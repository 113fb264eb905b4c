"""What every fxmeta pass shares: state keys, preconditions, postconditions."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxmeta.errors import FxmetaError
from fxmeta.ir import WeightGraph
from fxmeta.keys import EXAMPLE_INPUT, IR

IR_KEY = IR  # kept for code written against the first version of the passes
INPUT_KEY = EXAMPLE_INPUT


def example_input_of(gm: fx.GraphModule, given: Any = None) -> Any:
    """The example input given to a pass, or the one stored in ``gm.meta``."""
    value = given if given is not None else gm.meta.get(EXAMPLE_INPUT)
    if value is None:
        raise FxmetaError(
            f"no example input: pass example_input= to the pass or set graph_module.meta[{EXAMPLE_INPUT!r}]"
        )
    return value


def require_ir(gm: fx.GraphModule, who: str) -> WeightGraph:
    graph = gm.meta.get(IR)
    if not isinstance(graph, WeightGraph):
        raise FxmetaError(f"{who} needs an IR in graph_module.meta[{IR!r}]: run LowerPass first")
    return graph


class FxmetaPass(PassBase):
    """A PassBase whose ``ensures`` checks the module the pass returns.

    torch's ``PassBase.__call__`` hands ``ensures`` the input module; fxmeta's passes may
    return a new module (RaisePass, RemoveChannelsPass), and the postcondition is about
    that one. Every pass runs ``requires(gm)`` → ``call(gm)`` → ``ensures(result)``; the
    default ``ensures`` lints the graph and checks the IR when the module carries one.
    """

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        self.requires(graph_module)
        result = self.call(graph_module)
        self.ensures(result.graph_module)
        return result

    def ensures(self, graph_module: fx.GraphModule) -> None:
        graph_module.graph.lint()
        graph = graph_module.meta.get(IR)
        if isinstance(graph, WeightGraph):
            graph.check()
