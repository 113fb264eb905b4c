"""The one table from ATen ops to the torch-level calls the channel rules know.

``ATEN[op]`` is a tuple of handlers, tried in order; a handler gets the op's arguments
(``Args``, by schema name) and returns the torch-level call (``Lowered``) or None when it
does not apply (e.g. a convolution whose weight is computed, not a parameter: then the
next handler, the functional form, takes it). An op without an entry stays as it is: the
channel analysis probes it (an index map that verifies) or freezes the channels around it.

Every entry is exact, bit for bit: the torch-level call runs the very ATen op the program
holds, with the same arguments. The non-obvious ones:

* ``nn.Conv*d`` / ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.GroupNorm`` / ``nn.Embedding`` /
  ``nn.PReLU``: each module's forward is one functional call (``F.conv2d`` ...) that
  dispatches to exactly the ATen op it replaces, with the module's attributes as its
  arguments; the module owns the program's own parameter objects.
* ``aten.batch_norm`` in inference (``training=False`` with running statistics) is
  ``nn.BatchNorm*d`` in eval mode: its forward calls ``F.batch_norm(..., training=False)``,
  which is the same ``aten.batch_norm``; momentum does not enter an inference step. Put in
  training mode the module uses batch statistics again, as the original model would.
* ``aten.convolution`` / ``aten.addmm(bias, x, t(w))`` / ``_native_batch_norm_legit_no_training``
  (core ATen, after ``run_decompositions``) are what the modules' ops lower to for batched
  (2-D for addmm) inputs, so the same modules reproduce them.
* in-place ops (``relu_``, ``add_``, ``hardtanh_`` ...) stay in place (``torch.relu_``,
  ``operator.iadd``, ``inplace=True``): the program may read the updated tensor again.
* ``select`` / ``slice`` are ``x[...]`` (``Tensor.__getitem__`` makes the same views);
  ``index.Tensor(x, [None, i])`` is ``x[:, i]`` (the full slice is a view of all of ``x``,
  the advanced index the same ``aten.index``); ``sym_size`` is ``x.size(d)``.
* ``addmm(bias, x, w)`` with a plain (not transposed) weight is ``torch.addmm`` itself:
  GPT-2's ``Conv1D`` stores its weight as (in, out) and calls exactly that.
* factories (``arange``, ``new_ones`` ...) keep the program's dtype and device arguments,
  so they build the same tensors; they only ever feed masks and positions.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

aten = torch.ops.aten


@dataclass
class Lowered:
    """A torch-level call: ``op`` is call_function / call_method / call_module (``target`` is
    then the module's path in the new module tree)."""

    op: str
    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    item0: bool = False  # the call gives item 0 of the op's tuple result (the only item used)


class Args(Protocol):
    """What a handler sees of one ATen call (implemented by ``fxmeta.capture.program``)."""

    def __getitem__(self, name: str) -> Any:
        """The argument ``name`` (schema name), as the new graph sees it (nodes or constants)."""

    def param(self, name: str) -> torch.Tensor | None:
        """The parameter / buffer the argument ``name`` reads, or None when it is computed."""

    def ndim(self, name: str) -> int:
        """Number of dims of the tensor argument ``name``."""

    def transposed_param(self, name: str) -> torch.Tensor | None:
        """The 2-D parameter ``w`` when the argument ``name`` is ``t(w)`` or ``permute(w, [1, 0])``."""

    def only_first_output_used(self) -> bool:
        """True when every user of a tuple-returning op reads item 0."""

    def module(self, module: nn.Module, *inputs: str) -> Lowered | None:
        """A call of ``module`` on the named arguments, or None when it has no place in the
        module tree (then a functional handler takes the op)."""


Handler = Callable[[Args], "Lowered | None"]


# ----------------------------------------------------------------------------- helpers

def fn(target: Callable, *names: str, **kw: str) -> Handler:
    """``target(*args[names], **{k: args[v]})``."""
    return lambda a: Lowered("call_function", target, tuple(a[n] for n in names), {k: a[v] for k, v in kw.items()})


def method(name: str, *names: str, **kw: str) -> Handler:
    """``args[names[0]].name(*rest, ...)``."""
    return lambda a: Lowered("call_method", name, tuple(a[n] for n in names), {k: a[v] for k, v in kw.items()})


def inplace(target: Callable, *names: str, **kw: str) -> Handler:
    """``target(..., inplace=True)`` for the functional activations that take it."""
    base = fn(target, *names, **kw)

    def handler(a: Args) -> Lowered:
        low = base(a)
        low.kwargs["inplace"] = True
        return low

    return handler


def when(test: Callable[[Args], bool], handler: Handler) -> Handler:
    return lambda a: handler(a) if test(a) else None


def _ntuple(v: Any, n: int) -> tuple:
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    return v * n if len(v) == 1 else v


def _new(cls: type[nn.Module], *args: Any, like: torch.Tensor, **kwargs: Any) -> nn.Module:
    """A module without the cost of its random init: every tensor is replaced right after."""
    return skip_init(cls, *args, device=like.device, dtype=like.dtype, **kwargs).eval()


def _own(module: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    """Give ``module`` the program's own tensors (identity kept: tied weights stay tied)."""
    for name, t in tensors.items():
        setattr(module, name, t)
    return module


def _weights(a: Args, *names: str, buffers: tuple[str, ...] = ()) -> list[torch.Tensor | None] | None:
    """The program tensors behind ``names`` (None for an absent optional one), or None if any
    is computed, or is a plain tensor where the module holds an ``nn.Parameter``."""
    out = []
    for n in names:
        if a[n] is None:
            out.append(None)
            continue
        t = a.param(n)
        if t is None or (n not in buffers and not isinstance(t, nn.Parameter)):
            return None
        out.append(t)
    return out


# ----------------------------------------------------------------------------- modules

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _conv_module(a: Args, transposed: bool, output_padding: Any = 0) -> Lowered | None:
    found = _weights(a, "weight", "bias")
    if found is None:
        return None
    w, b = found
    k = w.dim() - 2
    if a.ndim("input") != k + 2:
        return None  # unbatched input: the module would unsqueeze it, the op does not
    groups = a["groups"]
    stride, dilation = _ntuple(a["stride"], k), _ntuple(a["dilation"], k)
    padding = a["padding"] if isinstance(a["padding"], str) else _ntuple(a["padding"], k)
    if transposed:
        cls, cin, cout = _CONV_T[k], w.shape[0], w.shape[1] * groups
        m = _new(cls, cin, cout, tuple(w.shape[2:]), stride=stride, padding=padding,
                 output_padding=_ntuple(output_padding, k), groups=groups, bias=b is not None, dilation=dilation,
                 like=w)
    else:
        if isinstance(padding, str) and padding == "same" and any(s != 1 for s in stride):
            return None
        cls, cin, cout = _CONV[k], w.shape[1] * groups, w.shape[0]
        m = _new(cls, cin, cout, tuple(w.shape[2:]), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, bias=b is not None, like=w)
    return a.module(_own(m, weight=w, bias=b), "input")


def conv(a: Args) -> Lowered | None:
    """aten.conv{1,2,3}d / aten.conv2d.padding -> nn.Conv*d."""
    return _conv_module(a, transposed=False)


def conv_transpose(a: Args) -> Lowered | None:
    """aten.conv_transpose{1,2,3}d.input -> nn.ConvTranspose*d."""
    return _conv_module(a, transposed=True, output_padding=a["output_padding"])


def convolution(a: Args) -> Lowered | None:
    """aten.convolution (core ATen) -> nn.Conv*d / nn.ConvTranspose*d."""
    return _conv_module(a, transposed=bool(a["transposed"]), output_padding=a["output_padding"])


def linear(a: Args) -> Lowered | None:
    """aten.linear -> nn.Linear."""
    found = _weights(a, "weight", "bias")
    if found is None or found[0].dim() != 2:
        return None
    w, b = found
    m = _new(nn.Linear, w.shape[1], w.shape[0], bias=b is not None, like=w)
    return a.module(_own(m, weight=w, bias=b), "input")


def addmm(a: Args) -> Lowered | None:
    """aten.addmm(bias, x, t(w)) (core ATen linear on a 2-D input) -> nn.Linear."""
    w, b = a.transposed_param("mat2"), a.param("self")
    if w is None or not isinstance(b, nn.Parameter) or b.dim() != 1 or a.ndim("mat1") != 2 or a["beta"] != 1 or a["alpha"] != 1:
        return None
    m = _new(nn.Linear, w.shape[1], w.shape[0], like=w)
    return a.module(_own(m, weight=w, bias=b), "mat1")


def mm(a: Args) -> Lowered | None:
    """aten.mm(x, t(w)) (core ATen bias-free linear) -> nn.Linear(bias=False)."""
    w = a.transposed_param("mat2")
    if w is None:
        return None
    m = _new(nn.Linear, w.shape[1], w.shape[0], bias=False, like=w)
    return a.module(_own(m, weight=w), "self")


def _batch_norm_module(a: Args, training: bool) -> Lowered | None:
    found = _weights(a, "weight", "bias", "running_mean", "running_var", buffers=("running_mean", "running_var"))
    if training or found is None or found[2] is None or found[3] is None:
        return None
    w, b, mean, var = found
    if (w is None) != (b is None) or a.ndim("input") not in _BATCH_NORM:
        return None
    m = _new(_BATCH_NORM[a.ndim("input")], mean.shape[0], eps=a["eps"], affine=w is not None, like=mean)
    m.num_batches_tracked.zero_()  # the program's own counter replaces it when the converter finds one
    return a.module(_own(m, weight=w, bias=b, running_mean=mean, running_var=var), "input")


def batch_norm(a: Args) -> Lowered | None:
    """aten.batch_norm in inference -> nn.BatchNorm*d."""
    return _batch_norm_module(a, bool(a["training"]))


def batch_norm_no_training(a: Args) -> Lowered | None:
    """aten._native_batch_norm_legit_no_training (core ATen) -> nn.BatchNorm*d, when only its
    output (item 0 of the returned tuple) is used."""
    return _item0(_batch_norm_module(a, False)) if a.only_first_output_used() else None


def _item0(low: Lowered | None) -> Lowered | None:
    if low is not None:
        low.item0 = True
    return low


def max_pool_with_indices(a: Args) -> Lowered | None:
    """aten.max_pool2d_with_indices (core ATen) -> F.max_pool2d when the indices are unused:
    the maxima are the same entries, whichever kernel picks them."""
    if not a.only_first_output_used():
        return None
    return _item0(fn(F.max_pool2d, "self", "kernel_size", "stride", "padding", "dilation", "ceil_mode")(a))


def layer_norm(a: Args) -> Lowered | None:
    """aten.layer_norm -> nn.LayerNorm."""
    found = _weights(a, "weight", "bias")
    if found is None:
        return None
    w, b = found
    if w is None and b is not None:
        return None
    shape = tuple(a["normalized_shape"])
    like = w if w is not None else torch.empty(0)
    m = _new(nn.LayerNorm, shape, eps=a["eps"], elementwise_affine=w is not None, bias=b is not None, like=like)
    return a.module(_own(m, weight=w, bias=b), "input")


def group_norm(a: Args) -> Lowered | None:
    """aten.group_norm -> nn.GroupNorm."""
    found = _weights(a, "weight", "bias")
    if found is None or (found[0] is None) != (found[1] is None) or found[0] is None:
        return None
    w, b = found
    m = _new(nn.GroupNorm, a["num_groups"], w.shape[0], eps=a["eps"], like=w)
    return a.module(_own(m, weight=w, bias=b), "input")


def embedding(a: Args) -> Lowered | None:
    """aten.embedding -> nn.Embedding (padding_idx -1 is "none")."""
    found = _weights(a, "weight")
    w = found[0] if found else None
    if w is None or w.dim() != 2 or a["scale_grad_by_freq"] or a["sparse"]:
        return None
    pad = a["padding_idx"]
    m = _new(nn.Embedding, w.shape[0], w.shape[1], padding_idx=None if pad == -1 else pad, like=w)
    return a.module(_own(m, weight=w), "indices")


def prelu(a: Args) -> Lowered | None:
    """aten.prelu -> nn.PReLU."""
    found = _weights(a, "weight")
    w = found[0] if found else None
    if w is None or w.dim() != 1:
        return None
    m = _new(nn.PReLU, w.shape[0], like=w)
    return a.module(_own(m, weight=w), "self")


# ----------------------------------------------------------------------------- indexing

def _dim(a: Args) -> int:
    d = a["dim"]
    return d + a.ndim("self") if d < 0 else d


def select(a: Args) -> Lowered:
    """aten.select.int(x, d, i) -> x[:, ..., i] (the same view)."""
    return Lowered("call_function", operator.getitem, (a["self"], (slice(None),) * _dim(a) + (a["index"],)))


def slice_(a: Args) -> Lowered:
    """aten.slice.Tensor(x, d, start, end, step) -> x[:, ..., start:end:step] (the same view)."""
    item = slice(a["start"], a["end"], a["step"])
    return Lowered("call_function", operator.getitem, (a["self"], (slice(None),) * _dim(a) + (item,)))


def index(a: Args) -> Lowered:
    """aten.index.Tensor(x, [None, i, ...]) -> x[:, i, ...] (None stands for a full slice)."""
    items = tuple(slice(None) if i is None else i for i in a["indices"])
    return Lowered("call_function", operator.getitem, (a["self"], items))


def addmm_plain(a: Args) -> Lowered | None:
    """aten.addmm(bias, x, w) with unit factors -> torch.addmm (the call GPT-2's Conv1D makes)."""
    if a["beta"] != 1 or a["alpha"] != 1:
        return None
    return fn(torch.addmm, "self", "mat1", "mat2")(a)


def _alpha_one(a: Args) -> bool:
    return a["alpha"] == 1


def _binary(op: Callable, op_alpha: Callable | None = None) -> Handler:
    """aten.add.Tensor(x, y, alpha) -> x + y (or torch.add(x, y, alpha=alpha))."""
    plain = fn(op, "self", "other")
    if op_alpha is None:
        return plain
    return lambda a: plain(a) if _alpha_one(a) else fn(op_alpha, "self", "other", alpha="alpha")(a)


def _elu_plain(a: Args) -> bool:
    return a["scale"] == 1 and a["input_scale"] == 1


def _strided(a: Args) -> bool:
    """``Tensor.to`` takes no layout: only the (default) strided one can be dropped."""
    return a["layout"] in (None, torch.strided)


def _no_mode(a: Args) -> bool:
    return a["mode"] == "constant"


# ----------------------------------------------------------------------------- the table

ATEN: dict[Any, tuple[Handler, ...]] = {
    # layers with weights: a module owning the program's parameters, else the functional form
    aten.conv1d.default: (conv, fn(F.conv1d, "input", "weight", "bias", "stride", "padding", "dilation", "groups")),
    aten.conv2d.default: (conv, fn(F.conv2d, "input", "weight", "bias", "stride", "padding", "dilation", "groups")),
    aten.conv3d.default: (conv, fn(F.conv3d, "input", "weight", "bias", "stride", "padding", "dilation", "groups")),
    aten.conv1d.padding: (conv,),
    aten.conv2d.padding: (conv,),
    aten.conv3d.padding: (conv,),
    aten.conv_transpose1d.default: (conv_transpose,),
    aten.conv_transpose2d.input: (conv_transpose,),
    aten.conv_transpose3d.input: (conv_transpose,),
    aten.convolution.default: (convolution,),
    aten.linear.default: (linear, fn(F.linear, "input", "weight", "bias")),
    aten.addmm.default: (addmm, addmm_plain),
    aten.mm.default: (mm, fn(torch.matmul, "self", "mat2")),
    aten.batch_norm.default: (batch_norm, fn(F.batch_norm, "input", "running_mean", "running_var", "weight", "bias",
                                             "training", "momentum", "eps")),
    aten._native_batch_norm_legit_no_training.default: (batch_norm_no_training,),
    aten.layer_norm.default: (layer_norm, fn(F.layer_norm, "input", "normalized_shape", "weight", "bias", "eps")),
    aten.group_norm.default: (group_norm, fn(F.group_norm, "input", "num_groups", "weight", "bias", "eps")),
    aten.embedding.default: (embedding,),
    aten.prelu.default: (prelu,),
    # entry by entry
    aten.relu.default: (fn(torch.relu, "self"),),
    aten.relu_.default: (fn(torch.relu_, "self"),),
    aten.gelu.default: (fn(F.gelu, "self", approximate="approximate"),),
    aten.silu.default: (fn(F.silu, "self"),),
    aten.silu_.default: (inplace(F.silu, "self"),),
    aten.hardswish.default: (fn(F.hardswish, "self"),),
    aten.hardswish_.default: (inplace(F.hardswish, "self"),),
    aten.hardsigmoid.default: (fn(F.hardsigmoid, "self"),),
    aten.hardsigmoid_.default: (inplace(F.hardsigmoid, "self"),),
    aten.hardtanh.default: (fn(F.hardtanh, "self", "min_val", "max_val"),),
    aten.hardtanh_.default: (inplace(F.hardtanh, "self", "min_val", "max_val"),),
    aten.leaky_relu.default: (fn(F.leaky_relu, "self", "negative_slope"),),
    aten.leaky_relu_.default: (inplace(F.leaky_relu, "self", "negative_slope"),),
    aten.elu.default: (when(_elu_plain, fn(F.elu, "self", "alpha")),),
    aten.mish.default: (fn(F.mish, "self"),),
    aten.softplus.default: (fn(F.softplus, "self", "beta", "threshold"),),
    aten.sigmoid.default: (fn(torch.sigmoid, "self"),),
    aten.tanh.default: (fn(torch.tanh, "self"),),
    aten.clamp.default: (fn(torch.clamp, "self", "min", "max"),),
    **{getattr(aten, n).default: (fn(getattr(torch, n), "self"),)
       for n in ("abs", "exp", "log", "sqrt", "rsqrt", "neg", "sin", "cos", "erf", "square")},
    aten.dropout.default: (fn(F.dropout, "input", "p", "train"),),
    aten.add.Tensor: (_binary(operator.add, torch.add),),
    aten.add_.Tensor: (when(_alpha_one, fn(operator.iadd, "self", "other")),),
    aten.sub.Tensor: (_binary(operator.sub, torch.sub),),
    aten.sub_.Tensor: (when(_alpha_one, fn(operator.isub, "self", "other")),),
    aten.mul.Tensor: (_binary(operator.mul),),
    aten.mul_.Tensor: (fn(operator.imul, "self", "other"),),
    aten.div.Tensor: (_binary(operator.truediv),),
    aten.div_.Tensor: (fn(operator.itruediv, "self", "other"),),
    aten.pow.Tensor_Scalar: (fn(operator.pow, "self", "exponent"),),
    aten.maximum.default: (fn(torch.maximum, "self", "other"),),
    aten.minimum.default: (fn(torch.minimum, "self", "other"),),
    aten.min.other: (fn(torch.minimum, "self", "other"),),  # the same kernel under torch.min's name
    **{getattr(aten, n).Tensor: (fn(getattr(operator, n), "self", "other"),) for n in ("gt", "lt", "ge", "le", "eq", "ne")},
    **{getattr(aten, n).Scalar: (fn(getattr(operator, n), "self", "other"),) for n in ("gt", "lt", "ge", "le", "eq", "ne")},
    aten.where.self: (fn(torch.where, "condition", "self", "other"),),
    # torch.where with one Python scalar calls these overloads itself (T5 masks its position bias so)
    aten.where.ScalarOther: (fn(torch.where, "condition", "self", "other"),),
    aten.where.ScalarSelf: (fn(torch.where, "condition", "self", "other"),),
    aten.__and__.Tensor: (fn(operator.and_, "self", "other"),),
    aten.__or__.Tensor: (fn(operator.or_, "self", "other"),),
    aten.bitwise_not.default: (fn(torch.bitwise_not, "self"),),
    aten.logical_not.default: (fn(torch.logical_not, "self"),),
    aten.cumsum.default: (fn(torch.cumsum, "self", "dim", dtype="dtype"),),
    aten.diff.default: (fn(torch.diff, "self", "n", "dim", "prepend", "append"),),
    aten.masked_fill.Scalar: (method("masked_fill", "self", "mask", "value"),),
    # copies and casts
    aten.clone.default: (fn(torch.clone, "self"),),
    aten.contiguous.default: (method("contiguous", "self"),),
    aten.to.dtype: (method("to", "self", "dtype"),),
    aten.to.dtype_layout: (when(_strided, method("to", "self", dtype="dtype", device="device")),),
    aten.to.device: (method("to", "self", "device", "dtype"),),
    aten.alias.default: (method("view_as", "self", "self"),),
    aten._assert_tensor_metadata.default: (fn(torch._assert_tensor_metadata, "a", size="size", stride="stride",
                                              dtype="dtype", device="device", layout="layout"),),
    # factories (masks, positions)
    aten.arange.default: (fn(torch.arange, "end", dtype="dtype", device="device"),),
    aten.arange.start: (fn(torch.arange, "start", "end", dtype="dtype", device="device"),),
    aten.arange.start_step: (fn(torch.arange, "start", "end", "step", dtype="dtype", device="device"),),
    aten.new_ones.default: (method("new_ones", "self", "size", dtype="dtype", device="device"),),
    aten.new_zeros.default: (method("new_zeros", "self", "size", dtype="dtype", device="device"),),
    aten.full.default: (fn(torch.full, "size", "fill_value", dtype="dtype", device="device"),),
    aten.full_like.default: (fn(torch.full_like, "self", "fill_value", dtype="dtype", device="device",
                                memory_format="memory_format"),),
    aten.zeros.default: (fn(torch.zeros, "size", dtype="dtype", device="device"),),
    aten.ones.default: (fn(torch.ones, "size", dtype="dtype", device="device"),),
    aten.detach.default: (method("detach", "self"),),
    # shapes
    aten.view.default: (method("view", "self", "size"),),
    aten.reshape.default: (method("reshape", "self", "shape"),),
    aten._unsafe_view.default: (method("reshape", "self", "size"),),
    aten.permute.default: (method("permute", "self", "dims"),),
    aten.transpose.int: (method("transpose", "self", "dim0", "dim1"),),
    aten.t.default: (method("t", "self"),),
    aten.flatten.using_ints: (fn(torch.flatten, "self", "start_dim", "end_dim"),),
    aten.unflatten.int: (fn(torch.unflatten, "self", "dim", "sizes"),),
    aten.unsqueeze.default: (fn(torch.unsqueeze, "self", "dim"),),
    aten.squeeze.dim: (fn(torch.squeeze, "self", "dim"),),
    aten.squeeze.dims: (fn(torch.squeeze, "self", "dim"),),
    aten.squeeze.default: (fn(torch.squeeze, "self"),),
    aten.expand.default: (method("expand", "self", "size"),),
    aten.repeat.default: (method("repeat", "self", "repeats"),),
    aten.sym_size.int: (method("size", "self", "dim"),),
    # joining, splitting, indexing
    aten.cat.default: (fn(torch.cat, "tensors", "dim"),),
    aten.stack.default: (fn(torch.stack, "tensors", "dim"),),
    aten.split.Tensor: (fn(torch.split, "self", "split_size", "dim"),),
    aten.split_with_sizes.default: (fn(torch.split, "self", "split_sizes", "dim"),),
    aten.chunk.default: (fn(torch.chunk, "self", "chunks", "dim"),),
    aten.unbind.int: (fn(torch.unbind, "self", "dim"),),
    aten.select.int: (select,),
    aten.index.Tensor: (index,),
    aten.slice.Tensor: (slice_,),
    aten.index_select.default: (fn(torch.index_select, "self", "dim", "index"),),
    aten.gather.default: (fn(torch.gather, "self", "dim", "index"),),
    aten.pad.default: (when(_no_mode, fn(F.pad, "self", "pad", value="value")),),
    aten.constant_pad_nd.default: (fn(F.pad, "self", "pad", value="value"),),
    # reductions, pooling, attention, products
    aten.mean.dim: (fn(torch.mean, "self", "dim", "keepdim", dtype="dtype"),),
    aten.sum.default: (fn(torch.sum, "self", dtype="dtype"),),
    aten.sum.dim_IntList: (fn(torch.sum, "self", "dim", "keepdim", dtype="dtype"),),
    aten.amax.default: (fn(torch.amax, "self", "dim", "keepdim"),),
    aten.softmax.int: (fn(torch.softmax, "self", "dim", dtype="dtype"),),
    aten.adaptive_avg_pool1d.default: (fn(F.adaptive_avg_pool1d, "self", "output_size"),),
    aten.adaptive_avg_pool2d.default: (fn(F.adaptive_avg_pool2d, "self", "output_size"),),
    aten.adaptive_avg_pool3d.default: (fn(F.adaptive_avg_pool3d, "self", "output_size"),),
    aten.max_pool1d.default: (fn(F.max_pool1d, "self", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),),
    aten.max_pool2d.default: (fn(F.max_pool2d, "self", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),),
    aten.max_pool3d.default: (fn(F.max_pool3d, "self", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),),
    aten.max_pool2d_with_indices.default: (max_pool_with_indices,),
    aten.avg_pool2d.default: (fn(F.avg_pool2d, "self", "kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad", "divisor_override"),),
    aten.scaled_dot_product_attention.default: (fn(F.scaled_dot_product_attention, "query", "key", "value",
                                                   attn_mask="attn_mask", dropout_p="dropout_p", is_causal="is_causal",
                                                   scale="scale", enable_gqa="enable_gqa"),),
    aten.matmul.default: (fn(torch.matmul, "self", "other"),),
    aten.bmm.default: (fn(torch.bmm, "self", "mat2"),),
    aten.einsum.default: (fn(torch.einsum, "equation", "tensors"),),
}
