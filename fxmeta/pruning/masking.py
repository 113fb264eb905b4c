"""The network as a prune would leave it, computed on the full-size weights.

:class:`MaskedNetwork` is a copy of an analysed graph that shares the model's parameters.
Every value that carries prunable channels is multiplied by a keep mask (1 for kept
units, 0 for removed ones), and every BatchNorm normalises with the statistics of the
batch at hand, never reading or writing its running statistics. With the mask set to
the units a prune removes (:meth:`MaskedNetwork.set_removed`), its output equals the
pruned network's output after BatchNorm recalibration on that same batch, but it stays
differentiable in the full-size parameters. That makes it the stand-in the prunability
objective trains through: the prepare stage trains a network's own weights with it, and
meta-training backpropagates through it into the metanetwork (``torch.func.functional_call``
with generated parameters, which keep the model's names).

:func:`removal` picks the units a prune to a FLOPs target would remove, with the same
importance, ranking and selection as :func:`fxmeta.prune`.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..analysis.channels import ChannelAnalysis
from ..analysis.spaces import Dims
from ..errors import PruningError
from ..keys import TENSOR_META
from .calibration import fixed_batch
from .flops import FlopModel, count_flops
from .importance import importance_fn
from .pruner import check_speedup, reach
from .selection import candidates, flop_model, removed_mask, select

_KEEP_PREFIX = "fxmeta_keep"


class Keep(nn.Module):
    """Multiplies one value by per-dimension keep masks (buffers, updated in place)."""

    def __init__(self, ndim: int, dims: list[int], sizes: list[int]) -> None:
        super().__init__()
        self.dims = list(dims)
        for i, (d, n) in enumerate(zip(dims, sizes)):
            shape = [1] * ndim
            shape[d] = n
            self.register_buffer(f"keep{i}", torch.ones(shape), persistent=False)

    def masks(self) -> list[Tensor]:
        return [getattr(self, f"keep{i}") for i in range(len(self.dims))]

    def forward(self, x: Tensor) -> Tensor:
        for keep in self.masks():
            x = x * keep.to(x.dtype)
        return x


def _batch_stats_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """BatchNorm on the batch's own statistics; no running statistics are read or updated."""
    return nn.functional.batch_norm(x, None, None, weight, bias, True, 0.0, eps)


def _value_dims(value: Any, candidate: Tensor, analysis: ChannelAnalysis) -> list[tuple[int, Tensor]]:
    """(dim, labels) of a tensor value whose labels include units that can ever be removed."""
    if not isinstance(value, Dims):
        return []
    out = []
    for d, labels in enumerate(value):
        if labels is not None and bool(candidate[analysis.roots(labels)].any()):
            out.append((d, labels))
    return out


class MaskedNetwork(nn.Module):
    """``analysis.gm`` with removed channels masked and BatchNorm on batch statistics."""

    def __init__(self, analysis: ChannelAnalysis) -> None:
        super().__init__()
        self.analysis = analysis
        # a graph torch.export captured (a transformers model) is specialised to the example's batch
        self.fixed_batch = fixed_batch(analysis.gm, analysis.example_input)
        self._batch_norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in analysis.gm.modules())
        candidate = torch.zeros(analysis.uf.size, dtype=torch.bool)
        for g in analysis.groups:
            if g.prunable:
                candidate[g.roots] = True
        src = analysis.gm
        graph = copy.deepcopy(src.graph)
        norms: list[tuple[fx.Node, nn.Module]] = []
        keeps: list[tuple[fx.Node, str, Keep, list[Tensor]]] = []
        for node in graph.nodes:
            if node.op == "call_module" and isinstance(src.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
                norms.append((node, src.get_submodule(node.target)))
            if node.op in ("placeholder", "output"):
                continue  # model inputs and outputs are never pruned
            spec = _value_dims(analysis.values.get(node.name), candidate, analysis)
            if spec:
                meta = node.meta.get(TENSOR_META)
                ndim = len(meta.shape)
                dims = [d for d, _ in spec]
                module = Keep(ndim, dims, [int(meta.shape[d]) for d in dims])
                keeps.append((node, f"{_KEEP_PREFIX}_{len(keeps)}", module, [labels for _, labels in spec]))
        for node, bn in norms:
            with graph.inserting_before(node):
                weight = graph.get_attr(f"{node.target}.weight") if bn.weight is not None else None
                bias = graph.get_attr(f"{node.target}.bias") if bn.bias is not None else None
                new = graph.call_function(_batch_stats_norm, (node.args[0], weight, bias, bn.eps))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            if any(n is node for n, *_ in keeps):
                keeps = [(new if n is node else n, *rest) for n, *rest in keeps]
        holder = nn.Module()
        for _, name, module, _ in keeps:
            holder.add_module(name, module)
        # Norms and means over a pruned dim: statistics over the kept entries, as once pruned.
        self.removed = torch.zeros(analysis.uf.size, dtype=torch.bool)
        for node in graph.nodes:
            if node.name in analysis.references:
                name = f"{_KEEP_PREFIX}_stats_{node.name}"
                holder.add_module(name, _KeptStatistics(analysis.references[node.name], self._keep))
                node.op, node.target = "call_module", name
        for node, name, _, _ in keeps:
            with graph.inserting_after(node):
                masked = graph.call_module(name, (node,))
            node.replace_all_uses_with(masked, delete_user_cb=lambda user, m=masked: user is not m)
        graph.lint()
        root = _Root(src, holder)
        self.gm = fx.GraphModule(root, graph, class_name=f"Masked{type(src).__name__}")
        self._keeps = [(self.gm.get_submodule(name), labels) for _, name, _, labels in keeps]

    @torch.no_grad()
    def set_removed(self, removed: Tensor) -> None:
        """Mask the units flagged in ``removed`` (bool over the analysis' unit ids)."""
        removed = removed.cpu()
        self.removed = removed.clone()
        for module, labels in self._keeps:
            for buf, lab in zip(module.masks(), labels):
                keep = (~removed[self.analysis.roots(lab)]).to(buf.dtype)
                buf.copy_(keep.view(buf.shape))

    def _keep(self, labels: Tensor) -> Tensor:
        return ~self.removed[self.analysis.roots(labels)]

    def forward(self, *args: Any) -> Any:
        """The masked network on ``args``; a graph fixed to the example's batch size runs a larger
        batch in pieces of that size (each sample's output is the same, as long as no BatchNorm
        normalises across the batch: such a graph is refused)."""
        n = self.fixed_batch
        first = args[0] if args else None
        if not n or not isinstance(first, Tensor) or first.dim() == 0 or first.shape[0] == n:
            return self.gm(*args)
        if first.shape[0] % n:
            raise PruningError(f"this network was captured for batches of {n} (torch.export); a batch of "
                               f"{first.shape[0]} does not split into such pieces")
        if self._batch_norms:
            raise PruningError(f"this network was captured for batches of {n} (torch.export) and normalises with "
                               "batch statistics, which pieces of that size would change: capture it at the "
                               "training batch size (--input-shape B,...)")
        pieces = [self.gm(*(a[i:i + n] if isinstance(a, Tensor) and a.dim() and a.shape[0] == first.shape[0] else a
                            for a in args)) for i in range(0, first.shape[0], n)]
        return pytree.tree_map(lambda *xs: torch.cat(xs) if isinstance(xs[0], Tensor) and xs[0].dim() else xs[0],
                               pieces[0], *pieces[1:])


class _KeptStatistics(nn.Module):
    """A norm or mean whose statistics run over the kept entries (``analysis.references``)."""

    def __init__(self, reference: Any, keep: Any) -> None:
        super().__init__()
        self.reference, self.keep = reference, keep

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.reference(self.keep, args, kwargs)


class _Root(nn.Module):
    """Attribute source for the masked GraphModule: the analysed graph's modules, plus keeps."""

    def __init__(self, src: nn.Module, holder: nn.Module) -> None:
        super().__init__()
        for name, child in src.named_children():
            self.add_module(name, child)
        for name, child in holder.named_children():
            self.add_module(name, child)
        for name, p in src.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in src.named_buffers(recurse=False):
            self.register_buffer(name, b)


def analytic_flops(analysis: ChannelAnalysis) -> tuple[FlopModel, int]:
    """The analytic FLOPs model of ``analysis`` (frozen ops as a constant) and the measured total."""
    base = count_flops(analysis.gm, analysis.example_input)
    model = flop_model(analysis)
    model.constant = base - model.evaluate()
    return model, base


def removal(analysis: ChannelAnalysis, speedup: float, importance: Any = "l2", *, round_to: int | None = None,
            min_keep: float = 0.1, seed: int = 0, flops_target: float | None = None,
            flops: tuple[FlopModel, int] | None = None, params: dict[str, Tensor] | None = None,
            allocation: str = "global") -> Tensor:
    """Units (bool over unit ids) a prune of ``analysis.gm``'s current weights to ``speedup`` removes.

    ``flops_target`` is the target of the analytic FLOPs model; :func:`calibrate_target`
    finds the one that makes the measured FLOPs reach ``speedup`` (as ``prune`` does).
    ``flops`` is :func:`analytic_flops` computed once (it runs the model on the example
    input, which needs the parameters where the input is). ``params`` ranks other weights
    than the graph's own (e.g. a metanetwork's output, by the same names).
    """
    check_speedup(speedup)
    score = importance_fn(importance, seed)
    if params is not None:
        score = (lambda fn: lambda group, _own: fn(group, params))(score)
    c = candidates(analysis, score, round_to, min_keep, allocation)
    if not c.groups:
        raise PruningError("the model has no prunable channel groups: there is nothing to mask")
    model, base = flops or analytic_flops(analysis)
    counts = select(analysis, c, model, base, flops_target or float(speedup), min_keep, round_to)
    return removed_mask(c, counts, analysis.uf.size)


def calibrate_target(analysis: ChannelAnalysis, speedup: float, importance: Any = "l2", *,
                     round_to: int | None = None, min_keep: float = 0.1, seed: int = 0,
                     allocation: str = "global") -> float:
    """The analytic FLOPs target whose selection measures at least ``speedup`` once slimmed.

    ``prune`` finds it by slimming and measuring (``fxmeta.pruning.pruner.reach``); doing
    that once up front lets the masks be recomputed often without slimming each time."""
    check_speedup(speedup)
    c = candidates(analysis, importance_fn(importance, seed), round_to, min_keep, allocation)
    if not c.groups:
        raise PruningError("the model has no prunable channel groups: there is nothing to mask")
    model, base = analytic_flops(analysis)
    return reach(analysis, c, model, base, float(speedup), min_keep, round_to).target
