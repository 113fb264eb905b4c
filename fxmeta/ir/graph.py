"""The WeightGraph IR: one node per channel, one edge per weight slice, stored by layer.

A network becomes a graph whose nodes are channels (of every conv / linear / norm
layer, of the model inputs, and of junctions such as residual adds) and whose edges
are weight slices between two channels. Edges are never stored one by one: the edges
of one layer form a dense block, so a layer keeps

* ``src``: the node id of each of its input channels,
* ``edge``: its edge features as a tensor ``(out, in_per_group, k)`` — for a conv this is
  the weight viewed as ``(out, in/groups, kh*kw)``, for a linear fed by a flatten
  ``(out, channels, h*w)``, for a residual add ``(out, operands, 1)`` of ones,
* ``node``: per-channel features ``(out, F)`` (bias, folded norm parameters and
  running statistics), named by ``node_cols``.

Edge ``(o, j)`` of a layer with ``groups`` groups joins node
``src[(o // (out // groups)) * in_per_group + j]`` to node ``start + o``: one formula for
dense (groups=1), grouped, depthwise (in_per_group=1) and junction (groups=out) blocks.

Every parameter and buffer of the model has exactly one slot: either a place in a
layer's ``edge``/``node`` table or an entry of ``passthrough`` (things the IR does not
model: embeddings, class tokens, attention projections, counters). ``raise_params``
rebuilds all of them from the tables, differentiably; ``raise_graph`` builds a module.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
from torch import Tensor


@dataclass
class Layer:
    """One block of nodes (the channels a layer produces) and the edges that feed it."""

    name: str
    op: str
    node_kind: str
    start: int
    count: int
    edge_kind: str | None = None
    src: Tensor | None = None
    groups: int = 1
    edge: Tensor | None = None
    node: Tensor | None = None
    node_cols: tuple[str, ...] = ()
    learned_edges: bool = True  # False for structural edges (residual adds, norms)

    @property
    def stop(self) -> int:
        return self.start + self.count

    @property
    def num_edges(self) -> int:
        return 0 if self.edge is None else self.edge.shape[0] * self.edge.shape[1]

    def edge_index(self) -> Tensor:
        """The (2, E) list of (src, dst) node ids of this layer's edges, row-major in (o, j)."""
        if self.edge is None:
            return torch.empty(2, 0, dtype=torch.long)
        out, per_group = self.edge.shape[0], self.edge.shape[1]
        o = torch.arange(out).repeat_interleave(per_group)
        j = torch.arange(per_group).repeat(out)
        src = self.src[(o // (out // self.groups)) * per_group + j]
        return torch.stack([src, o + self.start])


@dataclass(frozen=True)
class Slot:
    """Where one model tensor lives in the IR.

    ``table`` is "edge" or "node" of ``layers[layer]``; ``col`` the node column;
    ``layout`` how the tensor maps onto the table: "reshape" (the table is the tensor
    viewed in another shape), "transposed" (a transposed conv's weight, groups first),
    "column".
    """

    layer: int
    table: str
    col: int | None
    layout: str
    shape: tuple[int, ...]
    groups: int = 1
    buffer: bool = False  # running statistics: raised detached, they are not learned


@dataclass
class WeightGraph:
    """The IR. ``module`` is the traced fx.GraphModule the graph was lowered from."""

    module: fx.GraphModule
    layers: list[Layer]
    slots: dict[str, Slot]
    passthrough: dict[str, Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    outputs: list[Tensor] = field(default_factory=list)
    frozen: dict[str, str] = field(default_factory=dict)

    # -- structure -----------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.layers[-1].stop if self.layers else 0

    @property
    def num_edges(self) -> int:
        return sum(layer.num_edges for layer in self.layers)

    @property
    def node_kinds(self) -> list[str]:
        return sorted({layer.node_kind for layer in self.layers})

    @property
    def edge_kinds(self) -> list[str]:
        return sorted({layer.edge_kind for layer in self.layers if layer.edge_kind})

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}")

    def edge_index(self) -> Tensor:
        """All edges as a (2, E) tensor of (src, dst) node ids, layer by layer."""
        parts = [layer.edge_index() for layer in self.layers if layer.edge is not None]
        return torch.cat(parts, dim=1) if parts else torch.empty(2, 0, dtype=torch.long)

    def layer_of_node(self, ids: Tensor) -> Tensor:
        """Index of the layer that owns each node id."""
        starts = torch.tensor([layer.start for layer in self.layers])
        return torch.searchsorted(starts, ids.contiguous(), right=True) - 1

    def with_features(self, edges: list[Tensor | None], nodes: list[Tensor | None]) -> "WeightGraph":
        """Same structure, new feature tensors (one entry per layer; None keeps no table)."""
        layers = [replace(layer, edge=e, node=n) for layer, e, n in zip(self.layers, edges, nodes)]
        return replace(self, layers=layers)

    # -- checking ----------------------------------------------------------------------
    def check(self) -> None:
        """Validate shapes, node numbering and that every model tensor has exactly one slot."""
        expect = 0
        for i, layer in enumerate(self.layers):
            where = f"layer {i} ({layer.name})"
            _require(layer.start == expect, f"{where}: starts at node {layer.start}, expected {expect}")
            _require(layer.count >= 0, f"{where}: negative node count")
            expect = layer.stop
            if layer.edge is not None:
                _require(layer.edge.dim() == 3, f"{where}: edge table must be (out, in_per_group, k)")
                out, per_group = layer.edge.shape[:2]
                _require(out == layer.count, f"{where}: edge table has {out} rows for {layer.count} nodes")
                _require(layer.groups >= 1 and out % layer.groups == 0, f"{where}: groups do not divide out")
                _require(layer.src is not None and layer.src.numel() == layer.groups * per_group,
                         f"{where}: src has {0 if layer.src is None else layer.src.numel()} ids, "
                         f"expected {layer.groups * per_group}")
                _require(bool((layer.src >= 0).all()) and bool((layer.src < layer.start).all()),
                         f"{where}: src ids must name earlier nodes")
            if layer.node is not None:
                _require(layer.node.shape == (layer.count, len(layer.node_cols)),
                         f"{where}: node table {tuple(layer.node.shape)} does not match "
                         f"({layer.count}, {len(layer.node_cols)})")
        state = self.module.state_dict(keep_vars=True)
        claimed = set(self.slots) | set(self.passthrough) | set(self.aliases)
        overlap = (set(self.slots) & set(self.passthrough)) | (set(self.aliases) & (set(self.slots) | set(self.passthrough)))
        _require(not overlap, f"tensors with more than one slot: {sorted(overlap)[:5]}")
        missing = set(state) - claimed
        _require(not missing, f"model tensors without a slot: {sorted(missing)[:5]}")
        extra = claimed - set(state)
        _require(not extra, f"slots for tensors the model does not have: {sorted(extra)[:5]}")
        regions: set[tuple] = set()
        for name, slot in self.slots.items():
            layer = self.layers[slot.layer]
            table = layer.edge if slot.table == "edge" else layer.node
            _require(table is not None, f"{name}: slot points at a missing {slot.table} table")
            numel = table.shape[0] if slot.layout == "column" else table.numel()
            _require(numel == state[name].numel() and tuple(state[name].shape) == slot.shape,
                     f"{name}: slot covers {numel} elements of shape {slot.shape}, tensor has "
                     f"{state[name].numel()} of shape {tuple(state[name].shape)}")
            region = (slot.layer, slot.table, slot.col)
            _require(region not in regions, f"{name}: shares its slot with another tensor")
            regions.add(region)
        for layer_i, layer in enumerate(self.layers):
            if layer.edge is not None and layer.learned_edges:
                _require((layer_i, "edge", None) in regions, f"layer {layer.name}: learned edges without a slot")
            for col in range(len(layer.node_cols)):
                _require((layer_i, "node", col) in regions, f"layer {layer.name}: node column {col} without a slot")

    def __repr__(self) -> str:
        return (f"WeightGraph({type(self.module).__name__}: {self.num_nodes} nodes, {self.num_edges} edges, "
                f"{len(self.layers)} layers, {len(self.passthrough)} passthrough tensors)")


class IRError(ValueError):
    """The IR is malformed (raised by WeightGraph.check)."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise IRError(message)
