"""Property test: random small DAGs (branches, adds, cats, SE, splits) round-trip exactly."""
from __future__ import annotations

import torch
from hypothesis import given, settings

from helpers import random_nets, randomize_bn, roundtrip


@settings(max_examples=40, deadline=None)
@given(random_nets())
def test_random_dag_roundtrip(case):
    model, in_ch = case
    model = randomize_bn(model).eval()
    x = torch.randn(2, in_ch, 6, 6)
    graph = roundtrip(model, x)
    # Every edge joins an earlier node to a later one.
    index = graph.edge_index()
    assert bool((index[0] < index[1]).all())
