"""The rule table: one value mapping every known op to the rule that relates its channel ids.

A rule is ``rule(ctx, node) -> labels of the node's output`` (see ``fxmeta.analysis.context``
for ``Context`` and ``fxmeta.analysis.spaces`` for ``Dims``). It unites, maps or freezes the
id vectors of its inputs and parameters, records FLOPs terms, and registers a slimming hook
when the op holds forward-code constants (view sizes, split sizes, head counts, module
attributes).

Keys: module classes (``call_module``), functions (``call_function``) and method names
(``call_method``). The table is built once and never changes; a new op is one line, passed
explicitly::

    rules = RULES.with_rules({MyActivation: elementwise})     # or RULES + {...}
    fxmeta.prune(model, x, rules={MyActivation: elementwise})  # extra rules over RULES

Ops missing from the table are probed or frozen by ``fxmeta.analysis.channels``, never guessed.
"""
from __future__ import annotations

import importlib
import operator
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ... import ops
from .attention import (
    mha_module,
    sdpa,
    shifted_window_attention,
    stochastic_depth,
    swin_attention,
    swin_patch_merging_pad,
    swin_relative_position_bias,
)
from .conv import (
    addmm,
    conv_function,
    conv_module,
    einsum,
    embedding_module,
    linear_function,
    linear_module,
    matmul,
)
from .elementwise import assert_metadata, elementwise, first_arg, freeze_dim, metadata, softmax_module
from .index import cat, gather, getitem, index_select, pad, split, stack, unbind
from .norm import (
    batchnorm_function,
    batchnorm_module,
    groupnorm_function,
    groupnorm_module,
    instancenorm_module,
    layernorm_function,
    layernorm_module,
    prelu_module,
)
from .pool import interpolate_dims, pool, pool_dims_from_name, reduction
from .rewrites import decompose_multihead_attention
from .shape import (
    channel_shuffle,
    expand,
    flatten_module,
    movedim,
    permute,
    pixel_shuffle,
    pixel_unshuffle,
    repeat,
    reshape_like,
    squeeze,
    transpose,
    unflatten,
)

Rule = Callable[[Any, fx.Node], Any]
GraphRewrite = Callable[[fx.GraphModule, tuple[str, ...]], bool]


class RuleTable(Mapping):
    """An immutable mapping op -> rule, plus the graph rewrites that run before the rules.

    ``table.with_rules(extra)`` (or ``table + extra``) is a new table with ``extra`` layered
    over this one; the original stays as it was.
    """

    def __init__(self, rules: Mapping[Any, Rule] = (), rewrites: tuple[GraphRewrite, ...] = ()) -> None:
        self._rules = dict(rules)
        self._rewrites = tuple(rewrites)

    @property
    def rewrites(self) -> tuple[GraphRewrite, ...]:
        return self._rewrites

    def __getitem__(self, key: Any) -> Rule:
        return self._rules[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __hash__(self) -> int:
        return id(self)

    def with_rules(self, extra: Mapping[Any, Rule] | None = None,
                   rewrites: tuple[GraphRewrite, ...] = ()) -> "RuleTable":
        """A new table: this one with ``extra`` rules (they win) and further ``rewrites``."""
        if isinstance(extra, RuleTable):
            rewrites = extra.rewrites + tuple(rewrites)
        return RuleTable({**self._rules, **dict(extra or {})}, self._rewrites + tuple(rewrites))

    def __add__(self, extra: Mapping[Any, Rule]) -> "RuleTable":
        return self.with_rules(extra)

    def __repr__(self) -> str:
        return f"RuleTable({len(self._rules)} rules, {len(self._rewrites)} rewrites)"


def resolve_rules(rules: Mapping[Any, Rule] | None) -> RuleTable:
    """The table an analysis runs with: RULES, a given RuleTable, or RULES with extra rules."""
    if rules is None:
        return RULES
    if isinstance(rules, RuleTable):
        return rules
    return RULES.with_rules(rules)


def _torchvision_rules() -> dict[Any, Rule]:
    """Rules for torchvision functions that fx sees as leaves (torch.fx.wrap)."""
    try:
        swin_transformer = importlib.import_module("torchvision.models.swin_transformer")
        sd = importlib.import_module("torchvision.ops.stochastic_depth")  # the module, not the function
    except ImportError:  # torchvision is a dependency, but keep the table importable without it
        return {}
    return {
        swin_transformer.shifted_window_attention: swin_attention,
        swin_transformer._get_relative_position_bias: swin_relative_position_bias,
        swin_transformer._patch_merging_pad: swin_patch_merging_pad,
        sd.stochastic_depth: stochastic_depth,
    }


def _build() -> RuleTable:
    table: dict[Any, Rule] = {}
    for group in (ops.ACTIVATION_MODULES, ops.ACTIVATION_FUNCTIONS, ops.ACTIVATION_METHODS, ops.JUNCTIONS,
                  ops.OTHER_ELEMENTWISE):
        table.update({op: elementwise for op in group})
    table.update({op: first_arg for op in (*ops.IDENTITY_FUNCTIONS, *ops.IDENTITY_METHODS)})
    by_name = pool(pool_dims_from_name)
    table.update({op: by_name for op in (*ops.POOL_MODULES, *ops.POOL_FUNCTIONS, *ops.PAD_MODULES)})
    resize = pool(interpolate_dims)
    table.update({op: resize for op in (*ops.RESIZE_MODULES, *ops.RESIZE_FUNCTIONS)})
    table.update({op: pad for op in ops.PAD_FUNCTIONS})
    table.update({op: conv_module for op in (*ops.CONV_MODULES, *ops.CONV_TRANSPOSE_MODULES)})
    table.update({op: batchnorm_module for op in ops.BATCH_NORM_MODULES})
    table.update({op: instancenorm_module for op in ops.INSTANCE_NORM_MODULES})
    table.update({
        # modules
        nn.Linear: linear_module, nn.Embedding: embedding_module,
        nn.GroupNorm: groupnorm_module, nn.LayerNorm: layernorm_module, nn.PReLU: prelu_module,
        nn.Softmax: softmax_module, nn.LogSoftmax: softmax_module,
        nn.Flatten: flatten_module, nn.Unflatten: flatten_module,
        nn.PixelShuffle: pixel_shuffle, F.pixel_shuffle: pixel_shuffle, torch.pixel_shuffle: pixel_shuffle,
        nn.PixelUnshuffle: pixel_unshuffle, F.pixel_unshuffle: pixel_unshuffle,
        torch.pixel_unshuffle: pixel_unshuffle,
        nn.ChannelShuffle: channel_shuffle, F.channel_shuffle: channel_shuffle, torch.channel_shuffle: channel_shuffle,
        nn.MultiheadAttention: mha_module,
        # functions and methods
        F.conv1d: conv_function, F.conv2d: conv_function, F.conv3d: conv_function,
        F.conv_transpose1d: conv_function, F.conv_transpose2d: conv_function, F.conv_transpose3d: conv_function,
        F.linear: linear_function, torch.addmm: addmm,
        F.layer_norm: layernorm_function, F.group_norm: groupnorm_function, F.batch_norm: batchnorm_function,
        F.softmax: freeze_dim(1), F.log_softmax: freeze_dim(1), torch.softmax: freeze_dim(1),
        "softmax": freeze_dim(1), "log_softmax": freeze_dim(1),
        torch.cat: cat, torch.concat: cat, torch.concatenate: cat, torch.stack: stack,
        torch.split: split, torch.chunk: split, "split": split, "chunk": split,
        torch.unbind: unbind, "unbind": unbind,
        torch.index_select: index_select, "index_select": index_select,
        torch.gather: gather, "gather": gather, torch.take_along_dim: gather, "take_along_dim": gather,
        torch.take: gather, "take": gather, torch.scatter: gather, "scatter": gather,
        torch.scatter_add: gather, "scatter_add": gather, torch.index_add: gather, "index_add": gather,
        torch.index_copy: gather, "index_copy": gather, torch.index_put: gather, "index_put": gather,
        operator.getitem: getitem,
        torch.flatten: reshape_like(None), "flatten": reshape_like(None),
        torch.reshape: reshape_like(1), "reshape": reshape_like(1), "view": reshape_like(1),
        torch.unflatten: unflatten, "unflatten": unflatten,
        torch.squeeze: squeeze, "squeeze": squeeze,
        torch.unsqueeze: reshape_like(None), "unsqueeze": reshape_like(None),
        torch.permute: permute, "permute": permute,
        torch.transpose: transpose, "transpose": transpose, torch.swapaxes: transpose, "swapaxes": transpose,
        torch.t: transpose, "t": transpose, torch.movedim: movedim, "movedim": movedim,
        "expand": expand, "expand_as": expand, "repeat": repeat,
        torch.matmul: matmul, operator.matmul: matmul, torch.bmm: matmul, "matmul": matmul, "bmm": matmul,
        torch.einsum: einsum, F.scaled_dot_product_attention: sdpa,
        torch.sum: reduction("sum"), "sum": reduction("sum"),
        torch.mean: reduction("mean"), "mean": reduction("mean"),
        torch.amax: reduction("max"), "amax": reduction("max"),
        torch.var: reduction("var"), "var": reduction("var"), torch.std: reduction("std"), "std": reduction("std"),
        getattr: metadata, "size": metadata, "dim": metadata, "numel": metadata, torch._assert: metadata,
        torch._assert_tensor_metadata: assert_metadata,
        shifted_window_attention: swin_attention,
    })
    table.update(_torchvision_rules())
    return RuleTable(table, rewrites=(decompose_multihead_attention,))


RULES = _build()
