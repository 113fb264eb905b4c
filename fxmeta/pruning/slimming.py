"""Physical slimming: new, smaller modules, sliced parameters, rewritten graph constants.

``SlimContext`` implements the ``fxmeta.analysis.context.SlimView`` protocol that the
rules' slimming hooks are written against.
"""
from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..analysis.channels import ChannelAnalysis, Dims
from ..keys import TENSOR_META

# --------------------------------------------------------------------------- slimming


class SlimContext:
    """What slimming hooks see: old / new sizes and the new graph's modules."""

    def __init__(self, analysis: ChannelAnalysis, gm: fx.GraphModule, removed: Tensor) -> None:
        self.analysis = analysis
        self.gm = gm
        self.removed = removed
        self.old_nodes = {n.name: n for n in analysis.gm.graph.nodes}
        self._ints: dict[str, Any] = {}

    def keep_mask(self, labels: Tensor) -> Tensor:
        return ~self.removed[self.analysis.roots(labels)]

    def new_count(self, labels: Tensor | None, default: int = 0) -> int:
        if labels is None:
            return default
        return int(self.keep_mask(labels).sum())

    def keep_index(self, labels: Tensor | None) -> Tensor | None:
        """Entries to keep, or None when all stay."""
        if labels is None:
            return None
        keep = self.keep_mask(labels)
        return None if bool(keep.all()) else keep.nonzero().flatten()

    def _name(self, node: Any) -> str:
        return node if isinstance(node, str) else node.name

    def old_shape(self, node: Any) -> torch.Size:
        return self.old_nodes[self._name(node)].meta[TENSOR_META].shape

    def new_shape(self, node: Any) -> torch.Size:
        name = self._name(node)
        return _new_shape(self, self.old_nodes[name].meta[TENSOR_META], self.analysis.values[name])

    def module(self, target: str) -> nn.Module:
        return self.gm.get_submodule(target)

    def new_int(self, node: Any) -> Any:
        """Value of a size computation of the new graph (None when it is not a plain size)."""
        if not isinstance(node, fx.Node):
            return node
        if node.name not in self._ints:
            self._ints[node.name] = self._eval_int(node)
        return self._ints[node.name]

    def _eval_int(self, node: fx.Node) -> Any:
        try:
            if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
                return tuple(self.new_shape(node.args[0]))
            if node.op == "call_method" and node.target == "size":
                shape = tuple(self.new_shape(node.args[0]))
                d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                return shape if d is None else shape[d]
            if node.op == "call_method" and node.target == "dim":
                return len(self.new_shape(node.args[0]))
            ops = {operator.getitem: operator.getitem, operator.add: operator.add, operator.sub: operator.sub,
                   operator.mul: operator.mul, operator.floordiv: operator.floordiv,
                   operator.truediv: operator.truediv, operator.mod: operator.mod, operator.neg: operator.neg}
            if node.op == "call_function" and node.target in ops:
                args = [self.new_int(a) for a in node.args]
                if any(a is None for a in args):
                    return None
                return ops[node.target](*args)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return None


def _new_shape(s: SlimContext, meta: Any, value: Any) -> torch.Size:
    if not hasattr(meta, "shape") or not isinstance(value, Dims):
        raise TypeError("not a single tensor")
    return torch.Size(n if l is None else s.new_count(l) for n, l in zip(meta.shape, value))


def expected_shapes(s: SlimContext, meta: Any, value: Any) -> Any:
    if hasattr(meta, "shape"):
        return _new_shape(s, meta, value) if isinstance(value, Dims) else meta.shape
    if isinstance(meta, (tuple, list)) and isinstance(value, tuple):
        return tuple(expected_shapes(s, m, v) for m, v in zip(meta, value))
    return None


def set_tensor(root: nn.Module, qualname: str, tensor: Tensor) -> Tensor:
    """Put ``tensor`` under ``qualname``; a Parameter stays a Parameter (one given as such is used as
    is, so tied names can share it) and a buffer keeps its persistence. Returns what was set."""
    owner_name, _, attr = qualname.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    old = getattr(owner, attr)
    if isinstance(old, nn.Parameter):
        if not isinstance(tensor, nn.Parameter):
            tensor = nn.Parameter(tensor, requires_grad=old.requires_grad)
        setattr(owner, attr, tensor)
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        setattr(owner, attr, tensor)
    return tensor


def _cuts(analysis: ChannelAnalysis, s: SlimContext) -> dict[str, list[tuple[int, Tensor]]]:
    """Per parameter / buffer name, the (dim, entries kept) of every dim that loses entries."""
    by_param: dict[str, list[tuple[int, Tensor]]] = {}
    for (name, dim), labels in analysis.param_dims.items():
        keep = s.keep_index(labels)
        if keep is not None:
            by_param.setdefault(name, []).append((dim, keep))
    return by_param


def slim(analysis: ChannelAnalysis, removed: Tensor) -> fx.GraphModule:
    """A new GraphModule without the units flagged in ``removed`` (bool over unit ids)."""
    gm = copy.deepcopy(analysis.gm)
    s = SlimContext(analysis, gm, removed)
    by_param = _cuts(analysis, s)
    for name, cuts in by_param.items():
        t = get_tensor(gm, name).detach()
        for dim, keep in cuts:
            t = t.index_select(dim, keep.to(t.device))
        set_tensor(gm, name, t.contiguous())
    _retie(analysis.gm, gm, by_param)
    owners = {name.rpartition(".")[0] for name in by_param}
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for owner in sorted(owners - called):  # modules read only through get_attr
        refresh_attributes(gm.get_submodule(owner))
    for owner in sorted({o.rpartition(".")[0] for o in owners} - called):
        refresh_attributes(gm.get_submodule(owner))  # e.g. the attention module around out_proj
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, hook in analysis.slim_hooks:
        hook(s, nodes[name])
    gm.graph.lint()
    gm.recompile()
    return gm




@torch.no_grad()
def write_back(analysis: ChannelAnalysis, removed: Tensor, slimmed: nn.Module, names: list[str]) -> None:
    """Copy the tensors ``names`` of a network ``slim`` made into the kept entries of the original's
    (``analysis.gm``): the inverse of the slicing, for weights changed after slimming."""
    by_param = _cuts(analysis, SlimContext(analysis, analysis.gm, removed))
    for name in names:
        full, small = get_tensor(analysis.gm, name), get_tensor(slimmed, name)
        index = torch.arange(full.numel(), device=full.device).reshape(full.shape)
        for dim, keep in by_param.get(name, []):
            index = index.index_select(dim, keep.to(full.device))
        flat = full.detach() if full.is_contiguous() else full.detach().contiguous()
        flat.view(-1)[index.reshape(-1)] = small.detach().reshape(-1).to(full.dtype)
        if flat.data_ptr() != full.data_ptr():
            full.detach().copy_(flat)


def _retie(old: nn.Module, gm: nn.Module, sliced: dict) -> None:
    """Tensors shared under several names before slimming (tied weights) are shared again after."""
    names: dict[int, list[str]] = {}
    for name, t in [*old.named_parameters(remove_duplicate=False), *old.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    for group in names.values():
        if len(group) < 2 or not any(n in sliced for n in group):
            continue
        tensors = [get_tensor(gm, n) for n in group]
        first = tensors[0]
        if all(t.shape == first.shape and torch.equal(t, first) for t in tensors[1:]):
            for n in group[1:]:
                owner_name, _, attr = n.rpartition(".")
                owner = gm.get_submodule(owner_name) if owner_name else gm
                if isinstance(first, nn.Parameter):
                    setattr(owner, attr, first)
                else:
                    owner._buffers[attr] = first
        else:
            import warnings

            warnings.warn(f"tied tensors {', '.join(group)} were pruned differently and are no longer tied",
                          stacklevel=3)


def get_tensor(root: nn.Module, qualname: str) -> Tensor:
    """The tensor at a dotted name (a parameter, buffer or plain attribute of a submodule)."""
    owner_name, _, attr = qualname.rpartition(".")
    return getattr(root.get_submodule(owner_name) if owner_name else root, attr)


def refresh_attributes(module: nn.Module) -> None:
    """Make size attributes agree with the (sliced) tensors of a module the graph reads by get_attr.

    Needed for modules whose parameters are used without a call of the module itself,
    e.g. a decomposed ``nn.MultiheadAttention`` and its ``out_proj``.
    """
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif type(module) is nn.MultiheadAttention:
        heads_width = module.out_proj.weight.shape[1]
        module.num_heads = heads_width // module.head_dim
