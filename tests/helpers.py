"""Small models and assertions shared by the tests."""
from __future__ import annotations

import torch
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
