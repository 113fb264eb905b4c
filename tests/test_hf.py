"""Hugging Face transformers 5 models (tiny configs): captured exactly through torch.export, pruned."""
from __future__ import annotations

import pytest
import torch
from hf_models import NAMES, TIED, WIDTHS, make
from torch.utils import _pytree as pytree

import fxmeta
from fxmeta.analysis.channels import analyze
from fxmeta.capture import from_program
from fxmeta.keys import UNMAPPED_OPS
from fxmeta.pruning.pruner import PLAN_FORMAT, apply_plan

pytest.importorskip("transformers", minversion="5")
torch.set_num_threads(1)


@pytest.mark.parametrize("name", NAMES)
def test_programs_are_captured_exactly_with_every_op_in_the_table(name):
    model, x = make(name)
    program = torch.export.export(model, (x,))
    gm = from_program(program, x)  # checks bit for bit itself
    assert gm.meta[UNMAPPED_OPS] == {}
    with torch.no_grad():
        want, got = model(x), gm(x)
    assert type(got) is type(want)  # the ModelOutput, not the dict fx would write
    assert all(torch.equal(a, b) for a, b in zip(pytree.tree_leaves(want), pytree.tree_leaves(got)))
    assert {n for n, _ in gm.named_parameters()} <= {n for n, _ in model.named_parameters(remove_duplicate=False)}


def _width(module, name: str, which: str) -> int:
    param, dim = WIDTHS[name][which]
    return module.get_parameter(param).shape[dim]


def _pruned(name: str, speedup: float):
    model, x = make(name)
    result = fxmeta.prune(model, x, speedup=speedup)  # self-checked
    with torch.no_grad():
        want, got = model(x), result.module(x)
    assert type(got) is type(want)
    assert [t.shape for t in pytree.tree_leaves(want)] == [t.shape for t in pytree.tree_leaves(got)]  # outputs stay
    if name in TIED:
        a, b = TIED[name]
        assert result.module.get_parameter(a) is result.module.get_parameter(b)
    return model, result


@pytest.mark.parametrize("name", NAMES)
def test_the_mlp_intermediate_is_pruned(name):
    model, result = _pruned(name, 1.3)
    assert result.speedup >= 1.3
    assert _width(result.module, name, "mlp") < _width(model, name, "mlp")
    if name in ("llama", "qwen2"):  # SwiGLU: gate and up projections lose the same channels
        layer = "model.layers.0.mlp"
        gate, up = (result.module.get_parameter(f"{layer}.{p}_proj.weight") for p in ("gate", "up"))
        assert gate.shape == up.shape


def _remove(model, x, analysis, param: str, units: list[int]):
    """Apply a plan that removes ``units`` of the one group owning ``param``; self-checked."""
    (group,) = [g for g in analysis.groups if param in {n for n, _, _ in g.slices}]
    plan = {"format": PLAN_FORMAT, "ignore": [], "groups": [{"key": group.key, "units": group.units,
                                                           "removed": units}]}
    return group, apply_plan(model, plan, x)


@pytest.mark.parametrize("name", NAMES)
def test_whole_attention_heads_are_removed(name):
    model, x = make(name)
    analysis = analyze(model, x)
    param, dim = WIDTHS[name]["heads"]
    group, pruned = _remove(model, x, analysis, param, [0])
    heads = 2 if name in ("llama", "qwen2") else 4  # GQA: a unit is a kv head with its two query heads
    assert group.units == heads
    assert pruned.get_parameter(param).shape[dim] == 64 - 64 // heads
    if name in ("llama", "qwen2"):
        k = pruned.get_parameter(param.replace("q_proj", "k_proj"))
        assert k.shape[0] == 16  # one kv head of 16 left, with its two query heads (32 rows of q_proj)
    with torch.no_grad():
        assert pytree.tree_leaves(pruned(x))[0].shape == pytree.tree_leaves(model(x))[0].shape
