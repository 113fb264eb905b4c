"""MetanetPass: the graph metanetwork as a torch.fx pass over the IR in ``gm.meta``."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Sequence

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.errors import FxmetaError
from fxmeta.metanet import load_metanet_file, rewrite
from fxmeta.pipeline.stages import Rewrite, State
from fxmeta.pruning.spec import PruneSpec

from .base import FxmetaPass, require_ir

__all__ = ["MetanetPass", "load_metanet_file", "rewrite"]


class MetanetPass(FxmetaPass):
    """Rewrites ``gm.meta["fxmeta.ir"]`` with a trained metanetwork (one forward pass).

    Takes a ``Metanet`` or the path of a saved one. The module's own graph is untouched,
    but the IR it carries is replaced, so ``PassResult.modified`` is True; run RaisePass
    next to build the rewritten module. Requires an IR (LowerPass); ensures the new IR
    passes ``WeightGraph.check()``.

    A metanetwork conditioned on the prune (``fxmeta.metanet.condition``) needs the prune
    (``spec=``, a ``PruneSpec``, or a bare ``speedup``) and a few training ``batches`` of
    (x, y); it leaves the importance that prunes its output to the channels it was told in
    ``gm.meta["fxmeta.prune_importance"]``, which RaisePass carries and RemoveChannelsPass uses:
    give RemoveChannelsPass the same spec.
    """

    def __init__(self, metanet: Any, speedup: float | None = None, batches: Sequence[Any] = (), *,
                 spec: PruneSpec | None = None) -> None:
        super().__init__()
        if isinstance(metanet, (str, os.PathLike)):
            metanet = load_metanet_file(metanet)
        if not callable(metanet):
            raise TypeError(f"MetanetPass needs a Metanet or the path of a saved one, got {type(metanet).__name__}")
        if speedup is not None:
            spec = replace(spec or PruneSpec(), speedup=speedup)
        if getattr(metanet, "conditioned", False) and (spec is None or not batches):
            raise FxmetaError("this metanetwork is conditioned on the prune: give MetanetPass the prune (spec= or "
                              "speedup=) and a few training batches= of (x, y)")
        self.metanet, self.spec, self.batches = metanet, spec, list(batches)

    def requires(self, graph_module: fx.GraphModule) -> None:
        require_ir(graph_module, "MetanetPass")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        require_ir(graph_module, "MetanetPass")
        state = Rewrite(self.metanet, self.batches)(State.of(graph_module, self.spec or PruneSpec()))
        return PassResult(state.into(graph_module), True)
