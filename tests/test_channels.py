"""Channel spaces and dependency groups: union-find, group slices, frozen spaces, probes."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fxmeta.analysis.channels import FROZEN, UnionFind, analyze
from fxmeta.errors import UnsupportedModelError
from fxmeta.pruning import prune

from helpers import randomize_bn

torch.set_num_threads(1)


def test_union_find_links_pairs_and_keeps_frozen_root():
    uf = UnionFind()
    a, b = uf.fresh(4), uf.fresh(4)
    uf.union(a, b)
    assert torch.equal(uf.find(a), uf.find(b))
    # many pairs sharing roots in one call: a chain 0-1-2-3 within a
    uf.union(a[:3], a[1:])
    assert len(torch.unique(uf.find(torch.cat([a, b])))) == 1
    c = uf.fresh(2)
    uf.union(c[:1], torch.zeros(1, dtype=torch.long))
    assert uf.find(c).tolist() == [FROZEN, int(c[1])]
    uf.union(c[1:], a[:1])
    assert not bool((uf.find(a) == FROZEN).any())
    uf.union(c[1:], c[:1])
    assert bool((uf.find(torch.cat([a, b, c])) == FROZEN).all())


def test_union_find_grows():
    uf = UnionFind()
    ids = uf.fresh(5000)
    uf.union(ids[:-1], ids[1:])
    assert len(torch.unique(uf.roots()[1:])) == 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 8, 1)
        self.fc = nn.Linear(8 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + self.b(torch.relu(self.a(h)))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def test_group_slices_cover_every_parameter_a_unit_owns():
    model = randomize_bn(Net()).eval()
    analysis = analyze(model, torch.randn(2, 3, 6, 6))
    groups = {g.units: g for g in analysis.groups}
    assert sorted(groups) == [6, 8]
    stream = groups[8]
    by_name = {(n, d): i for n, d, i in stream.slices}
    assert set(by_name) == {("stem.weight", 0), ("stem.bias", 0), ("bn.weight", 0), ("bn.bias", 0),
                            ("a.weight", 1), ("b.weight", 0), ("b.bias", 0), ("fc.weight", 1)}
    assert {(n, d) for n, d, _ in stream.buffer_slices} == {("bn.running_mean", 0), ("bn.running_var", 0)}
    assert by_name[("stem.weight", 0)].tolist() == [[u] for u in range(8)]
    assert by_name[("fc.weight", 1)][3].tolist() == [12, 13, 14, 15]  # channel 3 feeds 4 pooled features


def test_slices_give_differentiable_group_norms():
    """The regulariser's use: per-unit norms from a dict of (generated) tensors, by name."""
    model = Net().eval()
    analysis = analyze(model, torch.randn(1, 3, 6, 6))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    group = next(g for g in analysis.groups if g.units == 6)
    sq = sum(params[n].movedim(d, 0)[i].pow(2).flatten(1).sum(1) for n, d, i in group.slices)
    want = (model.a.weight.pow(2).flatten(1).sum(1) + model.a.bias.pow(2) + model.b.weight.pow(2).sum((0, 2, 3)))
    assert torch.allclose(sq, want.detach())
    sq.sqrt().sum().backward()
    assert params["a.weight"].grad is not None and params["stem.weight"].grad is None


def test_group_keys_and_unit_order_are_stable():
    x = torch.randn(1, 3, 6, 6)
    torch.manual_seed(1)
    one = analyze(Net().eval(), x)
    torch.manual_seed(2)
    two = analyze(Net().eval(), x)
    assert [g.key for g in one.groups] == [g.key for g in two.groups]
    for g, h in zip(one.groups, two.groups):
        assert [(n, d, i.tolist()) for n, d, i in g.slices] == [(n, d, i.tolist()) for n, d, i in h.slices]


def test_inputs_and_outputs_are_never_pruned():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 5, 1))
    analysis = analyze(model.eval(), torch.randn(1, 3, 2, 2))
    owned = {(n, d) for g in analysis.groups for n, d, _ in g.slices}
    assert ("0.weight", 1) not in owned and ("2.weight", 0) not in owned
    assert owned == {("0.weight", 0), ("0.bias", 0), ("2.weight", 1)}


def test_ignore_freezes_named_modules():
    x = torch.randn(1, 3, 6, 6)
    analysis = analyze(Net().eval(), x, ignore=["a"])
    assert analysis.groups == []  # a keeps its width and its input width: the stream is frozen too
    analysis = analyze(Net().eval(), x, ignore=["fc"])
    assert [g.units for g in analysis.groups] == [6]  # the stream reaches fc
    with pytest.raises(UnsupportedModelError, match="ignore names no module"):
        analyze(Net().eval(), x, ignore=["nope"])


def test_constants_are_listed_with_their_group():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            q, k, v = self.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
            o = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.out(o.transpose(1, 2).reshape(2, 5, 8))

    analysis = analyze(Heads().eval(), torch.randn(2, 5, 8))
    heads = [g for g in analysis.groups if g.prunable]
    assert [g.units for g in heads] == [2]
    assert any(c.startswith("view") for c in heads[0].constants)


def test_probe_records_what_it_did():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Softmin(-1), nn.Conv2d(4, 2, 1))  # no rule for Softmin
    analysis = analyze(model.eval(), torch.randn(1, 3, 3, 3))
    assert analysis.probed == {"_1": "index map proven by probe"}
    assert [g.units for g in analysis.groups if g.prunable] == [4]


def test_resnet18_groups():
    analysis = analyze(torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64))
    assert sorted(g.units for g in analysis.groups) == [64, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512]
    assert all(g.prunable for g in analysis.groups)


def test_keyword_call_forms_are_understood():
    class KwargsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.mid = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4 * 4, 2)

        def forward(self, x):
            h = self.mid(torch.relu(input=self.conv(x)))
            return self.fc(torch.flatten(input=h, start_dim=1))

    model, x = KwargsOnly().eval(), torch.randn(1, 3, 4, 4)
    analysis = analyze(model, x)
    assert "flatten" not in analysis.frozen_reasons and "relu" not in analysis.frozen_reasons
    assert sorted(g.units for g in analysis.groups if g.prunable) == [4, 4]  # conv and mid, through flatten
    pruned = prune(model, x, speedup=1.3).module  # self-checked
    assert pruned.mid.out_channels < 4 or pruned.conv.out_channels < 4


def test_a_failing_rule_freezes_instead_of_failing():
    def broken(ctx, node):
        raise ValueError("this rule does not expect this call")

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1))
    analysis = analyze(model.eval(), torch.randn(1, 3, 2, 2), rules={nn.ReLU: broken})
    assert analysis.frozen_reasons["_1"].startswith("rule failed: ValueError")
    assert [g.units for g in analysis.groups if g.prunable] == [4]  # the second conv's output is still free
