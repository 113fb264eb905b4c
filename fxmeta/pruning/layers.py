"""The layers that read channels through weights: the nodes the data-aware stages act on.

A *consumer* is a call of a Linear or Conv module, or a ``torch.addmm(bias, x, weight)`` call
whose bias and weight are the graph's own tensors: GPT-2's ``Conv1D`` stores its weight as
(in, out) and a capture by torch.export keeps it as that call. The activation importance reads
a consumer's input and weights, the compensation refits them; both see an addmm as the Linear
it computes (:class:`AddmmLinear`, whose weight is a transposed view of the stored one, so that
writing it writes the graph's tensor).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from .slimming import get_tensor

CONSUMERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_addmm(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``torch.addmm(bias, x, weight)`` with the graph's own 1-D bias and 2-D (in, out) weight, unit factors."""
    if node.op != "call_function" or node.target is not torch.addmm or len(node.args) != 3 or node.kwargs:
        return False
    bias, x, weight = node.args
    if not all(isinstance(a, fx.Node) for a in node.args) or x.op == "get_attr":
        return False
    if bias.op != "get_attr" or weight.op != "get_attr":
        return False
    b, w = get_tensor(gm, bias.target), get_tensor(gm, weight.target)
    return isinstance(b, Tensor) and isinstance(w, Tensor) and b.dim() == 1 and w.dim() == 2


def consumer_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that read channels through weights, in graph order."""
    return [n for n in gm.graph.nodes
            if (n.op == "call_module" and isinstance(gm.get_submodule(n.target), CONSUMERS) and n.args
                and isinstance(n.args[0], fx.Node)) or _is_addmm(gm, n)]


class AddmmLinear(nn.Linear):
    """``torch.addmm(bias, x, weight)`` as the Linear it computes; its weight and bias share the stored
    tensors' memory (the weight transposed)."""

    def __init__(self, bias: Tensor, weight: Tensor) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = weight.shape
        self.weight = nn.Parameter(weight.detach().t(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach(), requires_grad=False)


@dataclass(frozen=True)
class Consumer:
    """A consumer's names: ``key`` (the module, or the stored weight for an addmm), its weight's and
    bias's tensor names, and the weight's output dim."""

    key: str
    weight: str
    bias: str | None
    out_dim: int


def consumer(gm: fx.GraphModule, node: fx.Node) -> Consumer:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        name = str(node.target)
        return Consumer(name, f"{name}.weight", f"{name}.bias" if module.bias is not None else None, 0)
    bias, _, weight = node.args
    name = str(weight.target)
    return Consumer(name.removesuffix(".weight"), name, str(bias.target), 1)


def layer_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The module a consumer calls (an :class:`AddmmLinear` view for an addmm)."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    bias, _, weight = node.args
    return AddmmLinear(get_tensor(gm, bias.target), get_tensor(gm, weight.target))


def layer_input(node: fx.Node) -> fx.Node:
    """The activation a consumer reads."""
    return node.args[1] if node.op == "call_function" else node.args[0]
