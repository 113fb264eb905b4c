"""Golden text dumps: `pytest tests/test_golden.py --update-golden` rewrites them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fxmeta import models
from fxmeta.ir import lower
from fxmeta.ir.dump import to_text

from helpers import TinyMLP

GOLDEN = Path(__file__).parent / "golden"


def _check(name: str, text: str, update: bool) -> None:
    path = GOLDEN / f"{name}.txt"
    if update:
        path.write_text(text)
        pytest.skip(f"rewrote {path}")
    assert path.exists(), f"{path} is missing: run pytest tests/test_golden.py --update-golden"
    assert text == path.read_text(), f"dump differs from {path}; review and run with --update-golden"


def test_golden_resnet20(update_golden):
    torch.manual_seed(0)
    model = models.resnet20().eval()
    _check("resnet20", to_text(lower(model, torch.zeros(1, 3, 32, 32))), update_golden)


def test_golden_tiny_mlp(update_golden):
    torch.manual_seed(0)
    model = TinyMLP().eval()
    _check("tiny_mlp", to_text(lower(model, torch.zeros(2, 6))), update_golden)
