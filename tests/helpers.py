"""Small models and assertions shared by the tests."""
from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from fxmeta.ir import WeightGraph, lower, raise_graph, raise_params


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 5, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm non-trivial affine params and running stats (init values hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Every tensor of ``a`` is in ``b``, bit for bit. ``b`` may add the tensor constants
    torch.fx captures while tracing (``_tensor_constantN``), nothing else."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() <= sb.keys(), sorted(sa.keys() - sb.keys())[:5]
    assert all(k.startswith("_tensor_constant") for k in sb.keys() - sa.keys()), sorted(sb.keys() - sa.keys())[:5]
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def roundtrip(model: nn.Module, x: torch.Tensor) -> WeightGraph:
    """Lower, check and raise ``model``; assert the result is bit-identical and owns its tensors."""
    model.eval()
    graph = lower(model, x)
    graph.check()
    raised = raise_graph(graph)
    assert_same_state(model, raised)
    with torch.no_grad():
        y = model(x)
        assert torch.equal(y, raised(x))
        assert torch.equal(y, torch.func.functional_call(graph.module, raise_params(graph), (x,)))
    state = raised.state_dict()
    for name, p in model.state_dict().items():
        assert p.numel() == 0 or p.data_ptr() != state[name].data_ptr(), name
    return graph


class RandomNet(nn.Module):
    """conv / linear / bn / relu / add / cat / branches / SE / split, drawn by hypothesis."""

    def __init__(self, plan: list[tuple], in_ch: int):
        super().__init__()
        self.plan = plan
        self.mods = nn.ModuleList()
        self.splits = []
        widths = [in_ch]
        for kind, a, b, width, k, groups in plan:
            if kind == "cat":
                cin = widths[a] + widths[b]
            elif kind == "split":
                cin = widths[a] - widths[a] // 2
                self.splits.append([widths[a] // 2, cin])
            else:
                cin = widths[a]
            g = groups if cin % groups == 0 and width % groups == 0 else 1
            if kind == "linear":
                self.mods.append(nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU()))
            elif kind == "se":
                width = cin
                self.mods.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 3, 1), nn.ReLU(),
                                               nn.Conv2d(3, cin, 1), nn.Sigmoid()))
            else:
                self.mods.append(nn.Sequential(nn.Conv2d(cin, width, k, padding=k // 2, groups=g),
                                               nn.BatchNorm2d(width), nn.ReLU()))
            widths.append(width)
        self.head = nn.Linear(widths[-1] * 4, 3)

    def forward(self, x):
        feats = [x]
        splits = iter(self.splits)
        for (kind, a, b, *_), mod in zip(self.plan, self.mods):
            if kind == "cat":
                h = mod(torch.cat([feats[a], feats[b]], 1))
            elif kind == "add":
                h = mod(feats[a]) + feats[b]
            elif kind == "se":
                h = feats[a] * mod(feats[a])
            elif kind == "split":
                h = mod(torch.split(feats[a], next(splits), 1)[-1])  # constant sizes: rewritten
            else:
                h = mod(feats[a])
            feats.append(h)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(feats[-1], 2), 1))


@st.composite
def random_nets(draw):
    """(RandomNet, input channels): a random plan of up to 7 blocks over 6x6 inputs."""
    in_ch = draw(st.integers(1, 3))
    widths = [in_ch]
    plan = []
    for _ in range(draw(st.integers(1, 7))):
        a = draw(st.integers(0, len(widths) - 1))
        b = draw(st.integers(0, len(widths) - 1))
        kind = draw(st.sampled_from(["seq", "cat", "add", "se", "linear", "split"]))
        width = draw(st.sampled_from([4, 6, 8]))
        if kind == "add":
            width = widths[b]
        if kind == "split" and widths[a] < 2:
            kind = "seq"
        if kind == "se":
            width = widths[a]
        plan.append((kind, a, b, width, draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 4]))))
        widths.append(width)
    return RandomNet(plan, in_ch), in_ch
