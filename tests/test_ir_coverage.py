"""Slow: the exact IR round trip on every torchvision classification model.

`pytest -m slow tests/test_ir_coverage.py`; benchmarks/coverage.py writes the same
check, with pruning, into benchmarks/results/coverage.md.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from helpers import roundtrip

NAMES = torchvision.models.list_models(module=torchvision.models)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_torchvision_model_roundtrips(name):
    torch.set_num_threads(2)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = 299 if name == "inception_v3" else 224
    x = torch.randn(1, 3, size, size)
    roundtrip(model, x)
