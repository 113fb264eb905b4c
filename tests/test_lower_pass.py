"""LowerPass / RaisePass inside torch.fx's PassManager."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_manager import PassManager

from fxmeta import models
from fxmeta.errors import FxmetaError
from fxmeta.ir import WeightGraph
from passes import LowerPass, RaisePass

from helpers import assert_same_state, randomize_bn


def test_lower_then_raise_in_a_pass_manager():
    model = randomize_bn(models.resnet20()).eval()
    x = torch.randn(2, 3, 8, 8)
    gm = fx.symbolic_trace(model)
    result = PassManager([LowerPass(x), RaisePass()])(gm)
    out = result.graph_module
    assert out is not gm and isinstance(gm.meta["fxmeta.ir"], WeightGraph)
    assert "fxmeta.ir" not in out.meta
    assert_same_state(model, out)
    with torch.no_grad():
        assert torch.equal(out(x), model(x))


def test_passes_explain_missing_state():
    gm = fx.symbolic_trace(models.resnet20())
    with pytest.raises(FxmetaError, match="example input"):
        LowerPass()(gm)
    with pytest.raises(FxmetaError, match="run LowerPass first"):
        RaisePass()(gm)
