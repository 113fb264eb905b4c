"""The graph metanetwork: a WeightGraph in, a WeightGraph of the same shape out.

Message passing with edge features (METHOD.md, "The metanetwork"). Per layer, with
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
buffers (running statistics) pass through unchanged.

Scale: edges are never stored as a flat list. Each layer's edge block is cut into chunks
of whole output rows, and one autograd.Function per block (``_BlockPass``) computes all
aggregations and the edge update chunk by chunk with dense ops, saving only its inputs;
its backward recomputes each chunk (gradient checkpointing at chunk granularity, with a
hand-written backward so no (out, in, width) intermediate is ever kept). Receiver factors
(``a_i``) are applied after aggregation (``max(a*t) = a*max(t)`` for ``a >= 0``,
``a*min(t)`` otherwise), so chunks never depend on them. Edge states live in the layout
``(groups, rows, width, in)``: every reduction is then over the first or the last dim,
where torch's CPU kernels are fast. The last layer's pass also applies the last edge
update and the edge decoder (one read of each chunk, one gradient per edge state).

Memory: the stored edge states, (depth - 1) x edges x width floats, plus a few
chunk-sized buffers. Edge states, their gradients and decoded edges come from a pool
(``fxmeta/pool.py``) that reuses the previous step's memory instead of faulting in fresh
pages every step (measured on ResNet50: forward 6.3 -> 3.1 s, median of 3 alternating steps).
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..errors import FxmetaError
from ..ir.graph import WeightGraph
from .pool import TensorPool

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


# -- the block plan ------------------------------------------------------------------------
@dataclass
class _Chunk:
    g0: int
    g1: int
    r0: int
    r1: int

    @property
    def nodes(self) -> int:
        return (self.g1 - self.g0) * (self.r1 - self.r0)


@dataclass
class _Block:
    """One layer's edge block viewed as (groups, rows per group, in per group) and its chunks."""

    layer: int
    groups: int
    rows: int
    cols: int
    k: int
    chunks: list[_Chunk]
    learned: bool
    row_step: int | None  # rows per chunk when groups are cut into rows, else None

    @property
    def max_chunk(self) -> int:
        return max(c.nodes for c in self.chunks) * self.cols

    def split(self, t: Tensor) -> list[Tensor]:
        """Cut a (groups, rows, ...) tensor into the chunks of this block (one autograd node)."""
        if self.row_step is None:
            return list(t.split([c.g1 - c.g0 for c in self.chunks]))
        return [piece for group in t.split(1) for piece in group.split(self.row_step, 1)]

    def split_groups(self, t: Tensor) -> list[Tensor]:
        """Cut a (groups, ...) tensor into the group range of each chunk."""
        if self.groups == 1:
            return [t] * len(self.chunks)
        if self.row_step is None:
            return list(t.split([c.g1 - c.g0 for c in self.chunks]))
        groups = t.split(1)
        return [groups[c.g0] for c in self.chunks]


def _plan(graph: WeightGraph, width: int, budget: int) -> list[_Block]:
    """Cut every edge block into chunks of whole rows, about ``budget`` elements each."""
    blocks = []
    for index, layer in enumerate(graph.layers):
        if layer.edge is None or layer.edge.numel() == 0:
            continue
        count, cols, k = layer.edge.shape
        groups = layer.groups
        rows = count // groups
        row = cols * width
        chunks, row_step = [], None
        if rows * row <= budget:
            step = max(1, budget // (rows * row))
            chunks = [_Chunk(g0, min(groups, g0 + step), 0, rows) for g0 in range(0, groups, step)]
        else:
            row_step = max(1, budget // row)
            chunks = [_Chunk(g, g + 1, r0, min(rows, r0 + row_step))
                      for g in range(groups) for r0 in range(0, rows, row_step)]
        blocks.append(_Block(index, groups, rows, cols, k, chunks, layer.learned_edges, row_step))
    return blocks


# -- one edge block ---------------------------------------------------------------------------------
def _encode_into(x: Tensor, w: Tensor, b: Tensor, out: Tensor) -> Tensor:
    if w.shape[1] == 1:
        torch.mul(x.transpose(-1, -2), w, out=out)
    else:
        torch.matmul(w, x.transpose(-1, -2), out=out)
    return out.add_(b[:, None])


class _Workspace:
    """Reusable chunk-sized buffers, shared by all blocks of one forward/backward.

    Fresh chunk-sized allocations interleaved with long-lived outputs fragment the heap
    (measured: +1.4 GiB resident on ResNet50); reusing a few buffers avoids that.
    """

    def __init__(self, numel: int, dtype: torch.dtype, pool: TensorPool | None = None) -> None:
        self.numel, self.dtype, self.buffers = numel, dtype, {}
        self.pool = pool if pool is not None else TensorPool(enabled=False)  # for block-sized outputs
        # Gradients of edge states are private to Metanet.forward's graph: their memory may be
        # reused for the next gradient. Off for direct callers, whose gradients may be their own.
        self.reuse_grads = False

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        n = 1
        for s in shape:
            n *= s
        if name not in self.buffers or self.buffers[name].numel() < n:  # k > width: a larger buffer
            self.buffers[name] = torch.empty(max(n, self.numel), dtype=self.dtype)
        return self.buffers[name][:n].view(shape)


def _extreme_grad(grad: Tensor, t: Tensor, value: Tensor, g: Tensor, dim: int, mask: Tensor) -> None:
    """Add the gradient of a max/min reduction, shared evenly among ties (as torch does)."""
    torch.eq(t, value, out=mask)  # a float mask: much faster than bool masks on CPU
    grad.addcmul_(mask, g / mask.sum(dim, keepdim=True))


def _update_backward(gn: Tensor, e: Tensor, h: Tensor, vs: Tensor, vd: Tensor, ge: Tensor,
                     gvs: Tensor, gvd: Tensor, t: Tensor, gh: Tensor) -> None:
    """Backward of ``e + e * h`` with ``h = c_src * D_dst + c_dst * D_src``: writes ``ge`` (which may
    share memory with ``gn``), adds into ``gvs`` and ``gvd``."""
    d = vs.shape[2] // 3
    _, cs, ds = vs.split(d, 2)
    _, cd, dd = vd.split(d, 2)
    torch.mul(gn, e, out=gh)
    torch.addcmul(gn, gn, h, out=ge)
    gvs[:, :, d:2 * d] += torch.mul(gh, dd, out=t).sum(1, keepdim=True)
    gvs[:, :, 2 * d:] += torch.mul(gh, cd, out=t).sum(1, keepdim=True)
    gvd[:, :, d:2 * d] += torch.mul(gh, ds, out=t).sum(-1, keepdim=True)
    gvd[:, :, 2 * d:] += torch.mul(gh, cs, out=t).sum(-1, keepdim=True)


def _update_factor(vs: Tensor, vd: Tensor, out: Tensor) -> Tensor:
    d = vs.shape[2] // 3
    _, cs, ds = vs.split(d, 2)
    _, cd, dd = vd.split(d, 2)
    torch.mul(cs, dd, out=out)
    return out.addcmul_(cd, ds)


def _encoder_backward(ge: Tensor, x: Tensor, gw: Tensor, gb: Tensor, t: Tensor) -> None:
    if gw.shape[1] == 1:
        gw += torch.mul(ge, x.transpose(-1, -2), out=t).sum((0, 1, 3))[:, None]
    else:
        gw += torch.matmul(ge, x).sum((0, 1))
    gb += ge.sum((0, 1, 3))


@dataclass
class _Inputs:
    """The slices of a block's inputs that one chunk sees."""

    x: Tensor
    e: Tensor
    vs: Tensor
    vd: Tensor
    shape: tuple[int, int, int, int]


def _chunks(block: _Block, x: Tensor, vs: Tensor | None, vd: Tensor | None, enc_w: Tensor | None,
            enc_b: Tensor | None, ws: _Workspace, d: int):
    """Yield (chunk, inputs) with the edge state of each chunk (encoded from raw when needed)."""
    for c in block.chunks:
        xc = x[c.g0:c.g1, c.r0:c.r1]
        shape = (c.g1 - c.g0, c.r1 - c.r0, d, block.cols)
        e = xc if enc_w is None else _encode_into(xc, enc_w, enc_b, ws.get("e", shape))
        yield c, _Inputs(xc, e, vs[c.g0:c.g1] if vs is not None else None,
                         vd[c.g0:c.g1, c.r0:c.r1] if vd is not None else None, shape)


# -- chunk kernels --------------------------------------------------------------------------------
def _mp_forward_chunk(e: Tensor, vs: Tensor, vd: Tensor, t: Tensor, sq: Tensor,
                      new: Tensor | None) -> tuple[Tensor, Tensor]:
    """Statistics of ``e * b_src`` over ``in`` (g, r, 4, d) and of ``e * b_dst`` over rows (g, 4, d, in);
    writes the updated edge state into ``new`` when given."""
    d = vs.shape[2] // 3
    torch.mul(e, vs[:, :, :d], out=t)
    fwd = torch.stack([t.sum(-1), torch.mul(t, t, out=sq).sum(-1), t.amax(-1), t.amin(-1)], 2)
    torch.mul(e, vd[:, :, :d], out=t)
    bwd = torch.stack([t.sum(1), torch.mul(t, t, out=sq).sum(1), t.amax(1), t.amin(1)], 1)
    if new is not None:
        torch.addcmul(e, e, _update_factor(vs, vd, sq), out=new)
    return fwd, bwd


def _mp_backward_chunk(e: Tensor, vs: Tensor, vd: Tensor, g_fwd: Tensor, fwd: Tensor, g_bwd: Tensor,
                       bmax: Tensor, bmin: Tensor, gmax: Tensor, gmin: Tensor, g_new: Tensor | None,
                       ge: Tensor, gvs: Tensor, gvd: Tensor, t: Tensor, gt: Tensor, mask: Tensor,
                       accumulate: bool = False) -> None:
    """Backward of _mp_forward_chunk: writes ``ge`` (adds to it with ``accumulate``), adds into
    ``gvs``, writes ``gvd[:, :, :d]``.

    ``g_fwd``/``fwd`` are (g, r, 4, d, 1); ``g_bwd`` is (g, 1, 4, d, in); ``bmax``/``bmin``
    the maxima/minima this chunk reached over its rows and ``gmax``/``gmin`` their gradients.
    """
    d = vs.shape[2] // 3
    bs, bd = vs[:, :, :d], vd[:, :, :d]
    if g_new is not None:  # first, as ``ge`` may share memory with ``g_new``
        _update_backward(g_new, e, _update_factor(vs, vd, gt), vs, vd, ge, gvs, gvd, t, mask)
    torch.mul(e, bs, out=t)
    torch.mul(t, 2 * g_fwd[:, :, 1], out=gt).add_(g_fwd[:, :, 0])  # addcmul broadcasting is 3x slower
    _extreme_grad(gt, t, fwd[:, :, 2], g_fwd[:, :, 2], -1, mask)
    _extreme_grad(gt, t, fwd[:, :, 3], g_fwd[:, :, 3], -1, mask)
    if g_new is None and not accumulate:
        torch.mul(gt, bs, out=ge)
    else:
        ge.addcmul_(gt, bs)
    gvs[:, :, :d] += torch.mul(gt, e, out=t).sum(1, keepdim=True)
    torch.mul(e, bd, out=t)
    torch.mul(t, 2 * g_bwd[:, :, 1], out=gt).add_(g_bwd[:, :, 0])
    _extreme_grad(gt, t, bmax, gmax, 1, mask)
    _extreme_grad(gt, t, bmin, gmin, 1, mask)
    ge.addcmul_(gt, bd)
    gvd[:, :, :d] = torch.mul(gt, e, out=t).sum(-1, keepdim=True)


def _layer_norm_into(z: Tensor, n: Tensor) -> Tensor:
    """LayerNorm without affine over dim 1 of ``z`` (B, d, in), written into ``n``; returns 1/std (B, 1, in).

    Normalising in the edge-state layout (no transposed copy) with two passes, as torch does."""
    torch.sub(z, z.mean(1, keepdim=True), out=n)
    rstd = torch.linalg.vecdot(n, n, dim=1).div_(n.shape[1]).add_(_EPS).rsqrt_()[:, None]
    n.mul_(rstd)
    return rstd


def _decoder_forward_chunk(e: Tensor, vs: Tensor, vd: Tensor, w1: Tensor, b1: Tensor,
                           w2: Tensor, b2: Tensor, out: Tensor, e_last: Tensor, n: Tensor, hidden: Tensor,
                           o: Tensor) -> None:
    """Last edge update, then LayerNorm -> Linear -> SiLU -> Linear per edge, into ``out`` (B, in, k).

    Works in the edge-state layout (B, d, in): the linears are (d, d) @ (B, d, in) products."""
    e = torch.addcmul(e, e, _update_factor(vs, vd, e_last), out=e_last)
    z = e.view(n.shape)
    _layer_norm_into(z, n)
    torch.matmul(w1, n, out=hidden).add_(b1[:, None])
    F.silu(hidden, inplace=True)
    torch.matmul(w2, hidden, out=o)
    torch.add(o.transpose(1, 2), b2, out=out)


def _decoder_backward_chunk(e: Tensor, vs: Tensor, vd: Tensor, w1: Tensor, b1: Tensor,
                            w2: Tensor, g_out: Tensor, ge: Tensor, gvs: Tensor, gvd: Tensor,
                            gw1: Tensor, gb1: Tensor, gw2: Tensor, gb2: Tensor, e_last: Tensor, n: Tensor,
                            hidden: Tensor, o: Tensor, sig: Tensor, act: Tensor, t: Tensor, mask: Tensor) -> None:
    """Backward of _decoder_forward_chunk (recomputing it): writes ``ge``, adds into the rest.

    ``g_out`` is (B, in, k); the other buffers are those of the forward plus ``sig``, ``act``
    (B, d, in) and the chunk-shaped ``t`` and ``mask``."""
    h = _update_factor(vs, vd, mask)
    e_up = torch.addcmul(e, e, h, out=e_last)
    d = n.shape[1]
    rstd = _layer_norm_into(e_up.view(n.shape), n)
    torch.matmul(w1, n, out=hidden).add_(b1[:, None])
    torch.sigmoid(hidden, out=sig)
    torch.mul(hidden, sig, out=act)
    go = o.copy_(g_out.transpose(1, 2))  # (B, k, in)
    gw2 += torch.bmm(go, act.transpose(1, 2)).sum(0)
    gb2 += g_out.sum((0, 1))
    g_hidden = torch.matmul(w2.t(), go, out=act)
    hidden.addcmul_(hidden, sig, value=-1).add_(1).mul_(sig)  # silu'(a) = s (1 + a (1 - s))
    g_hidden.mul_(hidden)
    gw1 += torch.bmm(g_hidden, n.transpose(1, 2)).sum(0)
    gb1 += g_hidden.sum(2).sum(0)
    g_n = torch.matmul(w1.t(), g_hidden, out=sig)
    # LayerNorm backward: rstd * (g_n - mean(g_n) - n * mean(g_n * n)), means over d
    proj = torch.linalg.vecdot(g_n, n, dim=1).div_(d)[:, None]
    g_n.sub_(g_n.mean(1, keepdim=True)).sub_(n.mul_(proj)).mul_(rstd)
    _update_backward(g_n.view(e.shape), e, h, vs, vd, ge, gvs, gvd, t, e_last)


# -- the autograd Functions over whole blocks ------------------------------------------------------
class _BlockPass(torch.autograd.Function):
    """Aggregations and edge update of one edge block, chunk by chunk; recomputed in backward.

    Inputs: ``x`` the edge state (g, r, d, in), or raw features (g, r, in, k) when
    ``enc_w`` is given (then the encoder runs inside); ``vs`` = [b, c, D] at the source
    nodes (g, 1, 3d, in); ``vd`` the same at the block's own nodes (g, r, 3d, 1).
    Outputs: forward-direction statistics (g, r, 4, d) of ``t = e * b_src`` over ``in``
    (sum, sum of squares, max, min), backward-direction statistics (g, in, 4, d) of
    ``e * b_dst`` over ``r``, the updated edge state (or None without ``update``), and, when
    the decoder's weights ``dec`` = (w1, b1, w2, b2) are given (last layer, no ``update``),
    the decoded edges (g, r, in, k): LayerNorm (no affine) -> Linear(d, d) -> SiLU ->
    Linear(d, k) of the updated state, per edge. Decoding in the last layer's pass reads
    each chunk once for both and gives the state a single gradient.
    Only the inputs are saved; backward recomputes each chunk.
    """

    @staticmethod
    def forward(ctx, x, vs, vd, enc_w, enc_b, w1, b1, w2, b2, block: _Block, update: bool, ws: _Workspace):
        ctx.set_materialize_grads(False)
        d = vs.shape[2] // 3
        G, R, J = block.groups, block.rows, block.cols
        fwd = vs.new_empty(G, R, 4, d)
        bwd = vs.new_empty(G, 4, d, J)
        new = ws.pool.empty((G, R, d, J), vs.dtype) if update else None
        k = w2.shape[0] if w2 is not None else 0
        decoded = ws.pool.empty((G, R, J, k), vs.dtype) if k else None
        extremes = []
        for c, inp in _chunks(block, x, vs, vd, enc_w, enc_b, ws, d):
            out = new[c.g0:c.g1, c.r0:c.r1] if update else None
            f, stats = _mp_forward_chunk(inp.e, inp.vs, inp.vd, ws.get("t", inp.shape), ws.get("h", inp.shape), out)
            fwd[c.g0:c.g1, c.r0:c.r1] = f
            b = bwd[c.g0:c.g1]
            if c.r0 == 0:
                b.copy_(stats)
            else:  # the rest of a group cut into rows: combine with what came before
                b[:, :2] += stats[:, :2]
                torch.maximum(b[:, 2], stats[:, 2], out=b[:, 2])
                torch.minimum(b[:, 3], stats[:, 3], out=b[:, 3])
            if block.row_step is not None:
                extremes.append(stats[:, 2:])
            if k:
                _decoder_forward_chunk(inp.e, inp.vs, inp.vd, w1, b1, w2, b2,
                                       decoded[c.g0:c.g1, c.r0:c.r1].view(-1, J, k), *_decoder_buffers(ws, inp, k))
        ext = torch.cat(extremes).view(G, -1, 2, d, J) if extremes else None
        ctx.block, ctx.update, ctx.ws = block, update, ws
        ctx.save_for_backward(x, vs, vd, enc_w, enc_b, w1, b1, w2, fwd, bwd, ext)
        return fwd, bwd.permute(0, 3, 1, 2), new, decoded

    @staticmethod
    @once_differentiable
    def backward(ctx, g_fwd, g_bwd, g_new, g_dec):
        x, vs, vd, enc_w, enc_b, w1, b1, w2, fwd, bwd, ext = ctx.saved_tensors
        block, ws = ctx.block, ctx.ws
        d, J = vs.shape[2] // 3, block.cols
        raw = enc_w is not None
        g_fwd = torch.zeros_like(fwd) if g_fwd is None else g_fwd
        g_bwd = torch.zeros_like(bwd) if g_bwd is None else g_bwd.permute(0, 2, 3, 1)  # (g, 4, d, in)
        reuse = (ws.reuse_grads and ctx.update and g_new is not None and g_new.shape == x.shape
                 and g_new.is_contiguous())
        # the gradient of the new state is consumed chunk by chunk: its memory takes the input's gradient
        ge_full = None if raw else g_new if reuse else ws.pool.empty(x.shape, x.dtype)
        gvs, gvd = torch.zeros_like(vs), torch.zeros_like(vd)
        gw = torch.zeros_like(enc_w) if raw else None
        gb = torch.zeros_like(enc_b) if raw else None
        decode = w1 is not None and g_dec is not None
        k = w2.shape[0] if decode else 0
        g_dec_weights = [torch.zeros_like(p) for p in (w1, b1, w2)] + [w2.new_zeros(k)] if decode else [None] * 4
        share = None
        if ext is not None:  # ties of a cut group's max across chunks share its gradient
            hits = (ext == bwd[:, None, 2:]).to(vs.dtype)
            share = hits / hits.sum(1, keepdim=True)
        per_group = len(block.chunks) // block.groups
        for index, (c, inp) in enumerate(_chunks(block, x, vs, vd, enc_w, enc_b, ws, d)):
            shape = inp.shape
            gk = g_bwd[c.g0:c.g1, None]
            if share is None:
                bmax, bmin = bwd[c.g0:c.g1, None, 2], bwd[c.g0:c.g1, None, 3]
                gmax, gmin = gk[:, :, 2], gk[:, :, 3]
            else:
                i = index % per_group
                bmax, bmin = ext[c.g0:c.g1, i, None, 0], ext[c.g0:c.g1, i, None, 1]
                gmax = gk[:, :, 2] * share[c.g0:c.g1, i, None, 0]
                gmin = gk[:, :, 3] * share[c.g0:c.g1, i, None, 1]
            ge = ws.get("ge", shape) if raw else ge_full[c.g0:c.g1, c.r0:c.r1]
            gn = g_new[c.g0:c.g1, c.r0:c.r1] if ctx.update and g_new is not None else None
            gvs_c, gvd_c = gvs[c.g0:c.g1], gvd[c.g0:c.g1, c.r0:c.r1]
            if decode:  # first: it writes ``ge``, the message-passing backward adds to it
                _decoder_backward_chunk(
                    inp.e, inp.vs, inp.vd, w1, b1, w2, g_dec[c.g0:c.g1, c.r0:c.r1].reshape(-1, J, k), ge,
                    gvs_c, gvd_c, *g_dec_weights, *_decoder_buffers(ws, inp, k, backward=True),
                    ws.get("t", shape), ws.get("mask", shape))
            _mp_backward_chunk(
                inp.e, inp.vs, inp.vd, g_fwd[c.g0:c.g1, c.r0:c.r1, :, :, None], fwd[c.g0:c.g1, c.r0:c.r1, :, :, None],
                gk, bmax, bmin, gmax, gmin, gn, ge, gvs_c, gvd_c,
                ws.get("t", shape), ws.get("gt", shape), ws.get("mask", shape), accumulate=decode)
            if raw:
                _encoder_backward(ge, inp.x, gw, gb, ws.get("t", shape))
        return (ge_full, gvs, gvd, gw, gb, *g_dec_weights, None, None, None)


def _decoder_buffers(ws: _Workspace, inp: _Inputs, k: int, backward: bool = False) -> tuple[Tensor, ...]:
    """e_last (the chunk's shape), n and hidden (B, d, in), o (B, k, in); backward adds sig and act."""
    g, r, d, cols = inp.shape
    flat = (g * r, d, cols)
    names = ("n", "hidden", "o", "sig", "act") if backward else ("n", "hidden", "o")
    return (ws.get("e_last", inp.shape), *(ws.get(name, (g * r, k, cols) if name == "o" else flat) for name in names))


# -- scatter backends ----------------------------------------------------------------------------
def has_torch_scatter() -> bool:
    return importlib.util.find_spec("torch_scatter") is not None


def scatter_stats(vals: Tensor, ids: Tensor, n: int, backend: str = "torch") -> Tensor:
    """Combine partial statistics (M, 4, d) [sum, sumsq, max, min] at node ids -> (n, 4, d)."""
    d = vals.shape[-1]
    if backend == "torch_scatter":
        import torch_scatter

        sums = torch_scatter.scatter(vals[:, :2], ids, 0, dim_size=n, reduce="sum")
        mx = torch_scatter.scatter(vals[:, 2], ids, 0, dim_size=n, reduce="max")
        mn = torch_scatter.scatter(vals[:, 3], ids, 0, dim_size=n, reduce="min")
    else:
        sums = vals.new_zeros(n, 2, d).index_add(0, ids, vals[:, :2])
        index = ids[:, None].expand(-1, d)
        mx = vals.new_zeros(n, d).scatter_reduce(0, index, vals[:, 2], "amax", include_self=False)
        mn = vals.new_zeros(n, d).scatter_reduce(0, index, vals[:, 3], "amin", include_self=False)
    return torch.cat([sums, mx[:, None], mn[:, None]], 1)


def _pna(stats: Tensor, count: Tensor, receiver: Tensor) -> Tensor:
    """mean, std, max, min of ``receiver * t`` from the statistics of t -> (N, 4d)."""
    s, q, mx, mn = stats.unbind(1)
    pos = receiver >= 0
    s, q = receiver * s, receiver * receiver * q
    mx, mn = torch.where(pos, receiver * mx, receiver * mn), torch.where(pos, receiver * mn, receiver * mx)
    n = count.clamp(min=1)[:, None]
    mean = s / n
    std = torch.sqrt(F.relu(q / n - mean * mean) + _EPS)
    return torch.cat([mean, std, mx, mn], 1)


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
        self.register_buffer("flip", torch.cat([torch.ones(d // 2), -torch.ones(d - d // 2)]), persistent=False)
        # edge states, their gradients and decoded edges reuse the previous step's memory (fxmeta/pool.py);
        # ``net.pool.clear()`` hands it back
        self.pool = TensorPool()

    @classmethod
    def for_graph(cls, graph: WeightGraph, width: int = 32, depth: int = 6, ratio: float = 0.01,
                  chunk: int = 1 << 20, scatter: str = "auto") -> "Metanet":
        """A metanet for the node and edge kinds of ``graph`` (kinds are stored in its config)."""
        nodes, edges = kinds_of(graph)
        return cls(MetanetConfig(nodes, edges, width, depth, ratio, chunk), scatter=scatter)

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
    def forward(self, graph: WeightGraph) -> WeightGraph:
        """A graph of the same structure with new features, differentiable w.r.t. this module.

        The input graph is data: no gradient flows into its tables.
        """
        self.check_graph(graph)
        d, layers, n_nodes = self.config.width, graph.layers, graph.num_nodes
        dtype = self.flip.dtype
        blocks = _plan(graph, d, self.config.chunk)
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
        ws = _Workspace(max((b.max_chunk for b in blocks), default=0) * d, dtype, self.pool)
        ws.reuse_grads = True
        h = self._encode_nodes(graph, dtype)
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
                fwd, bwd, new, decoded[i] = _BlockPass.apply(x, vs, vd, w, bias, *dec, b, update, ws)
                fwd_parts.append((layers[b.layer].start, fwd.reshape(-1, 4, d)))
                bwd_parts.append(bwd.reshape(-1, 4, d))
                if update:
                    states[i] = new
            fwd_stats = self._node_order(fwd_parts, n_nodes, d, dtype)
            if bwd_parts:
                bwd_stats = scatter_stats(torch.cat(bwd_parts), src_all, n_nodes, self.scatter)
            else:
                bwd_stats = torch.zeros(n_nodes, 4, d, dtype=dtype)
            h = h + mp.down(_pna(fwd_stats, count_fwd, a)) + mp.down(_pna(bwd_stats, count_bwd, a * self.flip))
            h = h + mp.mlp(h)

        new_edges = self._decoded_edges(graph, blocks, decoded)
        new_nodes = self._decode_nodes(graph, h)
        return graph.with_features(new_edges, new_nodes)

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

    def _decoded_edges(self, graph: WeightGraph, blocks: list[_Block],
                       decoded: list[Tensor | None]) -> list[Tensor | None]:
        """Edge tables: input + ratio * scale * decoded for every learned block (the decoder applied the
        factor to its last linear, which saves a pass and a table-sized buffer each way)."""
        edges = [layer.edge for layer in graph.layers]
        for b, delta in zip(blocks, decoded):
            layer = graph.layers[b.layer]
            if delta is not None:
                edges[b.layer] = layer.edge.detach() + delta.view(layer.edge.shape).to(layer.edge.dtype)
        return edges

    def _decode_nodes(self, graph: WeightGraph, h: Tensor) -> list[Tensor | None]:
        learned = learned_columns(graph)
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


def save_metanet(net: Metanet, path: str, *, extra: dict[str, Any] | None = None, force: bool = False) -> None:
    """Save config + state_dict in a format ``torch.load(weights_only=True)`` reads."""
    from ..io.files import atomic_save

    obj = {"format": FORMAT, "config": net.config.to_dict(), "state_dict": net.state_dict()}
    if extra:
        obj["extra"] = extra
    atomic_save(obj, path, force=force)


def load_metanet(path: str, scatter: str = "auto") -> Metanet:
    """Rebuild a Metanet saved by ``save_metanet`` (or a meta-training checkpoint)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FxmetaError(f"no metanet file at {path}; give the path of a file written by meta-training") from None
    except Exception as exc:  # a pickle the safe loader refuses, or not a torch file at all
        raise FxmetaError(f"{path} is not a metanet file ({type(exc).__name__}); "
                          "give a file written by fxmeta meta-training") from None
    if isinstance(obj, dict) and "metanet" in obj and isinstance(obj["metanet"], dict):
        obj = obj["metanet"]
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise FxmetaError(f"{path} is not a metanet file (expected format {FORMAT!r}); "
                          "give a file written by fxmeta meta-training")
    net = Metanet(MetanetConfig.from_dict(obj["config"]), scatter=scatter)
    net.load_state_dict(obj["state_dict"])
    return net
