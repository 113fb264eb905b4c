"""LowerPass and RaisePass: the IR round trip as torch.fx passes."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxmeta.errors import FxmetaError
from fxmeta.ir import WeightGraph, raise_graph
from fxmeta.ir.lowering import lower

IR_KEY = "fxmeta.ir"
INPUT_KEY = "fxmeta.example_input"


def example_input_of(gm: fx.GraphModule, given: Any = None) -> Any:
    """The example input given to a pass, or the one stored in ``gm.meta``."""
    value = given if given is not None else gm.meta.get(INPUT_KEY)
    if value is None:
        raise FxmetaError(
            f"no example input: pass example_input= to the pass or set graph_module.meta[{INPUT_KEY!r}]"
        )
    return value


class LowerPass(PassBase):
    """Lowers the module to a WeightGraph and stores it in ``gm.meta["fxmeta.ir"]``.

    The module itself is unchanged (``PassResult.modified`` is False).
    """

    def __init__(self, example_input: Any = None) -> None:
        super().__init__()
        self.example_input = example_input

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        x = example_input_of(graph_module, self.example_input)
        graph_module.meta[INPUT_KEY] = x
        graph_module.meta.setdefault("fxmeta.traced", True)
        graph_module.meta.setdefault("fxmeta.auto_leaves", {})
        graph_module.meta[IR_KEY] = lower(graph_module, x, gm=graph_module)
        return PassResult(graph_module, False)


class RaisePass(PassBase):
    """Builds a new module from ``gm.meta["fxmeta.ir"]`` (e.g. after MetanetPass)."""

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.meta.get(IR_KEY)
        if not isinstance(graph, WeightGraph):
            raise FxmetaError("RaisePass needs an IR in graph_module.meta['fxmeta.ir']: run LowerPass first")
        out = raise_graph(graph)
        out.meta[INPUT_KEY] = graph_module.meta.get(INPUT_KEY)
        return PassResult(out, True)
