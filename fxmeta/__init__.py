"""fxmeta: prune PyTorch models with a graph metanetwork, as torch.fx passes.

Public API (imported lazily so ``import fxmeta`` stays fast)::

    fxmeta.trace(model, example_input)          -> fx.GraphModule with shapes (model: nn.Module or
                                                   torch.export program; capture="auto"|"fx"|"export")
    fxmeta.lower(model, example_input)          -> WeightGraph (the IR)
    fxmeta.raise_graph(graph)                   -> fx.GraphModule with the IR's weights
    fxmeta.raise_params(graph)                  -> {name: tensor}, differentiable
    fxmeta.count_flops(model, example_input)    -> int
    fxmeta.prune(model, example_input, speedup) -> PruneResult   (spec=fxmeta.PruneSpec(...),
                                                   calibration=batches for data importance / compensation)
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
    "trace": "fxmeta.capture",
    "lower": "fxmeta.ir.lowering",
    "raise_graph": "fxmeta.ir.raising",
    "raise_params": "fxmeta.ir.raising",
    "WeightGraph": "fxmeta.ir.graph",
    "count_flops": "fxmeta.pruning.flops",
    "prune": "fxmeta.pruning.pruner",
    "PruneResult": "fxmeta.pruning.pruner",
    "PruneSpec": "fxmeta.pruning.spec",
    "Calibration": "fxmeta.pruning.calibration",
    "prepare": "fxmeta.training.prepare",
    "prunability_curve": "fxmeta.training.curve",
    "Metanet": "fxmeta.metanet.model",
    "load_metanet": "fxmeta.metanet.files",
    "meta_train": "fxmeta.metatrain.loop",
    "build_zoo": "fxmeta.metatrain.zoo",
    "load": "fxmeta.io.files",
    "save": "fxmeta.io.saving",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        # Cached as a real attribute: later accesses never reach this hook, and no submodule
        # shares a public name (a submodule import would overwrite the attribute).
        globals()[name] = value
        return value
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
