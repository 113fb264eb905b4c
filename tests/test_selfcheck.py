"""The self-check's failure paths: a wrong slimming result is an error that names the group."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fxmeta.analysis.channels import analyze
from fxmeta.analysis.rules.conv import conv_module
from fxmeta.errors import PruningError
from fxmeta.pruning import prune

torch.set_num_threads(1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 3)).eval()


X = torch.randn(2, 3, 4, 4)


def _conv_with_hook(hook):
    """The conv rule plus a slimming hook that breaks the first conv after it is slimmed."""

    def rule(ctx, node):
        out = conv_module(ctx, node)
        if node.target == "0":
            ctx.on_slim(hook)
        return out

    return rule


def _named_group(message: str) -> str:
    keys = [g.key for g in analyze(_model(), X).groups]
    named = [k for k in keys if k in message]
    assert named, message
    return named[0]


def test_wrong_values_are_caught_and_the_group_named():
    def swap_channels(s, node):  # the right shapes, the kept channels in the wrong order
        conv = s.module(node.target)
        conv.weight = nn.Parameter(conv.weight.detach().flip(0))

    with pytest.raises(PruningError, match="self-check failed: pruned model differs") as info:
        prune(_model(), X, speedup=2.5, rules={nn.Conv2d: _conv_with_hook(swap_channels)})
    assert _named_group(str(info.value)).startswith("0.")  # the first conv's output channels


def test_wrong_shapes_are_caught_and_the_group_named():
    def drop_one_more(s, node):
        conv = s.module(node.target)
        conv.weight = nn.Parameter(conv.weight.detach()[:-1].clone())
        conv.bias = nn.Parameter(conv.bias.detach()[:-1].clone())
        conv.out_channels -= 1

    with pytest.raises(PruningError, match="self-check failed") as info:
        prune(_model(), X, speedup=2.5, rules={nn.Conv2d: _conv_with_hook(drop_one_more)})
    assert _named_group(str(info.value)).startswith("0.")  # the first conv's output channels


def test_the_same_rules_without_the_broken_hook_pass():
    result = prune(_model(), X, speedup=1.5, rules={nn.Conv2d: _conv_with_hook(lambda s, node: None)})
    assert result.speedup >= 1.5
