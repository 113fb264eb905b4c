"""Running or tracing a model gives back every submodule in the mode it was in."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxmeta
from fxmeta.analysis.channels import analyze
from fxmeta.tracing import eval_mode, preserved_modes

torch.set_num_threads(1)


def _mixed_model() -> nn.Module:
    """A model in training mode with one BatchNorm frozen in eval (a common finetuning setup)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model.train()
    model[1].eval()
    return model


def _flags(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, m.training) for name, m in model.named_modules()]


CALLS = {
    "count_flops": lambda m, x: fxmeta.count_flops(m, x),
    "lower": lambda m, x: fxmeta.lower(m, x),
    "trace": lambda m, x: fxmeta.trace(m, x),
    "prune": lambda m, x: fxmeta.prune(m, x, speedup=1.5),
    "analyze": lambda m, x: analyze(m, x),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_submodule_keeps_its_mode(name):
    model, x = _mixed_model(), torch.randn(2, 3, 8, 8)
    before = _flags(model)
    stats = model[1].running_mean.clone()
    CALLS[name](model, x)
    assert _flags(model) == before
    assert torch.equal(model[1].running_mean, stats)


def test_a_traced_model_has_the_models_modes():
    model = _mixed_model()
    gm = fxmeta.trace(model, torch.randn(2, 3, 8, 8))
    assert gm.training and not gm.get_submodule("1").training and gm.get_submodule("4").training


def test_the_mode_helpers_restore_each_flag():
    model = _mixed_model()
    before = _flags(model)
    with eval_mode(model):
        assert not any(flag for _, flag in _flags(model))
    assert _flags(model) == before
    with preserved_modes(model):
        model.train()
    assert _flags(model) == before
