"""The group-sparsity penalty against a hand computation, with groups from fxmeta.analysis.channels
and with slices written by hand."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fxmeta.metatrain.regularizer import GroupRegularizer, group_regularizer, regularizer_from_groups

torch.set_num_threads(1)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _hand_penalty(w1, b1, w2, reg, alpha, bias):
    sq = w1.pow(2).sum(1) + w2.pow(2).sum(0) + (b1.pow(2) if bias else 0)
    n = sq.sqrt()
    gamma = alpha ** ((n.max() - n) / (n.max() - n.min()))
    return reg / 2 * (gamma * sq).sum(), gamma


@pytest.mark.parametrize("bias", [False, True])
def test_penalty_matches_hand_computation_on_analyzed_groups(bias):
    model = TwoLayer()
    reg_fn = group_regularizer(model, torch.randn(1, 3), reg=10.0, alpha=16.0, bias=bias)
    assert len(reg_fn.groups) == 1  # the 4 hidden units; inputs and outputs are never pruned
    params = dict(model.named_parameters())
    expected, gamma = _hand_penalty(params["fc1.weight"], params["fc1.bias"], params["fc2.weight"], 10.0, 16.0, bias)
    got = reg_fn(params)
    torch.testing.assert_close(got, expected)
    # the gradient is reg * gamma * theta with gamma held fixed (as Torch-Pruning's regularize adds)
    got.backward()
    torch.testing.assert_close(model.fc1.weight.grad, 10.0 * gamma[:, None] * model.fc1.weight.detach())
    torch.testing.assert_close(model.fc2.weight.grad, 10.0 * gamma[None, :] * model.fc2.weight.detach())
    assert (model.fc1.bias.grad is not None) == bias
    assert model.fc2.bias.grad is None  # the output layer's bias belongs to no prunable group


def test_penalty_on_hand_written_slices_and_generated_weights():
    w1, g, w2 = torch.randn(3, 2, 3, 3), torch.rand(3) + 0.5, torch.randn(5, 3, 3, 3)
    index = torch.arange(3)[:, None]  # unit u owns entry u of each dim
    group = SimpleNamespace(prunable=True, slices=[("conv1.weight", 0, index), ("bn1.weight", 0, index),
                                                   ("bn1.bias", 0, index), ("conv2.weight", 1, index)])
    frozen = SimpleNamespace(prunable=False, slices=[("conv2.weight", 0, torch.arange(5)[:, None])])
    reg_fn = regularizer_from_groups([group, frozen], reg=2.0, alpha=4.0)
    assert isinstance(reg_fn, GroupRegularizer) and len(reg_fn.groups) == 1
    sq = w1.pow(2).sum((1, 2, 3)) + g.pow(2) + w2.pow(2).sum((0, 2, 3))
    n = sq.sqrt()
    gamma = 4.0 ** ((n.max() - n) / (n.max() - n.min()))
    params = {"conv1.weight": w1, "bn1.weight": g, "bn1.bias": torch.randn(3), "conv2.weight": w2}
    torch.testing.assert_close(reg_fn(params), (gamma * sq).sum())
    torch.testing.assert_close(reg_fn.gammas(params)[0], gamma)
    assert gamma.min() == 1.0 and torch.isclose(gamma.max(), torch.tensor(4.0))  # strongest 1, weakest alpha


def test_equal_units_get_no_preference():
    index = torch.arange(2)[:, None]
    reg_fn = GroupRegularizer([[("w", 0, index)]], reg=1.0, alpha=16.0)
    w = torch.ones(2, 3)
    torch.testing.assert_close(reg_fn({"w": w}), torch.tensor(3.0))  # gamma = 1 for both units
