"""The op groups, defined once: channel analysis and lowering both build their tables from these.

Each group names ops that behave alike for channels, keyed the way torch.fx names call
targets: module classes (``call_module``), functions (``call_function``) and method
names (``call_method``). Analysis (``fxmeta.analysis.rules``) and lowering
(``fxmeta.ir.lowering``) map each group to one rule, so an op added here is known to
both: it lowers without opaque IR nodes and it can be pruned.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

# -- one tensor in, entry by entry (activations, dropout) -------------------------------------
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink,
    nn.Softshrink, nn.LogSigmoid, nn.Threshold, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
ACTIVATION_FUNCTIONS = frozenset({
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.abs, torch.exp, torch.log,
    torch.sqrt, torch.rsqrt, torch.neg, torch.square, torch.sin, torch.cos, torch.erf, operator.neg,
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.leaky_relu, F.elu, F.selu, F.celu, F.mish, F.softplus, F.softsign, F.logsigmoid, F.tanhshrink,
    F.hardshrink, F.softshrink, F.threshold, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout,
})
ACTIVATION_METHODS = frozenset({
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "hardswish", "clamp", "clamp_",
    "clamp_min", "clamp_max", "abs", "exp", "log", "sqrt", "rsqrt", "neg", "square",
})

# -- ops that return their input's values (copies, casts, device moves) -------------------------
IDENTITY_FUNCTIONS = frozenset({torch.clone})
IDENTITY_METHODS = frozenset({
    "contiguous", "clone", "detach", "float", "to", "type_as", "view_as", "half", "double", "bfloat16", "cpu", "cuda",
})

# -- two tensors in, entry by entry: the IR makes a junction node of these ----------------------
JUNCTION_ADD = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
    "add", "add_", "sub", "sub_", "__add__", "__radd__", "__sub__",
})
JUNCTION_MUL = frozenset({
    operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div,
    "mul", "mul_", "div", "div_", "__mul__", "__rmul__", "__truediv__",
})
JUNCTIONS: dict[object, str] = {**{k: "add" for k in JUNCTION_ADD}, **{k: "mul" for k in JUNCTION_MUL}}

# -- entry by entry, but not modelled by the IR (comparisons, selections, powers) -------------
OTHER_ELEMENTWISE = frozenset({
    operator.pow, operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne,
    operator.and_, operator.or_, torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.where,
    torch.maximum, torch.minimum, torch.pow,
    "pow", "masked_fill", "masked_fill_", "gt", "lt", "ge", "le", "eq", "ne", "logical_not", "logical_and",
    "logical_or",
})

# -- channels pass through, trailing spatial dims change ----------------------------------------
POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
POOL_FUNCTIONS = frozenset({
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch._C._nn.avg_pool2d, torch._C._nn.avg_pool3d, torch.avg_pool1d,
})
RESIZE_MODULES: tuple[type[nn.Module], ...] = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
RESIZE_FUNCTIONS = frozenset({F.interpolate})
PAD_MODULES: tuple[type[nn.Module], ...] = (
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
PAD_FUNCTIONS = frozenset({F.pad})

# -- layers with weights, and per-channel norms ----------------------------------------------
CONV_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE_MODULES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BATCH_NORM_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
INSTANCE_NORM_MODULES: tuple[type[nn.Module], ...] = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
