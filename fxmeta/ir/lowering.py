"""The lowering pass: a traced model -> WeightGraph.

Walks the fx graph once, tracking for every tensor which IR nodes its channel
dimension comes from (a ``Source``). Layers with weights (conv, linear) create nodes
and edges; norms and per-channel parameters become node features of the channels
they act on; residual adds, gates and concatenations along other dims become
junction nodes with structural edges. Ops with no rule here give tensors of unknown
origin: a consumer of such a tensor gets fresh "opaque" nodes for it, so the graph
never claims a channel correspondence it has not proven. Parameters the IR does not
model go to the passthrough table, untouched.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
from torch import Tensor, nn

from .. import ops
from ..capture import trace
from ..keys import AUTO_LEAVES, TENSOR_META
from ..tracing import call_args, propagate_shapes, tensor_meta
from .graph import Layer, Slot, WeightGraph

CONST = "const"  # env marker: a value computed only from parameters / constants


@dataclass
class Source:
    """Channel dim ``dim`` of a tensor: feature ``c * k + s`` comes from node ``ids[c]``."""

    dim: int
    ids: Tensor
    k: int = 1


# -- op groups (fxmeta.ops, shared with channel analysis) ---------------------------------------
_CONV = ops.CONV_MODULES
_CONV_T = ops.CONV_TRANSPOSE_MODULES
# isinstance checks on the base classes: subclasses (lazy, sync variants) fold the same way
_BATCH_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_UNARY_MODULES = ops.ACTIVATION_MODULES
_SPATIAL_MODULES = (*ops.POOL_MODULES, *ops.RESIZE_MODULES, *ops.PAD_MODULES)
_UNARY = ops.ACTIVATION_FUNCTIONS | ops.ACTIVATION_METHODS | ops.IDENTITY_FUNCTIONS | ops.IDENTITY_METHODS
_SPATIAL = ops.POOL_FUNCTIONS | ops.RESIZE_FUNCTIONS | ops.PAD_FUNCTIONS
_JUNCTIONS = ops.JUNCTIONS


def _target_key(node: fx.Node) -> Any:
    return node.target if node.op == "call_function" else node.target if node.op == "call_method" else None


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = tensor_meta(node) if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None else None


@dataclass
class _Builder:
    """Mutable state of one lowering run."""

    gm: fx.GraphModule
    layers: list[Layer] = field(default_factory=list)
    slots: dict[str, Slot] = field(default_factory=dict)
    env: dict[fx.Node, Any] = field(default_factory=dict)
    opaque: dict[tuple[fx.Node, int], Tensor] = field(default_factory=dict)
    cols: dict[int, list[tuple[str, str, Tensor]]] = field(default_factory=dict)  # layer -> (col, param, value)
    tags: dict[int, list[str]] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)  # module id -> layer index (first call)
    frozen: dict[str, str] = field(default_factory=dict)

    # -- nodes ---------------------------------------------------------------------------
    def new_layer(self, name: str, op: str, count: int, **kw: Any) -> tuple[int, Tensor]:
        start = self.layers[-1].stop if self.layers else 0
        self.layers.append(Layer(name=name, op=op, node_kind=op, start=start, count=count, **kw))
        return len(self.layers) - 1, torch.arange(start, start + count)

    def ids_for(self, arg: Any, dim: int, allow_k: bool = False) -> tuple[Tensor, int]:
        """Node ids of ``arg``'s dim ``dim`` (fresh opaque nodes when the origin is unknown)."""
        src = self.env.get(arg) if isinstance(arg, fx.Node) else None
        shape = _shape(arg)
        dim = dim % len(shape)
        if isinstance(src, Source) and src.dim == dim and (allow_k or src.k == 1):
            return src.ids, src.k
        key = (arg, dim)
        if key not in self.opaque:
            _, ids = self.new_layer(f"{arg.name}.dim{dim}", "opaque", shape[dim])
            self.opaque[key] = ids
        return self.opaque[key], 1

    def add_col(self, layer: int, col: str, param: str, value: Tensor | None) -> None:
        if value is not None:
            self.cols.setdefault(layer, []).append((col, param, value))

    # -- layers with weights -----------------------------------------------------------------
    def weighted(self, node: fx.Node, module: nn.Module) -> Source:
        name = node.target
        if isinstance(module, nn.Linear):
            ids, k = self.ids_for(node.args[0], -1, allow_k=True)
            out = module.out_features
            edge = module.weight.reshape(out, module.in_features // k, k)
            edge_kind, groups, layout, op = ("linear" if k == 1 else f"linear:flatten{k}"), 1, "reshape", "linear"
        else:
            ids, _ = self.ids_for(node.args[0], 1)
            kernel = "x".join(str(s) for s in module.kernel_size)
            groups = module.groups
            w = module.weight
            op = type(module).__name__.lower()
            if isinstance(module, _CONV_T):
                out = module.out_channels
                per_group, k = w.shape[0] // groups, w[0, 0].numel()
                edge = w.reshape(groups, per_group, out // groups, k).transpose(1, 2).reshape(out, per_group, k)
                layout = "transposed"
            else:
                out = w.shape[0]
                edge = w.reshape(out, w.shape[1], -1)
                layout = "reshape"
            edge_kind = f"{op}:{kernel}"
        first = self.owner.get(id(module))
        index, out_ids = self.new_layer(name, op, out, edge_kind=edge_kind, src=ids, groups=groups, edge=edge)
        if first is None:  # a module called twice shares its weights: slot them once
            self.owner[id(module)] = index
            self.slots[f"{name}.weight"] = Slot(index, "edge", None, layout, tuple(module.weight.shape), groups)
            if module.bias is not None:
                self.add_col(index, "bias", f"{name}.bias", module.bias)
        else:
            self.layers[-1].learned_edges = False
        dim = len(_shape(node)) - 1 if isinstance(module, nn.Linear) else 1
        return Source(dim, out_ids)

    def norm(self, node: fx.Node, module: nn.Module) -> Source | None:
        """Fold a per-channel norm into the layer that produced its channels, or give it nodes."""
        name = node.target
        if isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                return None
            dim = -1
        elif isinstance(module, nn.PReLU):
            if module.num_parameters == 1:
                return self.unary(node)
            dim = 1
        else:
            dim = 1
        ids, _ = self.ids_for(node.args[0], dim)
        dim = dim % len(_shape(node))
        target = self._foldable(ids)
        if target is None or self.owner.get(id(module)) is not None:
            target, ids_out = self.new_layer(name, "norm", len(ids), edge_kind="norm", src=ids,
                                             groups=len(ids), edge=torch.ones(len(ids), 1, 1),
                                             learned_edges=False)
        else:
            ids_out = ids
        if self.owner.get(id(module)) is None:
            self.owner[id(module)] = target
            tag = type(module).__name__.lower()
            self.tags.setdefault(target, []).append(tag)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(module, attr, None)
                if isinstance(value, Tensor):
                    self.add_col(target, f"{tag}.{attr}", f"{name}.{attr}", value)
        return Source(dim, ids_out)

    def _foldable(self, ids: Tensor) -> int | None:
        if ids.numel() == 0:
            return None
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            if layer.start <= int(ids[0]) < layer.stop:
                if (layer.count == ids.numel() and int(ids[0]) == layer.start
                        and torch.equal(ids, torch.arange(layer.start, layer.stop))
                        and not any(t != "bias" for t in self.tags.get(index, []))):
                    return index
                return None
        return None

    # -- junctions and view-like ops ---------------------------------------------------------
    def junction(self, node: fx.Node, op: str, operands: list[Any]) -> Source | None:
        out_shape = _shape(node)
        if out_shape is None:
            return None
        tensors = [a for a in operands if isinstance(a, fx.Node) and _shape(a) is not None
                   and self.env.get(a) is not CONST]
        if not tensors:
            return CONST if any(isinstance(a, fx.Node) for a in operands) else None
        lead = next((a for a in tensors if isinstance(self.env.get(a), Source)), None)
        if lead is None:
            return None
        src = self.env[lead]
        dim = src.dim + len(out_shape) - len(_shape(lead))
        size = out_shape[dim]
        channel_ops = []
        for a in tensors:
            shape = _shape(a)
            local = dim - (len(out_shape) - len(shape))
            if local >= 0 and shape[local] == size:
                channel_ops.append((a, local))
        if len(channel_ops) == 1:
            return Source(dim, src.ids, src.k) if src.k == 1 or len(out_shape) == len(_shape(lead)) else None
        ids = [self.ids_for(a, local)[0] for a, local in channel_ops]
        n = len(ids)
        _, out_ids = self.new_layer(node.name, op, size, edge_kind=f"junction:{op}",
                                    src=torch.stack(ids, 1).reshape(-1), groups=size,
                                    edge=torch.ones(size, n, 1), learned_edges=False)
        return Source(dim, out_ids)

    def unary(self, node: fx.Node) -> Any:
        args = call_args(node)
        return self.env.get(args[0]) if args and isinstance(args[0], fx.Node) else None

    def spatial(self, node: fx.Node) -> Source | None:
        src = self.unary(node)
        if isinstance(src, Source) and src.dim == 1 and src.k == 1 and _shape(node)[1] == len(src.ids):
            return src
        return None


def _flatten(src: Source, in_shape: tuple, start: int, end: int) -> Source | None:
    start, end = start % len(in_shape), end % len(in_shape)
    if src.dim < start:
        return src
    if src.dim > end:
        return Source(src.dim - (end - start), src.ids, src.k)
    if src.dim == start:
        k = src.k
        for s in in_shape[start + 1:end + 1]:
            k *= s
        return Source(start, src.ids, k)
    return None


def _reshape(src: Source, in_shape: tuple, out_shape: tuple) -> Source | None:
    d = src.dim
    if out_shape[:d + 1] == in_shape[:d + 1]:
        return src if len(out_shape) > d else None
    if out_shape[:d] == in_shape[:d] and len(out_shape) == d + 1:
        return _flatten(src, in_shape, d, -1)
    return None


def _norm_dims(dims: Any, ndim: int) -> list[int]:
    if isinstance(dims, int):
        dims = [dims]
    return sorted(d % ndim for d in dims)


def _view_rule(b: _Builder, node: fx.Node) -> Any:
    """Rules for ops that move, merge or slice dims without mixing channels."""
    src = b.unary(node)
    if not isinstance(src, Source):
        return CONST if src is CONST else None
    first, *args = call_args(node)
    in_shape, out_shape = _shape(first), _shape(node)
    key = _target_key(node)
    if key in (torch.flatten, "flatten"):
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return _flatten(src, in_shape, start, end)
    if key in ("view", "reshape", torch.reshape):
        return _reshape(src, in_shape, out_shape) if out_shape else None
    if key in ("permute", torch.permute):
        dims = args[0] if args and isinstance(args[0], (tuple, list)) else args or node.kwargs.get("dims")
        dims = [d % len(in_shape) for d in dims]
        return Source(dims.index(src.dim), src.ids, src.k)
    if key in ("transpose", torch.transpose):
        d0, d1 = (a % len(in_shape) for a in args[:2])
        swap = {d0: d1, d1: d0}
        return Source(swap.get(src.dim, src.dim), src.ids, src.k)
    if key in (torch.mean, "mean", torch.sum, "sum", torch.amax, "amax", "max", torch.amin, "amin"):
        dims = node.kwargs.get("dim", args[0] if args else None)
        if dims is None or not out_shape:
            return None
        dims = _norm_dims(dims, len(in_shape))
        if src.dim in dims:
            return None
        keep = node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        return src if keep else Source(src.dim - sum(d < src.dim for d in dims), src.ids, src.k)
    if key in ("squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze):
        # Find where the channel dim went by matching the shapes around it.
        return _match_dim(src, in_shape, out_shape)
    return None


def _match_dim(src: Source, in_shape: tuple, out_shape: tuple) -> Source | None:
    if out_shape is None:
        return None
    before = [s for s in in_shape[:src.dim] if s != 1]
    for d, size in enumerate(out_shape):
        if size == in_shape[src.dim] and [s for s in out_shape[:d] if s != 1] == before:
            return Source(d, src.ids, src.k)
    return None


def _getitem_rule(b: _Builder, node: fx.Node) -> Any:
    base, index = node.args
    src = b.env.get(base)
    if isinstance(src, tuple):  # an element of split / chunk output
        return src[index] if isinstance(index, int) and index < len(src) else None
    if not isinstance(src, Source):
        return CONST if src is CONST else None
    index = index if isinstance(index, tuple) else (index,)
    in_shape = _shape(base)
    if in_shape is None or any(isinstance(i, (fx.Node, Tensor, list)) for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = len(in_shape) - (len(index) - 1 - sum(i is None for i in index))
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    d_in = d_out = 0
    for item in index:
        if item is None:
            d_out += 1
            continue
        if d_in == src.dim:
            if isinstance(item, slice) and item == slice(None):
                return Source(d_out, src.ids, src.k)
            if isinstance(item, slice) and src.k == 1:
                return Source(d_out, src.ids[item], 1)
            return None
        d_in += 1
        d_out += 0 if isinstance(item, int) else 1
    return Source(d_out + src.dim - d_in, src.ids, src.k)


def _split_rule(b: _Builder, node: fx.Node) -> Any:
    src = b.unary(node)
    outs = node.meta.get(TENSOR_META)
    if not isinstance(src, Source) or not isinstance(outs, (tuple, list)):
        return None
    key = _target_key(node)
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0) % len(_shape(node.args[0]))
    if dim != src.dim:
        return tuple(src for _ in outs)
    if src.k != 1:
        return None
    pieces, at = [], 0
    for meta in outs:
        size = meta.shape[dim]
        pieces.append(Source(dim, src.ids[at:at + size], 1))
        at += size
    return tuple(pieces) if key is not None else None


def _cat_rule(b: _Builder, node: fx.Node) -> Any:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    out_shape = _shape(node)
    if out_shape is None:
        return None
    dim %= len(out_shape)
    srcs = [b.env.get(t) for t in tensors]
    if all(s is CONST for s in srcs):
        return CONST
    lead = next((s for s in srcs if isinstance(s, Source)), None)
    if lead is None:
        return None
    if lead.dim == dim:
        ids = [b.ids_for(t, dim)[0] for t in tensors]
        return Source(dim, torch.cat(ids))
    return b.junction(node, "cat", list(tensors))


def _spatial_rule(b: _Builder, node: fx.Node) -> Any:
    return b.spatial(node)


def _unary_rule(b: _Builder, node: fx.Node) -> Any:
    return b.unary(node)


# Built once; read-only so that no caller can change how every later model is lowered.
RULES: Mapping[Any, Callable[[_Builder, fx.Node], Any]] = MappingProxyType({
    operator.getitem: _getitem_rule,
    torch.cat: _cat_rule, torch.concat: _cat_rule, torch.concatenate: _cat_rule,
    torch.split: _split_rule, "split": _split_rule, torch.chunk: _split_rule, "chunk": _split_rule,
    torch.tensor_split: _split_rule,
    **{op: _unary_rule for op in _UNARY},
    **{op: _spatial_rule for op in _SPATIAL},
    **{k: _view_rule for k in (
        torch.flatten, "flatten", "view", "reshape", torch.reshape, "permute", torch.permute,
        "transpose", torch.transpose, torch.mean, "mean", torch.sum, "sum", torch.amax, "amax", "max",
        torch.amin, "amin", "squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze)},
})


def _module_rule(b: _Builder, node: fx.Node) -> Any:
    module = b.gm.get_submodule(node.target)
    if isinstance(module, (nn.Linear, *_CONV, *_CONV_T)):
        return b.weighted(node, module)
    if isinstance(module, (*_BATCH_NORM, nn.LayerNorm, nn.PReLU)):
        return b.norm(node, module)
    if isinstance(module, _UNARY_MODULES):
        return b.unary(node)
    if isinstance(module, _SPATIAL_MODULES):
        return b.spatial(node)
    if isinstance(module, nn.Flatten):
        src = b.unary(node)
        return _flatten(src, _shape(node.args[0]), module.start_dim, module.end_dim) if isinstance(src, Source) else None
    if any(True for _ in module.parameters()):
        b.frozen[node.target] = f"{type(module).__name__} is not modelled by the IR (kept as passthrough)"
    return None


def _analysis_rule(analysis: Any) -> Callable[[_Builder, fx.Node], Any]:
    """For an op the lowering has no rule for: what the channel analysis (with a caller's rules)
    proved. Its output carries the channel nodes of its input when the analysis maps the input's
    channel entries one to one onto the output's on the same dim; anything else stays unknown."""
    from ..analysis.spaces import FROZEN

    def rule(b: _Builder, node: fx.Node) -> Any:
        args = call_args(node)
        arg = args[0] if args and isinstance(args[0], fx.Node) else None
        src = b.env.get(arg) if arg is not None else None
        out_v, in_v = analysis.values.get(node.name), analysis.values.get(getattr(arg, "name", None))
        if not isinstance(src, Source) or src.k != 1 or not isinstance(out_v, list) or not isinstance(in_v, list):
            return None
        d = src.dim
        if d >= len(out_v) or d >= len(in_v) or out_v[d] is None or in_v[d] is None or len(out_v[d]) != len(in_v[d]):
            return None
        out_roots, in_roots = analysis.roots(out_v[d]), analysis.roots(in_v[d])
        if bool((in_roots == FROZEN).any()) or not torch.equal(out_roots, in_roots):
            return None
        return src

    return rule


def lower(model: nn.Module, example_input: Any = None, *, gm: fx.GraphModule | None = None,
          capture: str = "auto", rules: Mapping[Any, Callable] | None = None) -> WeightGraph:
    """Trace ``model`` (or take the traced ``gm``) and lower it to a WeightGraph.

    ``model`` may be a torch.export program; ``capture`` is as in ``fxmeta.capture.trace``.
    ``rules`` are channel rules ``{op: rule}`` as ``fxmeta.prune(rules=)`` takes them: an op
    the lowering has no rule for is then lowered from the channel analysis run with them (its
    output keeps its input's channel nodes when the analysis maps them one to one), so a rule
    written for pruning reaches the IR and the metanetwork too."""
    if gm is None:
        gm = trace(model, example_input, capture=capture)
    elif example_input is not None:
        propagate_shapes(gm, example_input)
    fallback = None
    if rules:
        from ..analysis.channels import analyze

        fallback = _analysis_rule(analyze(gm, example_input, rules=rules, capture="fx"))
    b = _Builder(gm)
    outputs: list[Tensor] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2 and tensor_meta(node).dtype.is_floating_point:
                _, ids = b.new_layer(node.name, "input", shape[1])
                b.env[node] = Source(1, ids)
        elif node.op == "get_attr":
            b.env[node] = CONST
        elif node.op == "call_module":
            b.env[node] = _module_rule(b, node)
        elif node.op in ("call_function", "call_method"):
            key = node.target
            if key in _JUNCTIONS:
                b.env[node] = b.junction(node, _JUNCTIONS[key], list(node.args))
            else:
                rule = RULES.get(key) or fallback
                # Sizes and other non-tensor inputs do not count: expand(n, -1) of a
                # parameter is still a constant.
                args = [a for a in node.all_input_nodes if tensor_meta(a) is not None]
                if args and all(b.env.get(a) is CONST for a in args):
                    b.env[node] = CONST
                else:
                    b.env[node] = rule(b, node) if rule is not None else None
        elif node.op == "output":
            returned: list[fx.Node] = []
            fx.node.map_arg(node.args[0], returned.append)
            for out in returned:
                src = b.env.get(out)
                if isinstance(src, Source):
                    outputs.append(src.ids.clone())
    for name in gm.meta.get(AUTO_LEAVES, {}):
        b.frozen.setdefault(name, "could not be traced; kept whole as a leaf")
    return _finish(b, outputs)


def _finish(b: _Builder, outputs: list[Tensor]) -> WeightGraph:
    """Stack node feature columns, name kinds, and put every unslotted tensor in passthrough."""
    for index, layer in enumerate(b.layers):
        cols = b.cols.get(index, [])
        tags = (["bias"] if any(c == "bias" for c, _, _ in cols) else []) + b.tags.get(index, [])
        layer.node_kind = "+".join([layer.op, *tags])
        if cols:
            dtype = cols[0][2].dtype
            for _, _, v in cols[1:]:
                dtype = torch.promote_types(dtype, v.dtype)
            layer.node = torch.stack([v.to(dtype) for _, _, v in cols], dim=1)
            layer.node_cols = tuple(c for c, _, _ in cols)
            for col, (_, param, value) in enumerate(cols):
                b.slots[param] = Slot(index, "node", col, "column", tuple(value.shape))
    buffers = {name for name, _ in b.gm.named_buffers()}
    b.slots = {name: replace(slot, buffer=name in buffers) for name, slot in b.slots.items()}
    state = b.gm.state_dict(keep_vars=True)
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    for name, value in state.items():
        key = id(value)
        if key in seen and name not in b.slots:
            aliases[name] = seen[key]
            continue
        seen.setdefault(key, name)
        if name not in b.slots:
            passthrough[name] = value
    graph = WeightGraph(b.gm, b.layers, b.slots, passthrough, aliases, outputs, dict(b.frozen))
    return graph
