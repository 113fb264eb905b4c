"""The block kernels of the metanetwork: one autograd.Function per edge block.

Each layer's edge block is cut into chunks of whole output rows; ``BlockPass`` computes
all aggregations and the edge update chunk by chunk with dense ops, saving only its
inputs, and its backward recomputes each chunk (gradient checkpointing at chunk
granularity, with a hand-written backward so no (out, in, width) intermediate is kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..ir.graph import WeightGraph
from .pool import TensorPool

_EPS = 1e-5


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
class Block:
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


def kernel_plan(graph: WeightGraph, width: int, budget: int) -> list[Block]:
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
        blocks.append(Block(index, groups, rows, cols, k, chunks, layer.learned_edges, row_step))
    return blocks


# -- one edge block ---------------------------------------------------------------------------------
def _encode_into(x: Tensor, w: Tensor, b: Tensor, out: Tensor) -> Tensor:
    if w.shape[1] == 1:
        torch.mul(x.transpose(-1, -2), w, out=out)
    else:
        torch.matmul(w, x.transpose(-1, -2), out=out)
    return out.add_(b[:, None])


class Workspace:
    """Reusable chunk-sized buffers, shared by all blocks of one forward/backward.

    Fresh chunk-sized allocations interleaved with long-lived outputs fragment the heap
    (resident memory grows by gigabytes on graphs of ResNet50's size); reusing a few
    buffers avoids that.
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


def _chunks(block: Block, x: Tensor, vs: Tensor | None, vd: Tensor | None, enc_w: Tensor | None,
            enc_b: Tensor | None, ws: Workspace, d: int):
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
class BlockPass(torch.autograd.Function):
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
    def forward(ctx, x, vs, vd, enc_w, enc_b, w1, b1, w2, b2, block: Block, update: bool, ws: Workspace):
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


def _decoder_buffers(ws: Workspace, inp: _Inputs, k: int, backward: bool = False) -> tuple[Tensor, ...]:
    """e_last (the chunk's shape), n and hidden (B, d, in), o (B, k, in); backward adds sig and act."""
    g, r, d, cols = inp.shape
    flat = (g * r, d, cols)
    names = ("n", "hidden", "o", "sig", "act") if backward else ("n", "hidden", "o")
    return (ws.get("e_last", inp.shape), *(ws.get(name, (g * r, k, cols) if name == "o" else flat) for name in names))


