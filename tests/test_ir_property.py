"""Property test: random small conv/linear DAGs (branches, adds, cats) round-trip exactly."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from helpers import randomize_bn, roundtrip


class RandomDAG(nn.Module):
    """A random DAG of conv blocks; each block reads one or two earlier tensors."""

    def __init__(self, plan: list[tuple], in_ch: int, classes: int):
        super().__init__()
        self.plan = plan
        self.blocks = nn.ModuleList()
        widths = [in_ch]
        for kind, a, b, width, k, groups in plan:
            cin = widths[a] + (widths[b] if kind == "cat" else 0)
            if kind == "add" and widths[a] != widths[b]:
                raise ValueError
            g = groups if cin % groups == 0 and width % groups == 0 else 1
            self.blocks.append(nn.Sequential(nn.Conv2d(cin, width, k, padding=k // 2, groups=g),
                                             nn.BatchNorm2d(width), nn.ReLU()))
            widths.append(width)
        self.head = nn.Linear(widths[-1] * 4, classes)

    def forward(self, x):
        feats = [x]
        for (kind, a, b, *_), block in zip(self.plan, self.blocks):
            if kind == "cat":
                h = block(torch.cat([feats[a], feats[b]], 1))
            elif kind == "add":
                h = block(feats[a] + feats[b])
            else:
                h = block(feats[a])
            feats.append(h)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(feats[-1], 2), 1))


@st.composite
def dags(draw):
    in_ch = draw(st.integers(1, 3))
    widths = [in_ch]
    plan = []
    for i in range(draw(st.integers(1, 6))):
        a = draw(st.integers(0, len(widths) - 1))
        b = draw(st.integers(0, len(widths) - 1))
        kind = draw(st.sampled_from(["seq", "cat", "add"]))
        if kind == "add" and widths[a] != widths[b]:
            kind = "seq"
        width = draw(st.sampled_from([2, 4, 6]))
        plan.append((kind, a, b, width, draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))))
        widths.append(width)
    return RandomDAG(plan, in_ch, draw(st.integers(2, 4))), in_ch


@settings(max_examples=40, deadline=None)
@given(dags())
def test_random_dag_roundtrip(case):
    model, in_ch = case
    model = randomize_bn(model).eval()
    x = torch.randn(2, in_ch, 6, 6)
    graph = roundtrip(model, x)
    # Every edge joins an earlier node to a later one.
    index = graph.edge_index()
    assert bool((index[0] < index[1]).all())
