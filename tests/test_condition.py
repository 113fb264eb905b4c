"""A metanetwork conditioned on the prune: the condition, the metanet's input, the prune it fixes."""
from __future__ import annotations

import pytest
import torch

from fxmeta.errors import FxmetaError
from fxmeta.ir import lower, raise_graph
from fxmeta.metanet import Metanet, load_metanet, save_metanet
from fxmeta.metanet.condition import FEATURES, Condition
from fxmeta.metanet.rewriting import apply, apply_for_prune
from fxmeta.models import get_model
from fxmeta.pruning.pruner import prune

from helpers import randomize_bn

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = randomize_bn(get_model("resnet20", num_classes=10, in_channels=1)).eval()
    x = torch.randn(1, 1, 8, 8)
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    return model, x, batches


def _out_channels(module) -> dict[str, int]:
    return {n: m.out_channels for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_the_condition_announces_exactly_the_channels_the_prune_removes(case, allocation):
    model, x, batches = case
    graph = lower(model, x)
    condition = Condition(graph, x, 2.0, allocation=allocation)
    features = condition.features(batches)
    assert features.shape == (graph.num_nodes, len(FEATURES)) and torch.isfinite(features).all()
    removed, candidate = features[:, 0], features[:, 1]
    assert removed.sum() > 0 and bool((removed <= candidate).all())  # only prunable channels are announced
    assert features[:, 2:].abs().sum() > 0  # the gradient input is there
    # whatever weights the rewritten network holds, the prune removes the announced channels
    changed = raise_graph(graph)
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(torch.rand_like(p) * 2)
    pruned = prune(changed, x, speedup=2.0, importance=condition.importance(), allocation=allocation)
    kept = _out_channels(pruned.module)
    for layer in graph.layers:
        if layer.name in kept:
            announced = int(removed[layer.start:layer.stop].sum())
            assert kept[layer.name] == layer.count - announced, layer.name
    assert pruned.speedup >= 2.0


def test_a_conditioned_metanet_starts_as_the_identity_and_learns_from_its_condition(case, tmp_path):
    model, x, batches = case
    graph = lower(model, x)
    condition = Condition(graph, x, 2.0)
    features = condition.features(batches)
    net = Metanet.for_graph(graph, width=8, depth=1, ratio=1.0, condition=len(FEATURES))
    net.zero_outputs()
    with torch.no_grad():
        out = net(graph, features)
    assert all(torch.equal(a.edge, b.edge) for a, b in zip(graph.layers, out.layers) if a.edge is not None)
    with pytest.raises(FxmetaError, match="conditioned"):
        net(graph)
    with pytest.raises(FxmetaError, match="not conditioned"):
        Metanet.for_graph(graph, width=8, depth=1)(graph, features)
    # the condition reaches the metanetwork's gradient
    from fxmeta.ir import raise_params

    params = raise_params(net(graph, features))
    bx, by = batches[0]
    loss = torch.nn.functional.cross_entropy(
        torch.func.functional_call(condition.network.gm, params, (bx,), strict=False), by)
    loss.backward()
    assert net.condition.weight.grad is not None or any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # saved and loaded, it stays conditioned; applying it needs the prune it was told
    path = str(tmp_path / "cond.pt")
    save_metanet(net, path)
    loaded = load_metanet(path)
    assert loaded.conditioned and loaded.config.condition_batches == 2
    with pytest.raises(FxmetaError, match="conditioned"):
        apply(loaded, model, x)
    with pytest.raises(FxmetaError, match="batches"):
        apply_for_prune(loaded, model, x, 2.0, [])
    module, importance = apply_for_prune(loaded, model, x, 2.0, batches)
    assert prune(module, x, speedup=2.0, importance=importance).speedup >= 2.0


def _sgd(condition, graph, batches, lr, steps):
    """``steps`` plain SGD steps on the masked loss, by the model's parameter names."""
    from fxmeta.ir.raising import raise_params

    named = dict(graph.module.named_parameters())
    return condition.sgd({k: v for k, v in raise_params(graph).items() if k in named}, batches, lr, steps)


@pytest.mark.parametrize("steps", [1, 3])
def test_a_zero_initialised_gradient_step_head_is_exactly_sgd_and_learns_per_channel_sizes(case, steps):
    from fxmeta.ir.raising import raise_params
    from fxmeta.metanet.condition import rewrite_steps

    model, x, batches = case
    graph = lower(model, x)
    condition = Condition(graph, x, 2.0)
    net = Metanet.for_graph(graph, width=8, depth=2, ratio=1.0, condition=len(FEATURES), steps=steps, step_lr=0.05)
    net.zero_outputs()
    with torch.no_grad():
        out = raise_params(rewrite_steps(net, graph, condition, batches))
    expected = _sgd(condition, graph, batches, 0.05, steps)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # the loss after the rewrites trains the head and the lr through every step (first-order)
    loss = condition.masked_loss(raise_params(rewrite_steps(net, graph, condition, batches)), batches)
    loss.backward()
    assert net.step_head.weight.grad.abs().sum() > 0 and net.log_step_lr.grad.abs() > 0
    with pytest.raises(FxmetaError, match="observe"):
        net(graph, condition.features(batches))


def test_rewrite_for_prune_applies_as_many_rewrites_as_the_metanet_was_trained_for(case, tmp_path):
    model, x, batches = case
    graph = lower(model, x)
    condition = Condition(graph, x, 2.0)
    net = Metanet.for_graph(graph, width=8, depth=1, ratio=1.0, condition=len(FEATURES), steps=2, step_lr=0.05)
    net.zero_outputs()
    path = str(tmp_path / "steps.pt")
    save_metanet(net, path)
    module, importance = apply_for_prune(path, model, x, 2.0, batches)
    expected = _sgd(condition, graph, batches, 0.05, 2)  # the untrained metanet: two SGD steps
    got = dict(module.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(got[name].detach(), value, rtol=1e-4, atol=1e-6, msg=name)
    assert prune(module, x, speedup=2.0, importance=importance).speedup >= 2.0
