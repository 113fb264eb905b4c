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
from fxmeta.pruning.masking import MaskedNetwork, calibrate_target, removal
from fxmeta.pruning.pruner import PLAN_FORMAT, apply_plan
from fxmeta.pruning.slimming import slim

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


def _pruned(name: str, speedup: float, **kwargs):
    model, x = make(name)
    result = fxmeta.prune(model, x, speedup=speedup, **kwargs)  # self-checked
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


def _remove(model, x, analysis, param: str, dim: int, units: list[int]):
    """Apply a plan that removes ``units`` of the one group owning dim ``dim`` of ``param``; self-checked."""
    (group,) = [g for g in analysis.groups if (param, dim) in {(n, d) for n, d, _ in g.slices}]
    plan = {"format": PLAN_FORMAT, "ignore": [], "groups": [{"key": group.key, "units": group.units,
                                                           "removed": units}]}
    return group, apply_plan(model, plan, x)


@pytest.mark.parametrize("name", NAMES)
def test_whole_attention_heads_are_removed(name):
    model, x = make(name)
    analysis = analyze(model, x)
    param, dim = WIDTHS[name]["heads"]
    group, pruned = _remove(model, x, analysis, param, dim, [0])
    heads = 2 if name in ("llama", "qwen2") else 4  # GQA: a unit is a kv head with its two query heads
    assert group.units == heads
    assert pruned.get_parameter(param).shape[dim] == 64 - 64 // heads
    if name in ("llama", "qwen2"):
        k = pruned.get_parameter(param.replace("q_proj", "k_proj"))
        assert k.shape[0] == 16  # one kv head of 16 left, with its two query heads (32 rows of q_proj)
    with torch.no_grad():
        assert pytree.tree_leaves(pruned(x))[0].shape == pytree.tree_leaves(model(x))[0].shape


@pytest.mark.parametrize("name", NAMES)
def test_half_of_every_group_goes_hidden_width_included(name):
    """Hidden width through every norm (statistics over the kept channels), heads and MLP at once."""
    model, x = make(name)
    analysis = analyze(model, x)
    groups = [g for g in analysis.groups if g.prunable]
    plan = {"format": PLAN_FORMAT, "ignore": [], "groups": [
        {"key": g.key, "units": g.units, "removed": list(range(0, g.units, 2))} for g in groups]}
    pruned = apply_plan(model, plan, x)  # self-checked
    assert {w: _width(pruned, name, w) for w in WIDTHS[name]} == {
        w: _width(model, name, w) // 2 for w in WIDTHS[name]}


@pytest.mark.parametrize("name", NAMES)
def test_two_times_fewer_flops_from_hidden_width_heads_and_mlp(name):
    # Random weights give the L2 criterion nothing to tell units apart by, and it drains the MLP
    # first; random importance spreads the removal over every kind of group.
    model, result = _pruned(name, 2.0, importance="random")
    assert result.speedup >= 2.0
    assert all(_width(result.module, name, w) < _width(model, name, w) for w in WIDTHS[name])


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_the_masked_network_keeps_norm_statistics_over_the_kept_channels(name):
    """What the prepare stage trains through equals the pruned network, hidden width pruned."""
    model, x = make(name)
    analysis = analyze(model, x)
    removed = removal(analysis, 2.0, importance="random", flops_target=calibrate_target(analysis, 2.0,
                                                                                      importance="random"))
    masked = MaskedNetwork(analysis)
    masked.set_removed(removed)
    with torch.no_grad():
        want, got = slim(analysis, removed)(x), masked(x)
    for a, b in zip(pytree.tree_leaves(want), pytree.tree_leaves(got)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_pruned_program_is_shipped_as_a_program():
    model, x = make("llama")
    result = fxmeta.prune(torch.export.export(model, (x,)), x, speedup=2.0, importance="random")
    with torch.no_grad():
        want, got = result.module(x), result.program.module()(x)
    assert type(got) is type(want)
    torch.testing.assert_close(got.logits, want.logits)


def test_t5_heads_are_one_group_through_the_shared_position_bias():
    """T5 masks its relative position bias with torch.where(mask, bias, scalar) and shares it over layers."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.T5EncoderModel(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                          vocab_size=64)).eval()
    x = torch.randint(0, 64, (1, 8))
    gm = from_program(torch.export.export(model, (x,)), x)
    assert gm.meta[UNMAPPED_OPS] == {}
    analysis = analyze(model, x)
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    group, pruned = _remove(model, x, analysis, bias, 1, [0])  # self-checked
    assert group.units == 4
    assert all(pruned.get_parameter(f"encoder.block.{i}.layer.0.SelfAttention.q.weight").shape[0] == 24 for i in (0, 1))


@pytest.mark.parametrize("name", NAMES)
def test_a_pruned_model_keeps_its_class_and_runs_at_any_batch_and_length(name):
    """Its own modules with smaller weights (fxmeta.pruning.module_slimming), not the captured graph,
    whose view sizes are fixed at the example's shape: checked equal to that graph when built."""
    model, x = make(name)
    result = fxmeta.prune(model, x, speedup=2.0, importance="random")
    assert type(result.module) is type(model) and result.module is not model
    assert all(_width(result.module, name, w) < _width(model, name, w) for w in WIDTHS[name])
    with torch.no_grad():
        if name == "vit":
            out = result.module(torch.randn(3, 3, 32, 32))
            assert out.logits.shape == (3, 10)
        else:
            ids = torch.randint(0, 128, (3, 11))
            mask = torch.ones_like(ids)
            mask[0, 7:] = 0
            out = result.module(ids, attention_mask=mask)
            assert out.logits.shape == ((3, 2) if name == "bert" else (3, 11, 128))
    if name == "llama":  # a causal LM generates; the tied lm_head is still the embedding
        assert result.module.lm_head.weight is result.module.model.embed_tokens.weight
        assert result.module.generate(torch.randint(0, 128, (1, 4)), max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_a_module_size_left_stale_is_caught_and_the_captured_graph_comes_back(monkeypatch):
    """GPT-2's attention splits c_attn's output by a stored width (updated by module_slimming); with that
    update switched off the module copy cannot reproduce the pruned graph, the check catches it, and the
    graph is what comes back."""
    from fxmeta.pruning import module_slimming

    model, x = make("gpt2")
    result = fxmeta.prune(model, x, speedup=2.0, importance="random")
    assert type(result.module) is type(model)
    ids = torch.randint(0, 128, (3, 9))
    assert result.module(ids, attention_mask=torch.ones_like(ids)).logits.shape == (3, 9, 128)
    real = module_slimming._update_sizes

    def stale(module):
        real(module)
        if hasattr(module, "split_size"):
            module.split_size = 64  # the original width
    monkeypatch.setattr(module_slimming, "_update_sizes", stale)
    result = fxmeta.prune(model, x, speedup=2.0, importance="random")
    assert isinstance(result.module, torch.fx.GraphModule)

