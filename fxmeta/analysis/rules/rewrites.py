"""Graph rewrites run on the analysis graph before the rules (e.g. attention into plain ops)."""
from __future__ import annotations

import operator

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...keys import TENSOR_META


def decompose_multihead_attention(gm: fx.GraphModule, ignore: tuple[str, ...] = ()) -> bool:
    """Rewrite ``nn.MultiheadAttention`` calls into linear / view / SDPA nodes.

    The module keeps its parameters; the graph reads them with get_attr. Heads then show
    up as plain reshapes, so whole heads can be pruned by the generic rules and
    ``num_heads`` becomes a constant of the graph that slimming rewrites. Calls with
    masks, returned attention weights, dropout or bias_k/v are left alone (and frozen).
    """
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mha = gm.get_submodule(node.target)
        if type(mha) is not nn.MultiheadAttention or not _decomposable(node, mha):
            continue
        if any(node.target == n or node.target.startswith(n + ".") for n in ignore):
            continue
        g = gm.graph
        q_in, k_in, v_in = (node.args + (None,) * 3)[:3]
        k_in = node.kwargs.get("key", k_in)
        v_in = node.kwargs.get("value", v_in)
        q_in = node.kwargs.get("query", q_in)
        e, h = mha.embed_dim, mha.num_heads
        d = e // h
        t = node.target
        with g.inserting_before(node):
            if mha._qkv_same_embed_dim:
                w = g.get_attr(f"{t}.in_proj_weight")
                ws = [g.call_function(operator.getitem, (w, slice(i * e, (i + 1) * e))) for i in range(3)]
            else:
                ws = [g.get_attr(f"{t}.{n}_proj_weight") for n in ("q", "k", "v")]
            if mha.in_proj_bias is not None:
                b = g.get_attr(f"{t}.in_proj_bias")
                bs = [g.call_function(operator.getitem, (b, slice(i * e, (i + 1) * e))) for i in range(3)]
            else:
                bs = [None] * 3
            heads = []
            for x, wi, bi in zip((q_in, k_in, v_in), ws, bs):
                y = g.call_function(F.linear, (x, wi, bi))
                if mha.batch_first:
                    y = g.call_method("view", (y, g.call_method("size", (y, 0)), g.call_method("size", (y, 1)), h, d))
                    y = g.call_method("transpose", (y, 1, 2))
                else:
                    y = g.call_method("view", (y, g.call_method("size", (y, 0)), g.call_method("size", (y, 1)), h, d))
                    y = g.call_method("permute", (y, 1, 2, 0, 3))
                heads.append(y)
            o = g.call_function(F.scaled_dot_product_attention, tuple(heads))
            if mha.batch_first:
                o = g.call_method("transpose", (o, 1, 2))
            else:
                o = g.call_method("permute", (o, 2, 0, 1, 3))
            o = g.call_method("flatten", (o, 2))
            ow = g.get_attr(f"{t}.out_proj.weight")
            ob = g.get_attr(f"{t}.out_proj.bias") if mha.out_proj.bias is not None else None
            o = g.call_function(F.linear, (o, ow, ob))
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0:
                user.replace_all_uses_with(o)
                g.erase_node(user)
            elif user.op == "call_function" and user.target is operator.getitem and user.args[1] == 1:
                g.erase_node(user)  # unused (checked by _decomposable)
        g.erase_node(node)
        changed = True
    return changed


def _decomposable(node: fx.Node, mha: nn.MultiheadAttention) -> bool:
    args = list(node.args)
    kwargs = dict(node.kwargs)
    names = ["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal"]
    for n, a in zip(names, args):
        kwargs[n] = a
    if kwargs.get("key_padding_mask") is not None or kwargs.get("attn_mask") is not None:
        return False
    if kwargs.get("is_causal", False) or mha.dropout > 0 or mha.bias_k is not None or mha.add_zero_attn:
        return False
    for n in ("query", "key", "value"):
        x = kwargs.get(n)
        if not isinstance(x, fx.Node) or len(getattr(x.meta.get(TENSOR_META), "shape", ())) != 3:
            return False
    for user in node.users:
        if not (user.op == "call_function" and user.target is operator.getitem and user.args[1] in (0, 1)):
            return False
        if user.args[1] == 1 and user.users:
            return False
    return True
