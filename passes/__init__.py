"""fxmeta's stages as torch.fx passes (PassBase subclasses returning PassResult).

The passes are a thin layer over the library (``fxmeta.ir``, ``fxmeta.metanet``,
``fxmeta.pruning``); the library never imports them. State travels in
``graph_module.meta`` under the keys of ``fxmeta.keys``: ``"fxmeta.example_input"`` (set
it, or pass ``example_input=`` to LowerPass), ``"fxmeta.ir"`` (the WeightGraph, set by
LowerPass, rewritten by MetanetPass, consumed by RaisePass) and ``"fxmeta.plan"`` (set by
RemoveChannelsPass).

Every pass runs ``requires`` (its state is there) → ``call`` → ``ensures`` (the returned
module's graph lints and its IR, if any, passes ``WeightGraph.check()``), and reports
``modified=True`` when it changed the module or the IR it carries.

Under ``torch.fx.passes.infra.pass_manager.PassManager``:

* errors: PassManager re-raises whatever a pass raises as a plain ``Exception`` naming the
  pass; fxmeta's own error (``FxmetaError`` and its kinds, one line saying what to do) is
  its ``__cause__``.
* ``run_checks_after_each_pass=True`` runs the checks added with ``add_checks`` (e.g.
  ``check_ir`` below) on the module after every pass.
* ``steps > 1`` runs the whole list again while any pass reports ``modified``: every pass
  here changes something each time, so the list runs ``steps`` times. Lower → Raise is the
  identity and can repeat; MetanetPass and RemoveChannelsPass act again on each run
  (weights rewritten twice, channels removed twice), so keep ``steps=1`` for those (and
  for PreparePass, which trains again on every run).

Run them before ``torch.compile``: compile backends take parameters as graph inputs and
cannot change their shapes.
"""
from __future__ import annotations

import torch.fx as fx

from fxmeta.ir import WeightGraph
from fxmeta.keys import IR

from .base import FxmetaPass
from .lower import LowerPass, RaisePass
from .metanet import MetanetPass
from .prepare import PreparePass
from .remove_channels import RemoveChannelsPass


def check_ir(graph_module: fx.GraphModule) -> None:
    """A PassManager check (``add_checks``): the graph lints and the IR it carries, if any, is valid."""
    graph_module.graph.lint()
    graph = graph_module.meta.get(IR)
    if isinstance(graph, WeightGraph):
        graph.check()


__all__ = ["FxmetaPass", "LowerPass", "MetanetPass", "PreparePass", "RaisePass", "RemoveChannelsPass", "check_ir"]
