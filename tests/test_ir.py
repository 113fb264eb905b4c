"""The WeightGraph IR: exact round trip, structure, permutation, checker, errors."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxmeta
from fxmeta import models
from fxmeta.errors import InputShapeError, UnsupportedModelError
from fxmeta.ir import IRError, Slot, lower, raise_params

from helpers import TinyMLP, randomize_bn, roundtrip


@pytest.mark.parametrize("name,shape", [
    ("resnet20", (2, 3, 32, 32)), ("resnet56", (2, 3, 16, 16)), ("vgg19", (2, 3, 32, 32)),
    ("resnet20", (2, 1, 8, 8)),
])
def test_roundtrip_fxmeta_models(name, shape):
    model = randomize_bn(models.get_model(name, in_channels=shape[1]))
    graph = roundtrip(model, torch.randn(shape))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(layer.op in ("conv2d", "linear") for layer in graph.layers) == len(convs)
    # Every conv's weight is one dense block with its kernel as features.
    assert graph.num_edges >= sum(m.weight.shape[0] * m.weight.shape[1] for m in convs)


TORCHVISION = [
    ("resnet18", 64, {}), ("mobilenet_v3_small", 64, {}), ("densenet121", 64, {}),
    ("efficientnet_b0", 64, {}), ("convnext_tiny", 64, {}), ("vit_b_16", 32, {"image_size": 32}),
    ("swin_t", 64, {}), ("shufflenet_v2_x0_5", 64, {}), ("regnet_y_400mf", 64, {}),
    ("squeezenet1_0", 64, {}),
]


@pytest.mark.parametrize("name,size,kwargs", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_roundtrip_torchvision(name, size, kwargs):
    torch.set_num_threads(2)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    randomize_bn(model)
    graph = roundtrip(model, torch.randn(1, 3, size, size))
    assert graph.layers[0].op == "input" and graph.layers[0].count == 3
    assert graph.outputs and len(graph.outputs[0]) == 10


def test_edges_follow_the_weights():
    model = TinyMLP().eval()
    graph = lower(model, torch.randn(4, 6))
    fc1, fc2 = graph.layer("fc1"), graph.layer("fc2")
    index = fc2.edge_index()
    # Edge (o, j) of fc2 runs from fc1's node j to fc2's node o, carrying w[o, j].
    assert index.shape == (2, 15)
    assert index[:, 7].tolist() == [fc1.start + 2, fc2.start + 1]
    assert fc2.edge[1, 2, 0] == model.fc2.weight[1, 2]
    assert fc1.node_cols == ("bias", "batchnorm1d.weight", "batchnorm1d.bias",
                             "batchnorm1d.running_mean", "batchnorm1d.running_var")
    assert graph.edge_index().shape[1] == graph.num_edges == 6 * 5 + 5 * 3


def test_flatten_edges_carry_the_spatial_block():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 9, 5))
    graph = lower(model, torch.randn(1, 2, 3, 3))
    lin = graph.layer("2")
    assert lin.edge_kind == "linear:flatten9" and lin.edge.shape == (5, 4, 9)
    assert torch.equal(lin.src, torch.arange(graph.layer("0").start, graph.layer("0").stop))
    assert torch.equal(lin.edge[3, 1], model[2].weight[3, 9:18])


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, groups=2), nn.Conv2d(4, 4, 3, groups=4), nn.Conv1d(4, 6, 5),
    nn.Conv3d(4, 2, 1), nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2), nn.ConvTranspose1d(4, 3, 3),
])
def test_conv_variants_roundtrip_and_wiring(conv):
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2}[type(conv)]
    model = nn.Sequential(conv).eval()
    x = torch.randn(1, 4, *([6] * dims))
    graph = roundtrip(model, x)
    layer = graph.layers[1]
    w = conv.weight
    out_per_group = layer.count // layer.groups
    transposed = isinstance(conv, nn.ConvTranspose1d | nn.ConvTranspose2d)
    for (o, j) in [(0, 0), (layer.count - 1, layer.edge.shape[1] - 1)]:
        src = layer.src[(o // out_per_group) * layer.edge.shape[1] + j].item()
        if transposed:
            g = o // out_per_group
            expect = w[g * layer.edge.shape[1] + j, o % out_per_group].flatten()
        else:
            expect = w[o, j].flatten()
        assert torch.equal(layer.edge[o, j], expect)
        assert 0 <= src < 4  # an input channel


def test_residual_add_is_a_junction():
    model = randomize_bn(models.resnet20()).eval()
    graph = lower(model, torch.randn(1, 3, 8, 8))
    adds = [layer for layer in graph.layers if layer.op == "add"]
    assert len(adds) == 9
    first = adds[0]
    assert first.edge.shape == (16, 2, 1) and not first.learned_edges
    # Node o of the add is fed by channel o of both operands.
    producers = graph.layer_of_node(first.src.view(16, 2)[:, 0])
    assert all(graph.layers[p].name == "layer1.0.conv2" for p in producers.tolist())


def test_raise_params_is_differentiable():
    model = TinyMLP().eval()
    x = torch.randn(4, 6)
    graph = lower(model, x)
    edges = [l.edge.detach().clone().requires_grad_(True) if l.edge is not None else None for l in graph.layers]
    nodes = [l.node.detach().clone().requires_grad_(True) if l.node is not None else None for l in graph.layers]
    new = graph.with_features(edges, nodes)
    params = raise_params(new)
    out = torch.func.functional_call(new.module, params, (x,))
    assert torch.equal(out, model(x))
    out.square().sum().backward()
    assert edges[graph.layers.index(graph.layer("fc2"))].grad.abs().sum() > 0
    assert nodes[graph.layers.index(graph.layer("fc1"))].grad.abs().sum() > 0


def permute_hidden(model: nn.Module, perm: torch.Tensor) -> nn.Module:
    """TinyMLP with its hidden units reordered: the same function."""
    out = TinyMLP()
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        out.fc1.weight.copy_(model.fc1.weight[perm])
        out.fc1.bias.copy_(model.fc1.bias[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out.bn, name).copy_(getattr(model.bn, name)[perm])
        out.fc2.weight.copy_(model.fc2.weight[:, perm])
    return out.eval()


def test_permutation_permutes_the_ir_and_nothing_else():
    model = randomize_bn(TinyMLP()).eval()
    perm = torch.tensor([3, 0, 4, 1, 2])
    x = torch.randn(4, 6)
    other = permute_hidden(model, perm)
    assert torch.allclose(model(x), other(x), atol=1e-6)
    a, b = lower(model, x), lower(other, x)
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert (la.start, la.count, la.node_kind, la.edge_kind) == (lb.start, lb.count, lb.node_kind, lb.edge_kind)
        assert torch.equal(la.src, lb.src) if la.src is not None else lb.src is None
    fc1 = a.layers.index(a.layer("fc1"))
    fc2 = a.layers.index(a.layer("fc2"))
    assert torch.equal(b.layers[fc1].edge, a.layers[fc1].edge[perm])
    assert torch.equal(b.layers[fc1].node, a.layers[fc1].node[perm])
    assert torch.equal(b.layers[fc2].edge, a.layers[fc2].edge[:, perm])
    assert torch.equal(b.layers[fc2].node, a.layers[fc2].node)
    # As a graph: relabelling fc1's nodes maps a's edge set with features onto b's.
    start = a.layers[fc1].start
    relabel = torch.arange(a.num_nodes)
    relabel[start + perm] = torch.arange(start, start + 5)
    ea = {tuple(e): f for e, f in zip(relabel[a.edge_index()].t().tolist(), _edge_features(a))}
    eb = {tuple(e): f for e, f in zip(b.edge_index().t().tolist(), _edge_features(b))}
    assert ea == eb


def _edge_features(graph):
    return [tuple(f) for l in graph.layers if l.edge is not None for f in l.edge.reshape(-1, l.edge.shape[-1]).tolist()]


def test_check_catches_a_broken_ir():
    graph = lower(TinyMLP().eval(), torch.randn(2, 6))
    graph.check()
    slot = graph.slots["fc2.weight"]
    graph.slots["fc2.weight"] = Slot(slot.layer - 1, slot.table, slot.col, slot.layout, slot.shape)
    with pytest.raises(IRError):
        graph.check()
    graph.slots["fc2.weight"] = slot
    del graph.passthrough["bn.num_batches_tracked"]
    with pytest.raises(IRError, match="without a slot"):
        graph.check()


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: fx cannot trace this
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_submodule_becomes_a_reported_leaf():
    model = nn.Sequential(nn.Linear(3, 4), Untraceable(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 3)
    gm = fxmeta.trace(model, x)
    assert "1" in gm.meta["fxmeta.auto_leaves"]
    graph = roundtrip(model, x)
    assert "1.fc.weight" in graph.passthrough and "1" in graph.frozen
    # The last linear reads the leaf's output through opaque nodes, not through guesses.
    assert graph.layers[graph.layer_of_node(graph.layer("2").src[:1]).item()].op == "opaque"


def test_unused_state_survives():
    model = TinyMLP().eval()
    model.spare = nn.Linear(2, 2)
    model.register_buffer("step", torch.tensor(3))
    roundtrip(model, torch.randn(2, 6))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(UnsupportedModelError, match="torch.nn.Module"):
        lower("resnet", torch.randn(1))
    with pytest.raises(InputShapeError, match="does not run on an input of shape"):
        lower(models.resnet20(), torch.randn(1, 5, 8, 8))


def _halve(x):
    return x * 0.5


torch.fx.wrap("_halve")


class _WithUserOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.b(_halve(torch.relu(self.a(x))))


def test_lower_takes_the_channel_rules_a_prune_takes():
    """A rule passed for pruning reaches the IR: without it the user op's output is of unknown origin
    (fresh opaque nodes), with it the second conv reads the first conv's channel nodes."""
    from fxmeta.analysis.rules.elementwise import elementwise

    model, x = _WithUserOp().eval(), torch.randn(1, 1, 6, 6)
    plain = lower(model, x)
    assert any(layer.op == "opaque" for layer in plain.layers)
    ruled = lower(model, x, rules={_halve: elementwise})
    assert not any(layer.op == "opaque" for layer in ruled.layers)
    assert ruled.num_nodes == plain.num_nodes - 4  # no opaque nodes for the op's 4 channels
    with torch.no_grad():
        assert torch.equal(fxmeta.raise_graph(ruled)(x), model(x))  # lower -> raise stays exact
