"""The graph metanetwork: a WeightGraph in, a WeightGraph of the same shape out.

Message passing with edge features. Per layer, with
``x = LayerNorm(h)`` and ``a, b, c, D = SiLU(Linear(x))``:

* forward messages along each edge j -> i: ``m_ij = a_i * b_j * e_ij``, aggregated at i
  with mean, std, max and min; backward messages i -> j: ``a_j * b_i * (s * e_ij)`` where
  ``s`` flips the sign of half the channels so the two directions are distinguishable;
  both use the same weights and ``h += down(agg_fwd) + down(agg_bwd)``, then a pre-norm
  MLP block;
* edge update (both directions, as in the reference code):
  ``e_ij += C(x_j) * D(x_i) * e_ij + C(x_i) * D(x_j) * e_ij``.

Encoders and decoders exist per node kind and per edge kind, so any kernel size and
layer type works; kinds without features get a learned embedding. Outputs are
``input + ratio * scale * decoder(h)`` for learned tables only; structural edges and
buffers (running statistics) pass through unchanged. A conditioned metanet with a
gradient-step head (``step_lr > 0``) also moves every learned table by
``-lr * u_i * v_j * g_ij``, g the masked-loss gradient it was given
(``Condition.observe``) and u, v per-channel sizes from a linear head on ``h``: with zero
decoders and a zero head it is exactly SGD at ``lr``, so training starts from that baseline.

Scale: edges are never stored as a flat list. Each layer's edge block is cut into chunks
of whole output rows, and one autograd.Function per block (``BlockPass`` in
``fxmeta.metanet.kernels``) computes all aggregations and the edge update chunk by chunk
with dense ops, saving only its inputs; its backward recomputes each chunk (gradient
checkpointing at chunk granularity, with a hand-written backward so no (out, in, width)
intermediate is ever kept). Receiver factors
(``a_i``) are applied after aggregation (``max(a*t) = a*max(t)`` for ``a >= 0``,
``a*min(t)`` otherwise), so chunks never depend on them. Edge states live in the layout
``(groups, rows, width, in)``: every reduction is then over the first or the last dim,
where torch's CPU kernels are fast. The last layer's pass also applies the last edge
update and the edge decoder (one read of each chunk, one gradient per edge state).

Memory: the stored edge states, (depth - 1) x edges x width floats, plus a few
chunk-sized buffers. Edge states, their gradients and decoded edges come from a pool
(``fxmeta.metanet.pool``) that reuses the previous step's memory instead of faulting in
fresh pages every step: on graphs of ResNet50's size, page faults were a large part of the
forward time.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FxmetaError
from ..ir.graph import WeightGraph
from .kernels import Block, BlockPass, Workspace, kernel_plan
from .pool import TensorPool
from .scatter import has_torch_scatter, pna, scatter_stats

FORMAT = "fxmeta.metanet/1"
_EPS = 1e-5


@dataclass
class MetanetConfig:
    """Everything needed to rebuild a Metanet: sizes and the kinds it knows.

    ``node_kinds`` maps a node kind to its feature column names (empty: no features),
    ``edge_kinds`` an edge kind to its feature width k.
    """

    node_kinds: dict[str, list[str]] = field(default_factory=dict)
    edge_kinds: dict[str, int] = field(default_factory=dict)
    width: int = 32
    depth: int = 6
    ratio: float = 0.01
    # elements (rows x in x width) per chunk of an edge block: 4 MiB chunks stay in L3, and a
    # ResNet50 layer is ~250 chunks (every torch op is a thread-pool region; fewer, larger ones
    # suffer less when threads wait for each other on a busy machine)
    chunk: int = 1 << 20
    # node inputs that announce the prune (fxmeta.metanet.condition); 0: an unconditioned metanet
    condition: int = 0
    condition_batches: int = 2  # training batches its gradient input is taken on
    # rewrites per use, each told the gradient at the previous one's weights (metanet.condition.rewrite_steps)
    steps: int = 1
    # > 0: a gradient-step head (a conditioned metanet only): every table also moves by
    # -lr * u_i * v_j * gradient, u and v learned per node (1 at the start), lr learned from this value;
    # with zero-initialised decoders the metanet then starts as exactly this SGD step
    step_lr: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetanetConfig":
        data = dict(data)
        data["node_kinds"] = {k: list(v) for k, v in data["node_kinds"].items()}
        data["edge_kinds"] = {k: int(v) for k, v in data["edge_kinds"].items()}
        return cls(**data)


def kinds_of(graph: WeightGraph) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The node kinds (with their columns) and edge kinds (with k) of a graph."""
    nodes: dict[str, list[str]] = {}
    edges: dict[str, int] = {}
    for layer in graph.layers:
        cols = list(layer.node_cols) if layer.node is not None else []
        if nodes.setdefault(layer.node_kind, cols) != cols:
            raise FxmetaError(f"node kind {layer.node_kind!r} has columns {nodes[layer.node_kind]} and {cols} "
                              "in the same graph; the lowering must give one column layout per kind")
        if layer.edge is not None:
            k = int(layer.edge.shape[2])
            if edges.setdefault(layer.edge_kind, k) != k:
                raise FxmetaError(f"edge kind {layer.edge_kind!r} has feature widths {edges[layer.edge_kind]} "
                                  f"and {k} in the same graph")
    return nodes, edges


def _key(kind: str) -> str:
    return kind.replace(".", "_")  # module names cannot contain dots


def _mlp_decoder(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width, elementwise_affine=False), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, out))


class _NodeCodec(nn.Module):
    """Encoder (or learned embedding when the kind has no features) and decoder of one node kind."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        if features:
            self.enc = nn.Linear(features, width)
            self.dec = _mlp_decoder(width, features)
        else:
            self.emb = nn.Parameter(torch.randn(width) * 0.5)


class _EdgeCodec(nn.Module):
    """Encoder k -> width and decoder width -> k of one edge kind."""

    def __init__(self, k: int, width: int) -> None:
        super().__init__()
        self.enc = nn.Linear(k, width)
        self.dec = _mlp_decoder(width, k)


class _MPLayer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.abcd = nn.Linear(width, 4 * width)  # receiver A, sender B, edge factors C and D
        self.down = nn.Linear(4 * width, width)
        self.mlp = nn.Sequential(nn.LayerNorm(width, elementwise_affine=False), nn.Linear(width, 2 * width),
                                 nn.SiLU(), nn.Linear(2 * width, width))


# -- the metanetwork -------------------------------------------------------------------------------
class Metanet(nn.Module):
    """Graph metanetwork over WeightGraphs of the node and edge kinds it was built for."""

    def __init__(self, config: MetanetConfig, scatter: str = "auto") -> None:
        super().__init__()
        self.config = config
        if scatter not in ("auto", "torch", "torch_scatter"):
            raise FxmetaError(f"scatter must be 'auto', 'torch' or 'torch_scatter', got {scatter!r}")
        if scatter == "auto":
            scatter = "torch_scatter" if has_torch_scatter() else "torch"
        self.scatter = scatter
        if config.depth < 1 or config.width < 1:
            raise FxmetaError(f"a metanet needs depth >= 1 and width >= 1, got depth {config.depth}, "
                              f"width {config.width}")
        d = config.width
        self.node_codecs = nn.ModuleDict({_key(k): _NodeCodec(len(c), d) for k, c in config.node_kinds.items()})
        self.edge_codecs = nn.ModuleDict({_key(k): _EdgeCodec(n, d) for k, n in config.edge_kinds.items()})
        if len(self.node_codecs) != len(config.node_kinds) or len(self.edge_codecs) != len(config.edge_kinds):
            raise FxmetaError("two kinds differ only by '.' vs '_'; rename one of them in the lowering")
        self.layers = nn.ModuleList(_MPLayer(d) for _ in range(config.depth))
        if config.condition:
            self.condition = nn.Linear(config.condition, d)  # added to every node's encoding
        if config.step_lr < 0 or config.steps < 1 or (config.step_lr and not config.condition):
            raise FxmetaError(f"a metanet needs steps >= 1 and step_lr >= 0, and a gradient-step head only works "
                              f"conditioned; got steps {config.steps}, step_lr {config.step_lr}, condition "
                              f"{config.condition}")
        if config.step_lr:
            self.step_head = nn.Linear(d, 2)  # per node: its step scale as a receiver (u) and as a sender (v)
            nn.init.zeros_(self.step_head.weight)
            nn.init.zeros_(self.step_head.bias)
            self.log_step_lr = nn.Parameter(torch.tensor(math.log(config.step_lr)))
        self.register_buffer("flip", torch.cat([torch.ones(d // 2), -torch.ones(d - d // 2)]), persistent=False)
        # edge states, their gradients and decoded edges reuse the previous step's memory (metanet/pool.py);
        # ``net.pool.clear()`` hands it back
        self.pool = TensorPool()

    @classmethod
    def for_graph(cls, graph: WeightGraph, width: int = 32, depth: int = 6, ratio: float = 0.01,
                  chunk: int = 1 << 20, scatter: str = "auto", condition: int = 0, **config: Any) -> "Metanet":
        """A metanet for the node and edge kinds of ``graph`` (kinds are stored in its config); ``config``:
        further MetanetConfig fields (``steps``, ``step_lr``, ...)."""
        nodes, edges = kinds_of(graph)
        return cls(MetanetConfig(nodes, edges, width, depth, ratio, chunk, condition, **config), scatter=scatter)

    def zero_outputs(self, edges: bool = True, nodes: bool = True) -> None:
        """Set the decoders' last layers to zero: the metanet becomes the identity on graphs.

        Why: with a zero last layer the first steps start from the network itself, so ``ratio``
        can be large (1: changes of the weights' own size) without an untrained metanet
        scrambling the network; the last layer still gets gradients and moves first.
        """
        codecs = ([*self.edge_codecs.values()] if edges else []) + ([*self.node_codecs.values()] if nodes else [])
        with torch.no_grad():
            for codec in codecs:
                if hasattr(codec, "dec"):
                    codec.dec[3].weight.zero_()
                    codec.dec[3].bias.zero_()

    def check_graph(self, graph: WeightGraph) -> None:
        """Raise FxmetaError unless every kind of ``graph`` is one this metanet knows."""
        nodes, edges = kinds_of(graph)
        known_n, known_e = self.config.node_kinds, self.config.edge_kinds
        for kind, cols in nodes.items():
            if kind not in known_n or list(known_n[kind]) != cols:
                raise FxmetaError(
                    f"node kind {kind!r} (columns {cols}) is unknown to this metanet, which was built for "
                    f"{sorted(known_n)}; meta-train a metanet on models of this family")
        for kind, k in edges.items():
            if known_e.get(kind) != k:
                raise FxmetaError(
                    f"edge kind {kind!r} (k={k}) is unknown to this metanet, which was built for "
                    f"{sorted(known_e)}; meta-train a metanet on models of this family")

    # -- forward ------------------------------------------------------------------------------
    @property
    def conditioned(self) -> bool:
        return self.config.condition > 0

    def forward(self, graph: WeightGraph, condition: Any = None) -> WeightGraph:
        """A graph of the same structure with new features, differentiable w.r.t. this module.

        The input graph is data: no gradient flows into its tables. A conditioned metanet
        (``config.condition > 0``) also takes the (nodes, condition) features of
        ``fxmeta.metanet.condition.Condition.features``, or the ``Observation`` of
        ``Condition.observe`` (which a gradient-step head needs: it holds the gradients).
        """
        self.check_graph(graph)
        seen = None
        if hasattr(condition, "features"):
            seen, condition = condition, condition.features
        if self.config.step_lr and seen is None:
            raise FxmetaError("this metanet takes a gradient step: give it Condition.observe(...), not the features")
        if self.conditioned:
            if condition is None or tuple(condition.shape) != (graph.num_nodes, self.config.condition):
                got = "none" if condition is None else tuple(condition.shape)
                raise FxmetaError(f"this metanet is conditioned on the prune: it needs a ({graph.num_nodes}, "
                                  f"{self.config.condition}) condition (fxmeta.metanet.condition), got {got}")
        elif condition is not None:
            raise FxmetaError("this metanet is not conditioned on the prune; call it without a condition")
        d, layers, n_nodes = self.config.width, graph.layers, graph.num_nodes
        dtype = self.flip.dtype
        blocks = kernel_plan(graph, d, self.config.chunk)
        edge_scale = self._edge_scales(graph, dtype)
        raw = [layers[b.layer].edge.detach().to(dtype).view(b.groups, b.rows, b.cols, b.k) for b in blocks]
        encs = [self._enc_params(layers[b.layer].edge_kind, edge_scale) for b in blocks]
        srcs = [layers[b.layer].src for b in blocks]
        src_all = torch.cat(srcs) if blocks else torch.zeros(0, dtype=torch.long)
        count_fwd = torch.zeros(n_nodes, dtype=dtype)
        count_bwd = torch.zeros(n_nodes, dtype=dtype)
        for b, src in zip(blocks, srcs):
            layer = layers[b.layer]
            count_fwd[layer.start:layer.stop] = b.cols
            count_bwd.index_add_(0, src, torch.full((src.numel(),), float(b.rows), dtype=dtype))

        self.pool.trim()
        ws = Workspace(max((b.max_chunk for b in blocks), default=0) * d, dtype, self.pool)
        ws.reuse_grads = True
        h = self._encode_nodes(graph, dtype)
        if condition is not None:
            h = h + self.condition(condition.detach().to(dtype))
        states: list[Tensor | None] = [None] * len(blocks)
        decoded: list[Tensor | None] = [None] * len(blocks)
        for depth, mp in enumerate(self.layers):
            update = depth < len(self.layers) - 1
            act = F.silu(mp.abcd(mp.norm(h)))
            a, p = act[:, :d], act[:, d:]  # p = [b, c, D]
            src_p = p[src_all].split([s.numel() for s in srcs])
            dst_p = p.split([layer.count for layer in layers])
            fwd_parts, bwd_parts = [], []
            for i, b in enumerate(blocks):
                vs = src_p[i].view(b.groups, 1, b.cols, 3 * d).transpose(2, 3).contiguous()
                vd = dst_p[b.layer].view(b.groups, b.rows, 3 * d, 1)
                x, (w, bias) = (raw[i], encs[i]) if states[i] is None else (states[i], (None, None))
                # the last layer's pass also applies the last edge update and the edge decoder
                dec = self._edge_decoder(layers[b.layer].edge_kind, edge_scale) if not update and b.learned \
                    else [None] * 4
                fwd, bwd, new, decoded[i] = BlockPass.apply(x, vs, vd, w, bias, *dec, b, update, ws)
                fwd_parts.append((layers[b.layer].start, fwd.reshape(-1, 4, d)))
                bwd_parts.append(bwd.reshape(-1, 4, d))
                if update:
                    states[i] = new
            fwd_stats = self._node_order(fwd_parts, n_nodes, d, dtype)
            if bwd_parts:
                bwd_stats = scatter_stats(torch.cat(bwd_parts), src_all, n_nodes, self.scatter)
            else:
                bwd_stats = torch.zeros(n_nodes, 4, d, dtype=dtype)
            h = h + mp.down(pna(fwd_stats, count_fwd, a)) + mp.down(pna(bwd_stats, count_bwd, a * self.flip))
            h = h + mp.mlp(h)

        learned = learned_columns(graph)
        new_edges = self._decoded_edges(graph, blocks, decoded)
        new_nodes = self._decode_nodes(graph, h, learned)
        if seen is not None and self.config.step_lr:
            new_edges, new_nodes = self._gradient_step(graph, h, seen, new_edges, new_nodes, learned)
        return graph.with_features(new_edges, new_nodes)

    def _gradient_step(self, graph: WeightGraph, h: Tensor, seen: Any, edges: list, nodes: list,
                       learned: dict[int, Tensor]) -> tuple[list, list]:
        """Add ``-lr * u_i * v_j * g_ij`` to every learned edge (i receives, j sends) and ``-lr * u_i * g_i``
        to the learned columns of every node table: an SGD step whose per-channel sizes the metanet sets."""
        scale = F.softplus(self.step_head(h) + math.log(math.e - 1))  # 1 at the start
        lr = self.log_step_lr.exp()
        u, v = scale[:, 0], scale[:, 1]
        edges, nodes = list(edges), list(nodes)
        for index, (layer, ge, gn) in enumerate(zip(graph.layers, seen.edges, seen.nodes)):
            if ge is not None and layer.edge is not None and layer.learned_edges:
                rows, cols = layer.edge.shape[:2]
                src = layer.edge_index()[0].view(rows, cols, 1)
                size = u[layer.start:layer.stop].view(rows, 1, 1) * v[src]
                edges[index] = edges[index] - (lr * size * ge.to(h.dtype)).to(layer.edge.dtype)
            mask = learned.get(index)
            if gn is not None and nodes[index] is not None and mask is not None and bool(mask.any()):
                step = lr * u[layer.start:layer.stop, None] * gn.to(h.dtype)
                nodes[index] = torch.where(mask, nodes[index] - step.to(layer.node.dtype), nodes[index])
        return edges, nodes

    @staticmethod
    def _node_order(parts: list[tuple[int, Tensor]], n: int, d: int, dtype: torch.dtype) -> Tensor:
        pieces, at = [], 0
        for start, value in parts:
            if start > at:
                pieces.append(torch.zeros(start - at, 4, d, dtype=dtype))
            pieces.append(value)
            at = start + value.shape[0]
        if at < n:
            pieces.append(torch.zeros(n - at, 4, d, dtype=dtype))
        return torch.cat(pieces)

    def _edge_scales(self, graph: WeightGraph, dtype: torch.dtype) -> dict[str, Tensor]:
        """Root-mean-square of each edge kind's features in this graph (1 where all zero)."""
        sums: dict[str, list[Tensor]] = {}
        for layer in graph.layers:
            if layer.edge is not None and layer.edge.numel():
                e = layer.edge.detach().to(dtype)
                acc = sums.setdefault(layer.edge_kind, [e.new_zeros(()), e.new_zeros(())])
                acc[0] = acc[0] + (e * e).sum()
                acc[1] = acc[1] + e.numel()
        return {kind: _safe_scale(torch.sqrt(s / n)) for kind, (s, n) in sums.items()}

    def _enc_params(self, kind: str, scales: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        enc = self.edge_codecs[_key(kind)].enc
        return enc.weight / scales[kind], enc.bias  # normalising the input = scaling the weight

    @staticmethod
    def _node_scales(graph: WeightGraph, dtype: torch.dtype) -> dict[str, Tensor]:
        """Per-column root-mean-square of each node kind's features in this graph."""
        sums: dict[str, list[Tensor]] = {}
        for layer in graph.layers:
            if layer.node is not None and layer.node.numel():
                x = layer.node.detach().to(dtype)
                acc = sums.setdefault(layer.node_kind, [x.new_zeros(x.shape[1]), 0])
                acc[0] = acc[0] + (x * x).sum(0)
                acc[1] += x.shape[0]
        return {kind: _safe_scale(torch.sqrt(s / n)) for kind, (s, n) in sums.items()}

    def _encode_nodes(self, graph: WeightGraph, dtype: torch.dtype) -> Tensor:
        scales = self._node_scales(graph, dtype)
        parts = []
        for layer in graph.layers:
            codec = self.node_codecs[_key(layer.node_kind)]
            if hasattr(codec, "enc"):
                parts.append(codec.enc(layer.node.detach().to(dtype) / scales[layer.node_kind]))
            else:
                parts.append(codec.emb.expand(layer.count, -1))
        return torch.cat(parts) if parts else torch.zeros(0, self.config.width, dtype=dtype)

    def _edge_decoder(self, kind: str, scales: dict[str, Tensor]) -> list[Tensor]:
        """The edge decoder's two linears, the last one scaled by ratio * scale: it yields the change."""
        dec = self.edge_codecs[_key(kind)].dec
        step = self.config.ratio * scales[kind]
        return [dec[1].weight, dec[1].bias, dec[3].weight * step, dec[3].bias * step]

    def _decoded_edges(self, graph: WeightGraph, blocks: list[Block],
                       decoded: list[Tensor | None]) -> list[Tensor | None]:
        """Edge tables: input + ratio * scale * decoded for every learned block (the decoder applied the
        factor to its last linear, which saves a pass and a table-sized buffer each way)."""
        edges = [layer.edge for layer in graph.layers]
        for b, delta in zip(blocks, decoded):
            layer = graph.layers[b.layer]
            if delta is not None:
                edges[b.layer] = layer.edge.detach() + delta.view(layer.edge.shape).to(layer.edge.dtype)
        return edges

    def _decode_nodes(self, graph: WeightGraph, h: Tensor, learned: dict[int, Tensor]) -> list[Tensor | None]:
        scales = self._node_scales(graph, h.dtype)
        nodes: list[Tensor | None] = []
        for index, (layer, hl) in enumerate(zip(graph.layers, h.split([la.count for la in graph.layers]))):
            mask = learned.get(index)
            if layer.node is None or mask is None or not bool(mask.any()):
                nodes.append(layer.node)
                continue
            codec = self.node_codecs[_key(layer.node_kind)]
            delta = codec.dec(hl) * (self.config.ratio * scales[layer.node_kind])
            x = layer.node.detach()
            nodes.append(torch.where(mask, x + delta.to(x.dtype), x))
        return nodes


def _safe_scale(s: Tensor) -> Tensor:
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def learned_columns(graph: WeightGraph) -> dict[int, Tensor]:
    """For each layer with a node table: which columns hold parameters (not buffers)."""
    params = {name for name, _ in graph.module.named_parameters(remove_duplicate=False)}
    masks: dict[int, Tensor] = {}
    for name, slot in graph.slots.items():
        if slot.table != "node":
            continue
        layer = graph.layers[slot.layer]
        mask = masks.setdefault(slot.layer, torch.zeros(len(layer.node_cols), dtype=torch.bool))
        mask[slot.col] = name in params
    return masks


