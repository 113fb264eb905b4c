"""What a channel rule sees (``Context``) and what a slimming hook may ask (``SlimView``).

``SlimView`` is the whole interface between analysis and pruning: rules register hooks
that rewrite forward-code constants of the slimmed graph, and those hooks see the new
graph only through it. ``fxmeta.pruning.slimming.SlimContext`` implements it.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..keys import TENSOR_META
from .spaces import FROZEN, Dims, FlopTerm, UnionFind, Value, flat_labels, frozen_value, resolve_attr


class SlimView(Protocol):
    """The slimmed graph as a slimming hook sees it."""

    def module(self, target: str) -> nn.Module:
        """The (new, smaller) submodule at ``target``."""

    def old_shape(self, node: fx.Node | str) -> torch.Size:
        """Shape of ``node``'s output before slimming."""

    def new_shape(self, node: fx.Node | str) -> torch.Size:
        """Shape of ``node``'s output after slimming."""

    def new_count(self, labels: Tensor | None, default: int = 0) -> int:
        """How many entries of an id vector stay."""

    def new_int(self, node: Any) -> Any:
        """Value of a size computation in the slimmed graph (None when it is not a plain size)."""


SlimHook = Callable[[SlimView, fx.Node], None]

# How the masked original computes a node whose statistics exclude removed entries:
# ``reference(keep, args, kwargs)``, ``keep(labels)`` being True for the entries that stay.
Reference = Callable[[Callable[[Tensor], Tensor], tuple, dict], Any]


# --------------------------------------------------------------------------- context


class Context:
    """What a rule sees: labels and shapes of node arguments, and ways to relate them."""

    def __init__(self, gm: fx.GraphModule, uf: UnionFind) -> None:
        self.gm = gm
        self.uf = uf
        self.values: dict[str, Value] = {}
        self.param_dims: dict[tuple[str, int], Tensor] = {}
        self.param_values: dict[str, Dims] = {}
        self.flop_terms: list[FlopTerm] = []
        self.slim_hooks: list[tuple[str, Callable]] = []
        self.references: dict[str, Reference] = {}
        self.frozen_reasons: dict[str, str] = {}
        self.probed: dict[str, str] = {}
        self.constants: dict[str, str] = {}
        self.node: fx.Node | None = None
        self._tensor_names: dict[int, str] = {}  # id of a tensor -> the first name it was read under

    # -- reading
    def value(self, arg: Any) -> Value:
        if isinstance(arg, fx.Node):
            return self.values.get(arg.name)
        if isinstance(arg, (tuple, list)):
            return tuple(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return tuple(self.value(a) for a in arg.values())
        return None

    def dims(self, arg: Any) -> Dims:
        """Labels of a tensor argument (a Node holding one tensor)."""
        v = self.value(arg)
        if not isinstance(v, Dims):
            raise TypeError(f"{arg} does not hold a single tensor")
        return v

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(self.value(arg), Dims)

    def shape(self, arg: Any) -> torch.Size:
        meta = arg.meta.get(TENSOR_META)
        if not hasattr(meta, "shape"):
            raise TypeError(f"{arg} has no tensor shape")
        return meta.shape

    def meta(self, arg: fx.Node) -> Any:
        return arg.meta.get(TENSOR_META)

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def arg(self, node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        """Positional-or-keyword argument of a call."""
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(name, default)

    # -- writing
    def fresh(self, n: int) -> Tensor:
        return self.uf.fresh(n)

    def union(self, *labels: Tensor | None) -> None:
        """Unite id vectors entry by entry; a None among them freezes the others."""
        present = [l for l in labels if l is not None]
        if len(present) < len(labels):
            self.freeze(*present)
            return
        for other in present[1:]:
            if other.shape != present[0].shape:
                raise ValueError(f"cannot unite id vectors of lengths {len(present[0])} and {len(other)}")
            self.uf.union(present[0], other)

    def freeze(self, *labels: Tensor | None, reason: str | None = None) -> None:
        for l in labels:
            if l is not None and len(l):
                self.uf.union(l, torch.zeros_like(l))
        if reason and self.node is not None and any(l is not None for l in labels):
            self.frozen_reasons.setdefault(self.node.name, reason)

    def freeze_value(self, value: Value, reason: str | None = None) -> None:
        for l in flat_labels(value):
            self.freeze(l, reason=reason)

    def is_frozen(self, labels: Tensor | None) -> bool:
        return labels is None or bool((self.uf.find(labels) == FROZEN).all())

    def param(self, name: str) -> Dims:
        """Labels of a parameter or buffer by qualified name (fresh ids the first time)."""
        if name not in self.param_values:
            tensor = resolve_attr(self.gm, name)
            dims = Dims()
            for d, n in enumerate(tensor.shape):
                if n > 1 and tensor.is_floating_point():
                    ids = self.fresh(n)
                    self.param_dims[(name, d)] = ids
                    dims.append(ids)
                else:
                    dims.append(None)
            self.param_values[name] = dims
            first = self._tensor_names.setdefault(id(tensor), name)
            if first != name:  # tied weights: one tensor under two names is pruned as one
                for a, b in zip(self.param_values[first], dims):
                    if a is not None and b is not None:
                        self.union(a, b)
        return self.param_values[name]

    def module_param(self, node: fx.Node, attr: str) -> Dims | None:
        """Labels of ``module.attr`` of a call_module node, None when it is absent."""
        module = self.module(node)
        if getattr(module, attr, None) is None:
            return None
        return self.param(f"{node.target}.{attr}")

    def flops(self, coef: float, *factors: Tensor | None) -> None:
        """Record FLOPs ``coef * prod(live entries of each factor)``; None factors count 1."""
        live = [f for f in factors if f is not None]
        self.flop_terms.append(FlopTerm(float(coef), live, self.node.name if self.node else ""))

    def on_slim(self, fn: Callable) -> None:
        """Run ``fn(slim_context, node)`` on this node when the graph is slimmed."""
        self.slim_hooks.append((self.node.name, fn))

    def on_reference(self, fn: Reference) -> None:
        """Compute this node as ``fn`` in the self-check's masked original: for a norm or mean over a
        channel dim, the statistics run over the kept entries only, as they do once pruned."""
        self.references[self.node.name] = fn

    def note_constant(self, text: str) -> None:
        """Record a forward-code constant of this node that slimming rewrites."""
        self.constants[self.node.name] = text

    def frozen_like(self, node: fx.Node) -> Value:
        return frozen_value(node.meta.get(TENSOR_META))


