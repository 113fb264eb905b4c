"""MetanetPass: the graph metanetwork as a torch.fx pass over the IR in ``gm.meta``."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxmeta.errors import FxmetaError, SpecError, UnsupportedModelError
from fxmeta.ir import WeightGraph

from .lower import IR_KEY


def load_metanet_file(path: str | os.PathLike) -> Any:
    """A trained metanetwork from ``path`` (written by ``fxmeta meta-train``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SpecError(f"no such metanetwork file: {path}; train one with 'fxmeta meta-train' or drop --metanet")
    from fxmeta.metanet import load_metanet

    return load_metanet(path)


class MetanetPass(PassBase):
    """Rewrites ``gm.meta["fxmeta.ir"]`` with a trained metanetwork (one forward pass).

    Takes a ``Metanet`` or the path of a saved one. The module itself is unchanged
    (``PassResult.modified`` is False): run RaisePass next to build the rewritten module.
    """

    def __init__(self, metanet: Any) -> None:
        super().__init__()
        if isinstance(metanet, (str, os.PathLike)):
            metanet = load_metanet_file(metanet)
        if not callable(metanet):
            raise TypeError(f"MetanetPass needs a Metanet or the path of a saved one, got {type(metanet).__name__}")
        self.metanet = metanet

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.meta.get(IR_KEY)
        if not isinstance(graph, WeightGraph):
            raise FxmetaError("MetanetPass needs an IR in graph_module.meta['fxmeta.ir']: run LowerPass first")
        graph_module.meta[IR_KEY] = rewrite(self.metanet, graph)
        return PassResult(graph_module, False)


def rewrite(metanet: Any, graph: WeightGraph) -> WeightGraph:
    """One metanetwork forward pass over ``graph``, without gradients, in eval mode."""
    was_training = getattr(metanet, "training", False)
    if hasattr(metanet, "eval"):
        metanet.eval()
    try:
        with torch.no_grad():
            out = metanet(graph)
    except FxmetaError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a layer kind the metanetwork was not trained on
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsupportedModelError(
            f"the metanetwork cannot rewrite this model ({type(exc).__name__}: {text}); "
            "use a metanetwork trained on this model family, or prune without one"
        ) from exc
    finally:
        if hasattr(metanet, "train"):
            metanet.train(was_training)
    if not isinstance(out, WeightGraph):
        raise FxmetaError(f"the metanetwork returned a {type(out).__name__}, not a WeightGraph")
    return out
