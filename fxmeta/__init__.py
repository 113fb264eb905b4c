"""fxmeta: prune PyTorch models with a graph metanetwork, as torch.fx passes.

Public API (imported lazily so ``import fxmeta`` stays fast)::

    fxmeta.trace(model, example_input)          -> fx.GraphModule with shapes
    fxmeta.lower(model, example_input)          -> WeightGraph (the IR)
    fxmeta.raise_graph(graph)                   -> fx.GraphModule with the IR's weights
    fxmeta.raise_params(graph)                  -> {name: tensor}, differentiable
    fxmeta.count_flops(model, example_input)    -> int
    fxmeta.prune(model, example_input, speedup) -> PruneResult
    fxmeta.Metanet.for_graph(graph, ...)        -> the graph metanetwork
    fxmeta.load(path)                           -> pruned module from a saved file
    fxmeta.build_zoo(...), fxmeta.meta_train(...), fxmeta.load_metanet(path)
"""
from __future__ import annotations

import importlib

from .errors import (
    FxmetaError,
    InputShapeError,
    OutputExistsError,
    PruningError,
    SpecError,
    UnsafeFileError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "trace": "fxmeta.tracing",
    "lower": "fxmeta.ir",
    "raise_graph": "fxmeta.ir",
    "raise_params": "fxmeta.ir",
    "WeightGraph": "fxmeta.ir",
    "count_flops": "fxmeta.flops",
    "prune": "fxmeta.pruner",
    "PruneResult": "fxmeta.pruner",
    "Metanet": "fxmeta.metanet",
    "load_metanet": "fxmeta.metanet",
    "meta_train": "fxmeta.meta_train",
    "build_zoo": "fxmeta.zoo",
    "load": "fxmeta.io",
    "save": "fxmeta.io",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fxmeta' has no attribute {name!r}")


__all__ = sorted(_LAZY) + [
    "FxmetaError",
    "InputShapeError",
    "OutputExistsError",
    "PruningError",
    "SpecError",
    "UnsafeFileError",
    "UnsupportedModelError",
]
