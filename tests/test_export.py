"""torch.export of (pruned) modules to .pt2: dynamic batch, fallback, checks, atomic writes."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fxmeta.errors import OutputExistsError, UnsupportedModelError
from fxmeta.io.export import export_program, save_program
from fxmeta.models import get_model
from fxmeta.tracing import trace

from helpers import randomize_bn

torch.set_num_threads(1)


def _resnet() -> nn.Module:
    return randomize_bn(get_model("resnet20", in_channels=1)).eval()


def test_saved_program_loads_with_plain_torch_and_matches(tmp_path):
    model = _resnet()
    x = torch.randn(1, 1, 8, 8)
    gm = trace(model, x)
    path = tmp_path / "m.pt2"
    save_program(gm, x, path)
    program = torch.export.load(str(path))  # plain torch, no fxmeta involved
    with torch.no_grad():
        for batch in (1, 5):  # the batch dimension stays dynamic
            xb = torch.randn(batch, 1, 8, 8)
            assert torch.allclose(program.module()(xb), model(xb), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]  # no temp file left
    assert not gm.training  # exported in eval mode; the mode is restored (it was eval)


def test_export_restores_training_mode():
    model = _resnet().train()
    export_program(model, torch.randn(1, 1, 8, 8))
    assert model.training


class _FixedBatch(nn.Module):
    """Bakes the batch size into its forward: only a static export is possible."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).reshape(3, 3)


def test_model_that_fixes_the_batch_falls_back_to_a_static_export():
    model = _FixedBatch()
    x = torch.randn(3, 4)
    program = export_program(model, x)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x))
    with pytest.raises(AssertionError):  # torch.export's input guard
        program.module()(torch.randn(6, 4))  # static: other batch sizes are refused


class _ExportDiffers(nn.Module):
    """Computes something else while being exported than when run eagerly."""

    def forward(self, x):
        return x + 1 if torch.compiler.is_exporting() else x


def test_program_that_does_not_reproduce_the_module_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="does not reproduce"):
        save_program(_ExportDiffers(), torch.randn(2, 3), tmp_path / "c.pt2")
    assert not os.listdir(tmp_path)


class _Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


def test_unexportable_model_gives_one_clear_error():
    with pytest.raises(UnsupportedModelError, match="torch.export cannot export _Untraceable"):
        export_program(_Untraceable(), torch.randn(2, 3))


def test_existing_program_needs_force(tmp_path):
    path = tmp_path / "m.pt2"
    path.write_bytes(b"old")
    x = torch.randn(2, 6)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(OutputExistsError, match="--force"):
        save_program(model, x, path)
    assert path.read_bytes() == b"old"
    save_program(model, x, path, force=True)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(str(path)).module()(x), model(x))
