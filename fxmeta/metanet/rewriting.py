"""Apply a metanetwork: one forward pass over a model's IR, raised back to a module."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import FxmetaError, UnsupportedModelError
from ..ir.graph import WeightGraph
from ..ir.lowering import lower
from ..ir.raising import raise_graph
from ..tracing import eval_mode
from .files import load_metanet_file


def rewrite(metanet: Any, graph: WeightGraph) -> WeightGraph:
    """One metanetwork forward pass over ``graph``, without gradients, in eval mode."""
    try:
        with torch.no_grad(), eval_mode(metanet):
            out = metanet(graph)
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


def apply(metanet: Any, model: nn.Module, example_input: Any) -> fx.GraphModule:
    """``model`` with the weights ``metanet`` generates for it: lower, rewrite, raise.

    ``metanet`` is a Metanet or the path of a saved one. The model is left unchanged;
    the result is a new GraphModule with the same architecture.
    """
    if isinstance(metanet, (str, os.PathLike)):
        metanet = load_metanet_file(metanet)
    graph = lower(model, example_input)
    return raise_graph(rewrite(metanet, graph))
