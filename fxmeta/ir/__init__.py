"""The WeightGraph IR: the graph itself, lowering a traced model to it, raising it back, dumps."""
from .graph import IRError, Layer, Slot, WeightGraph
from .lowering import lower
from .raising import raise_graph, raise_params

__all__ = ["IRError", "Layer", "Slot", "WeightGraph", "lower", "raise_graph", "raise_params"]
