"""Apply a metanetwork: one forward pass over a model's IR, raised back to a module."""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import FxmetaError, UnsupportedModelError
from ..ir.graph import WeightGraph
from ..ir.lowering import lower
from ..ir.raising import raise_graph
from ..pruning.spec import DATA_IMPORTANCE, PruneSpec
from ..tracing import eval_mode
from .files import load_metanet_file


def rewrite(metanet: Any, graph: WeightGraph, condition: Tensor | None = None) -> WeightGraph:
    """One metanetwork forward pass over ``graph``, without gradients, in eval mode."""
    return _guarded(metanet, lambda: metanet(graph) if condition is None else metanet(graph, condition))


def _guarded(metanet: Any, run: Any) -> WeightGraph:
    """``run()`` without gradients, ``metanet`` in eval mode, failures as clear errors."""
    try:
        with torch.no_grad(), eval_mode(metanet):
            out = run()
    except FxmetaError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a layer kind the metanetwork was not trained on
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsupportedModelError(
            f"the metanetwork cannot rewrite this model ({type(exc).__name__}: {text}); "
            "use a metanetwork trained on this model family, or prune without one"
        ) from exc
    if not isinstance(out, WeightGraph):
        raise FxmetaError(f"the metanetwork returned a {type(out).__name__}, not a WeightGraph")
    return out


def _load(metanet: Any) -> Any:
    return load_metanet_file(metanet) if isinstance(metanet, (str, os.PathLike)) else metanet


def apply(metanet: Any, model: nn.Module, example_input: Any) -> fx.GraphModule:
    """``model`` with the weights ``metanet`` generates for it: lower, rewrite, raise.

    ``metanet`` is a Metanet or the path of a saved one. The model is left unchanged;
    the result is a new GraphModule with the same architecture. A metanetwork conditioned
    on the prune needs the target and data: use :func:`apply_for_prune`.
    """
    metanet = _load(metanet)
    if getattr(metanet, "conditioned", False):
        raise FxmetaError("this metanetwork is conditioned on the prune: it needs the target speed-up and a few "
                          "training batches (fxmeta.metanet.rewriting.apply_for_prune, or --data on the command line)")
    graph = lower(model, example_input)
    return raise_graph(rewrite(metanet, graph))


def rewrite_for_prune(metanet: Any, graph: WeightGraph, example_input: Any, spec: PruneSpec | float,
                      batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[WeightGraph, Any]:
    """The metanetwork's rewrite of ``graph`` for the prune ``spec`` (a PruneSpec, or a bare
    speed-up for the default one), and the importance to prune it with.

    An unconditioned metanetwork rewrites as :func:`rewrite` and the spec's importance stays; a
    conditioned one (``fxmeta.metanet.condition``) is told the prune of the original weights the
    spec makes (its target, importance, ``round_to``, ``min_keep``, ``ignore`` and
    ``allocation``) and the masked-loss gradient on ``batches`` (its ``condition_batches``
    first ones), as many times as it was trained to rewrite (``config.steps``), and the returned
    importance makes ``fxmeta.prune(..., spec=spec)`` remove exactly the channels it was told.
    A data importance ("taylor", "activation") is not told: the metanetwork's prune is the l2
    one (what it was trained for)."""
    spec = (spec if isinstance(spec, PruneSpec) else PruneSpec(spec)).resolved(with_data=False, prepare=True)
    importance = spec.importance if spec.importance is not None and spec.importance not in DATA_IMPORTANCE else "l2"
    metanet = _load(metanet)
    if not getattr(metanet, "conditioned", False):
        return rewrite(metanet, graph), importance
    from .condition import Condition, rewrite_steps

    need = metanet.config.condition_batches
    batches = list(batches)[:need]
    if not batches:
        raise FxmetaError("this metanetwork is conditioned on the prune and needs training batches for its "
                          "gradient input; give data (--data)")
    condition = Condition(graph, example_input, spec.speedup, importance, spec.round_to, spec.min_keep, spec.ignore,
                          spec.allocation, spec.rules)
    out = _guarded(metanet, lambda: rewrite_steps(metanet, graph, condition, batches))
    return out, condition.importance()


def apply_for_prune(metanet: Any, model: nn.Module, example_input: Any, spec: PruneSpec | float,
                    batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[fx.GraphModule, Any]:
    """:func:`rewrite_for_prune` on ``model``: the rewritten module and the importance to prune it with."""
    rules = spec.rules if isinstance(spec, PruneSpec) else None
    graph, chosen = rewrite_for_prune(metanet, lower(model, example_input, rules=rules), example_input, spec, batches)
    return raise_graph(graph), chosen
