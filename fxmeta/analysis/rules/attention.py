"""Rules for attention: scaled dot-product attention and torchvision's window attention."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from ..context import Context
from ..spaces import Dims
from .common import freeze_all, pad_ids, prod_of, set_arg, unite_rows


def sdpa(ctx: Context, node: fx.Node) -> Dims:
    q, k, v = node.args[0], ctx.arg(node, 1, "key"), ctx.arg(node, 2, "value")
    mask = ctx.arg(node, 3, "attn_mask")
    dq, dk, dv = ctx.dims(q), ctx.dims(k), ctx.dims(v)
    sq, sk, sv = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    if not (len(sq) == len(sk) == len(sv)) or sq[:-2] != sk[:-2] or sk[:-2] != sv[:-2]:
        return freeze_all(ctx, node)
    # The default scale depends on the head size and softmax runs over the key sequence.
    ctx.freeze(dq[-1], dk[-1], dk[-2], dv[-2], reason="attention scale / softmax dims")
    out = Dims([None] * len(sq))
    for i in range(len(sq) - 2):
        ctx.union(dq[i], dk[i], dv[i])
        out[i] = dq[i] if dq[i] is not None and dk[i] is not None and dv[i] is not None else None
    # timm's blocks take ``attn_mask=None`` as an input of their own: traced, it is a node holding None
    if isinstance(mask, fx.Node) and ctx.is_tensor(mask):
        _mask(ctx, mask, out[:len(sq) - 2] + [dq[-2], dk[-2]], list(sq[:-1]) + [sk[-2]])
    out[-2], out[-1] = dq[-2], dv[-1]
    b = [out[i] for i in range(len(sq) - 2)]
    coef = 2 * prod_of(n for n, l in zip(sq[:-2], b) if l is None) * sq[-2] * sk[-2]
    ctx.flops(coef * sq[-1], *b)
    ctx.flops(coef * (sv[-1] if dv[-1] is None else 1), *b, dv[-1])
    return out



def _mask(ctx: Context, mask: fx.Node, score_dims: list, score_shape: list[int]) -> None:
    """The mask is added to (or selects) the scores (..., heads, Lq, Lk), broadcast against them:
    a dim it has at full size goes with the scores' dim (heads are sliced in the mask too), a
    broadcast size-1 dim stays as it is. HF models pass a (1, 1, Lq, Lk) mask, so heads stay free."""
    md, ms = ctx.dims(mask), ctx.shape(mask)
    off = len(score_shape) - len(ms)
    for j, n in enumerate(ms):
        i = j + off
        if i >= 0 and n == score_shape[i] and n != 1:
            ctx.union(md[j], score_dims[i])
        else:
            ctx.freeze(md[j], reason="attention mask")


def mha_module(ctx: Context, node: fx.Node) -> Any:
    return freeze_all(ctx, node)


def swin_attention(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``shifted_window_attention``: whole heads are the units."""
    names = ["input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training"]
    a = {n: ctx.arg(node, i, n) for i, n in enumerate(names)}
    x, qw, pw, rpb = a["input"], a["qkv_weight"], a["proj_weight"], a["relative_position_bias"]
    h = a["num_heads"]
    if not all(isinstance(t, fx.Node) for t in (x, qw, pw, rpb)) or not isinstance(h, int):
        return freeze_all(ctx, node)
    c = ctx.shape(x)[-1]
    qws, pws = ctx.shape(qw), ctx.shape(pw)
    if qws[0] != 3 * c or c % h or qws[1] != c or pws[1] != c:
        return freeze_all(ctx, node)
    hd = c // h
    xd, qd, pd, rd = ctx.dims(x), ctx.dims(qw), ctx.dims(pw), ctx.dims(rpb)
    ctx.freeze(*xd[:-1], reason="spatial dims of window attention")
    ctx.union(xd[-1], qd[1])
    head_rows = pad_ids(ctx, qd[0], 3 * c).view(3, h, hd)
    unite_rows(ctx, head_rows.permute(1, 0, 2).reshape(h, 3 * hd))
    heads = head_rows[0, :, 0].clone()
    unite_rows(ctx, torch.cat([heads[:, None], pad_ids(ctx, pd[1], c).view(h, hd)], 1))
    ctx.union(heads, rd[1] if ctx.shape(rpb)[1] == h else None)
    for n in ("qkv_bias", "proj_bias", "logit_scale"):
        t = a[n]
        if isinstance(t, fx.Node):
            ctx.union(ctx.dims(t)[0], {"qkv_bias": qd[0], "proj_bias": pd[0], "logit_scale": heads}[n])
    # Everything that is neither channels nor heads (windows, shifts) is spatial.
    out = Dims([None] * len(ctx.shape(node)))
    out[-1] = pd[0]
    b, hh, ww, _ = ctx.shape(x)
    ws = a["window_size"]
    ph = -(-hh // ws[0]) * ws[0]
    pw_ = -(-ww // ws[1]) * ws[1]
    tokens = b * ph * pw_
    n = ws[0] * ws[1]
    ctx.flops(2 * tokens, qd[0], qd[1])
    ctx.flops(2 * 2 * tokens * n * hd, heads)
    ctx.flops(2 * tokens, pd[1], pd[0])
    ctx.note_constant("num_heads")

    def slim(s, new_node):
        new_node.target = shifted_window_attention
        set_arg(new_node, 5, "num_heads", s.new_count(heads))

    ctx.on_slim(slim)
    return out


def shifted_window_attention(
    input: Tensor,
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Tensor | None = None,
    proj_bias: Tensor | None = None,
    logit_scale: Tensor | None = None,
    training: bool = True,
) -> Tensor:
    """torchvision's shifted window attention (BSD-3-Clause) with the head size read from
    ``qkv_weight`` instead of the input width, so heads can be removed."""
    B, H, W, C = input.shape
    head_dim = qkv_weight.shape[0] // (3 * num_heads)
    inner = num_heads * head_dim
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = list(shift_size)
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length: 2 * length].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        attn = attn * logit_scale
    else:
        q = q * head_dim ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for hs in h_slices:
            for wsl in w_slices:
                attn_mask[hs[0]: hs[1], wsl[0]: wsl[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), inner)
    x = F.linear(x, proj_weight, proj_bias)
    x = F.dropout(x, p=dropout, training=training)
    out_c = x.shape[-1]
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], out_c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, out_c)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    x = x[:, :H, :W, :].contiguous()
    return x


torch.fx.wrap("shifted_window_attention")


def swin_relative_position_bias(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``_get_relative_position_bias``: (table, heads) -> (1, heads, N, N)."""
    table = node.args[0]
    td = ctx.dims(table)
    ctx.freeze(td[0], reason="relative position rows are looked up by index")
    out = Dims([None] * 4)
    out[1] = td[1]
    return out


def swin_patch_merging_pad(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``_patch_merging_pad``: four spatial phases concatenated on channels."""
    x = node.args[0]
    dims = ctx.dims(x)
    out = Dims([None] * len(ctx.shape(node)))
    ctx.freeze(dims[-3], dims[-2], reason="spatial dims")
    for i in range(len(dims) - 3):
        out[i] = dims[i]
    out[-1] = None if dims[-1] is None else dims[-1].repeat(4)
    return out


def stochastic_depth(ctx: Context, node: fx.Node) -> Dims:
    """torchvision's ``stochastic_depth``: scales whole rows, channels pass through."""
    return Dims(ctx.dims(node.args[0]))
