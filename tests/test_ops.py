"""One op table: every op group of fxmeta.ops is known to both channel analysis and lowering."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxmeta import ops
from fxmeta.analysis.channels import analyze
from fxmeta.analysis.rules.table import RULES
from fxmeta.ir import lower
from fxmeta.ir.lowering import _JUNCTIONS, _SPATIAL_MODULES, _UNARY_MODULES
from fxmeta.ir.lowering import RULES as LOWERING_RULES
from fxmeta.pruning import prune

torch.set_num_threads(1)

OPS = {
    "F.selu": F.selu,
    "F.celu": F.celu,
    "F.softsign": F.softsign,
    "F.hardswish": F.hardswish,
    "F.gelu": F.gelu,  # torch.Tensor has no gelu / hardswish methods: the functional forms
    "x.sigmoid_()": lambda h: h.clone().sigmoid_(),
    "x.log()": lambda h: (h.abs() + 1).log(),
    "x.rsqrt()": lambda h: (h.abs() + 1).rsqrt(),
    "torch.relu_": lambda h: torch.relu_(h.clone()),
    "torch.clone": torch.clone,
}


class Between(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.op(self.a(x))
        return self.head(self.b(h).mean((2, 3)))


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_between_two_convs_lowers_and_prunes(name):
    model, x = Between(OPS[name]).eval(), torch.randn(2, 3, 6, 6)
    graph = lower(model, x)
    assert not [layer.name for layer in graph.layers if layer.op == "opaque"]
    assert graph.layer("b").src.tolist() == list(range(graph.layer("a").start, graph.layer("a").stop))
    analysis = analyze(model, x)
    assert analysis.probed == {} and set(analysis.frozen_reasons) <= {"output"}  # known to a rule
    assert sorted(g.units for g in analysis.groups if g.prunable) == [8, 8]
    result = prune(model, x, speedup=1.5)  # self-checked against the masked original
    assert result.module.a.out_channels < 8


def test_both_tables_are_built_from_the_op_groups():
    for group in (ops.ACTIVATION_FUNCTIONS, ops.ACTIVATION_METHODS, ops.IDENTITY_FUNCTIONS, ops.IDENTITY_METHODS,
                  ops.POOL_FUNCTIONS, ops.RESIZE_FUNCTIONS, ops.PAD_FUNCTIONS):
        assert all(op in RULES for op in group)
        assert all(op in LOWERING_RULES for op in group)
    for op in ops.JUNCTIONS:
        assert op in RULES and op in _JUNCTIONS
    for cls in (*ops.ACTIVATION_MODULES, *ops.POOL_MODULES, *ops.RESIZE_MODULES, *ops.PAD_MODULES):
        assert cls in RULES
        assert issubclass(cls, _UNARY_MODULES + _SPATIAL_MODULES)
