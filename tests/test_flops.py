"""FLOPs counting: attention is counted, state is left alone, the analytic model is exact."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fxmeta.analysis.channels import analyze
from fxmeta.pruning.flops import FlopModel, count_flops, count_params
from fxmeta.pruning.pruner import prune
from fxmeta.pruning.selection import flop_model

from helpers import randomize_bn

torch.set_num_threads(1)


def mha_flops(b: int, l: int, e: int) -> int:
    """In / out projections plus the two attention matmuls, 2 FLOPs per multiply-add."""
    return 2 * b * l * e * 3 * e + 2 * b * l * e * e + 2 * 2 * b * l * l * e


def test_multihead_attention_in_eval_is_counted():
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    model = _SelfAttention(mha)
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model(x)
    assert stock.get_total_flops() < mha_flops(2, 10, 32)  # the fast path hides the work from the counter
    assert count_flops(model, x) == mha_flops(2, 10, 32)


def test_cpu_sdpa_kernel_is_counted():
    q = torch.randn(2, 4, 16, 8)

    class Attn(nn.Module):
        def forward(self, q):
            return nn.functional.scaled_dot_product_attention(q, q, q)

    assert count_flops(Attn(), q) == 2 * 2 * (2 * 4 * 16 * 16 * 8)


class _SelfAttention(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def test_counting_leaves_state_and_mode_alone():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = torch.backends.mha.get_fastpath_enabled()
    flops = count_flops(model, torch.randn(2, 3, 6, 6))
    assert flops == 2 * 2 * 4 * 3 * 9 * 16
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.backends.mha.get_fastpath_enabled() == fast
    assert count_params(model) == 4 * 3 * 9 + 4 + 8


def test_flop_model_evaluates_removals():
    ids = torch.tensor([1, 2, 3])
    model = FlopModel([(2.0, [ids, torch.tensor([4, 5])]), (3.0, [])], constant=1.0)
    assert model.evaluate() == 2 * 3 * 2 + 3 + 1
    removed = torch.zeros(6, dtype=torch.bool)
    removed[[2, 5]] = True
    assert model.evaluate(removed) == 2 * 2 * 1 + 3 + 1


class Mixed(nn.Module):
    """Every FLOPs-bearing op family: conv (grouped, transposed), linear, matmul, einsum, SDPA."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 8, 3, groups=4)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.lin = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.up(torch.relu(self.c2(torch.relu(self.c1(x)))))
        t = self.lin(h.flatten(2).transpose(1, 2))
        t = t + torch.einsum("bij,bjk->bik", t @ t.transpose(1, 2), t) * 0.01
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.out(t.mean(1))


def test_analytic_flops_match_the_counter_before_and_after_pruning():
    model = randomize_bn(Mixed()).eval()
    x = torch.randn(2, 3, 8, 8)
    analysis = analyze(model, x)
    assert flop_model(analysis).evaluate() == count_flops(model, x)
    result = prune(model, x, speedup=1.5)
    assert result.flops_after == count_flops(result.module, x)
    assert result.speedup == pytest.approx(count_flops(model, x) / result.flops_after)


def test_resnet18_analytic_equals_counted():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    assert flop_model(analyze(model, x)).evaluate() == count_flops(model, x)


@pytest.mark.slow
def test_vit_b_16_matches_hand_count():
    model = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224)
    e, tokens, mlp, patches = 768, 197, 3072, 196
    layer = 2 * tokens * e * 3 * e + 2 * 2 * tokens * tokens * e + 2 * tokens * e * e + 2 * 2 * tokens * e * mlp
    hand = 2 * e * 3 * 16 * 16 * patches + 12 * layer + 2 * e * 1000
    assert count_flops(model, x) == pytest.approx(hand, rel=0.01)
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model(x)
    assert stock.get_total_flops() < 0.7 * hand  # what the stock counter reports
