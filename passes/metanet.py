"""MetanetPass: the graph metanetwork as a torch.fx pass over the IR in ``gm.meta``."""
from __future__ import annotations

import os
from typing import Any

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.keys import IR
from fxmeta.metanet import load_metanet_file, rewrite

from .base import FxmetaPass, require_ir

__all__ = ["MetanetPass", "load_metanet_file", "rewrite"]


class MetanetPass(FxmetaPass):
    """Rewrites ``gm.meta["fxmeta.ir"]`` with a trained metanetwork (one forward pass).

    Takes a ``Metanet`` or the path of a saved one. The module's own graph is untouched,
    but the IR it carries is replaced, so ``PassResult.modified`` is True; run RaisePass
    next to build the rewritten module. Requires an IR (LowerPass); ensures the new IR
    passes ``WeightGraph.check()``.
    """

    def __init__(self, metanet: Any) -> None:
        super().__init__()
        if isinstance(metanet, (str, os.PathLike)):
            metanet = load_metanet_file(metanet)
        if not callable(metanet):
            raise TypeError(f"MetanetPass needs a Metanet or the path of a saved one, got {type(metanet).__name__}")
        self.metanet = metanet

    def requires(self, graph_module: fx.GraphModule) -> None:
        require_ir(graph_module, "MetanetPass")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph_module.meta[IR] = rewrite(self.metanet, require_ir(graph_module, "MetanetPass"))
        return PassResult(graph_module, True)
