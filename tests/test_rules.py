"""Rule by rule: a tiny model per op family, before / after removing channels.

Each test removes every other unit of every prunable group with a hand-made plan and
checks (1) the expected coupling in the analysis, (2) the slim modules and graph
constants, and (3) the output against an independent reference: a copy of the original
model whose removed parameter slices are set to zero.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxmeta.analysis.channels import analyze, flat_labels
from fxmeta.pruning.plan import removed_from_plan
from fxmeta.pruning.pruner import PLAN_FORMAT, apply_plan

from helpers import randomize_bn

torch.set_num_threads(1)



@torch.fx.wrap
def swish_leaf(x):
    """A function torch.fx keeps as one call (a leaf): no rule knows it."""
    return x * torch.sigmoid(x)


class WrappedAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(swish_leaf(self.a(x)))


def half_plan(analysis, pick=lambda g: True):
    """Remove units 0, 2, 4 ... (at least one stays) of every prunable group that ``pick`` accepts."""
    groups = [g for g in analysis.groups if g.prunable and pick(g)]
    return {"format": PLAN_FORMAT, "ignore": [], "groups": [
        {"key": g.key, "units": g.units, "removed": list(range(0, g.units, 2))[: g.units - 1]} for g in groups]}


def zeroed(model, analysis, plan):
    """The original model with every parameter slice of the removed units set to zero."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for entry in plan["groups"]:
            g = analysis.group(entry["key"])
            rows = torch.tensor(entry["removed"], dtype=torch.long)
            for name, dim, index in g.slices:
                params[name].movedim(dim, 0)[index[rows].flatten()] = 0
    return ref


def _prunes_statistics(analysis, plan):
    """Does the plan remove channels a norm or mean runs its statistics over?"""
    removed = removed_from_plan(analysis, plan)
    nodes = {n.name: n for n in analysis.gm.graph.nodes}
    return any(bool(removed[analysis.roots(labels)].any())
               for name in analysis.references for labels in flat_labels(analysis.values[nodes[name].args[0].name]))


def check(model, x, pick=lambda g: True, min_groups=1):
    """Prune half of each picked group; compare with the zeroed reference. Returns (analysis, pruned)."""
    model = randomize_bn(model).eval()
    analysis = analyze(model, x)
    plan = half_plan(analysis, pick)
    assert len(plan["groups"]) >= min_groups, [g.key for g in analysis.groups]
    pruned = apply_plan(model, plan, x)  # runs the self-check
    with torch.no_grad():
        got = pruned(x)
    assert got.shape == model(x).shape
    if not _prunes_statistics(analysis, plan):  # else zeroing is not the reference (see rules.statistics)
        with torch.no_grad():
            want = zeroed(model, analysis, plan)(x)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())), float((got - want).abs().max())
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < before
    return analysis, pruned


def prunable(analysis):
    return [g for g in analysis.groups if g.prunable]


def modules(gm, kind):
    return [m for m in gm.modules() if type(m) is kind]


# --------------------------------------------------------------------------- conv / linear / norms


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_nd_with_batchnorm(dim):
    conv, bn = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1], (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1]
    model = nn.Sequential(conv(3, 8, 3, padding=1), bn(8), nn.ReLU(), conv(8, 6, 3), bn(6), nn.ReLU(), conv(6, 4, 1))
    x = torch.randn(2, 3, *([6] * dim))
    analysis, pruned = check(model, x, min_groups=2)
    convs = modules(pruned, type(model[0]))
    assert [c.out_channels for c in convs] == [4, 3, 4]  # the last conv makes the output: frozen
    assert [c.in_channels for c in convs] == [3, 4, 3]
    assert [b.num_features for b in modules(pruned, type(model[1]))] == [4, 3]


def test_grouped_conv_keeps_groups_and_shrinks_each_group():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=4),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 5, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 6, 6))
    # entry j of every group is one unit: 4 units of 4 channels in, 4 units of 4 channels out
    assert sorted(g.units for g in prunable(analysis)) == [4, 4]
    grouped = modules(pruned, nn.Conv2d)[1]
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (4, 8, 8)


def test_depthwise_conv_removes_whole_groups():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12), nn.ReLU6(),
                          nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), nn.ReLU6(), nn.Conv2d(12, 4, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 6, 6))
    assert [g.units for g in prunable(analysis)] == [12]  # expand conv, depthwise conv and BNs move together
    dw = modules(pruned, nn.Conv2d)[1]
    assert dw.groups == dw.in_channels == dw.out_channels == 6


def test_depthwise_conv_with_channel_multiplier():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1, groups=6), nn.ReLU(),
                          nn.Conv2d(12, 4, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 5, 5))
    (group,) = prunable(analysis)
    assert group.units == 6
    dw = modules(pruned, nn.Conv2d)[1]
    assert (dw.groups, dw.in_channels, dw.out_channels) == (3, 3, 6)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_transposed_conv(groups):
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.ConvTranspose2d(6, 6, 3, stride=2, groups=groups), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 2, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 6, 6))
    up = modules(pruned, nn.ConvTranspose2d)[0]
    assert up.weight.shape[0] == up.in_channels and up.out_channels == up.weight.shape[1] * up.groups
    assert up.in_channels < 6


def test_layernorm_channels_go_and_its_statistics_run_over_the_kept_ones():
    model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 7), nn.ReLU(),
                          nn.Linear(7, 3))
    nn.init.uniform_(model[3].weight, 0.5, 1.5), nn.init.uniform_(model[3].bias, -0.5, 0.5)
    x = torch.randn(4, 5)
    analysis, pruned = check(model, x)
    lin = modules(pruned, nn.Linear)
    assert [l.out_features for l in lin] == [4, 3, 3, 3]
    assert pruned.get_submodule("3").normalized_shape == (3,)
    # the reference the self-check used, written out: LayerNorm over the three channels that stay
    k8, k6 = torch.tensor([1, 3, 5, 7]), torch.tensor([1, 3, 5])
    with torch.no_grad():
        h = F.linear(F.gelu(model[0](x))[:, k8], model[2].weight[k6][:, k8], model[2].bias[k6])
        h = F.layer_norm(h, (3,), model[3].weight[k6], model[3].bias[k6])
        h = F.relu(F.linear(h, model[4].weight[k6][:, k6], model[4].bias[k6]))
        want = F.linear(h, model[6].weight[:, k6], model[6].bias)
        assert torch.allclose(pruned(x), want, atol=1e-6)


def test_groupnorm_removes_whole_groups():
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.GroupNorm(4, 12), nn.SiLU(), nn.Conv2d(12, 4, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 6, 6))
    (group,) = prunable(analysis)
    assert group.units == 4 and group.slices[0][2].shape == (4, 3)
    gn = modules(pruned, nn.GroupNorm)[0]
    assert (gn.num_groups, gn.num_channels) == (2, 6)


def test_instancenorm_and_prelu():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8, affine=True), nn.PReLU(8), nn.Conv2d(8, 8, 3),
                          nn.PReLU(), nn.Conv2d(8, 2, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 8, 8), min_groups=2)
    assert modules(pruned, nn.InstanceNorm2d)[0].num_features == 4
    assert [p.num_parameters for p in modules(pruned, nn.PReLU)] == [4, 1]


# --------------------------------------------------------------------------- elementwise, residuals


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 1))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        x = x * self.b(x)  # residual mul
        return self.head(x.mean((2, 3)))


def test_residual_add_and_mul_couple_their_operands():
    analysis, pruned = check(Residual(), torch.randn(2, 3, 6, 6))
    widths = sorted(g.units for g in prunable(analysis))
    assert widths == [6, 8]  # the stem, both branch outputs, b's input and the head form one group
    stream = next(g for g in prunable(analysis) if g.units == 8)
    names = {n for n, _, _ in stream.slices}
    assert {"stem.weight", "a.3.weight", "b.0.weight", "b.1.weight", "head.weight"} <= names


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))  # sigmoid(0) = 0.5
        return self.out(x * s)


def test_squeeze_excitation_broadcasting_mul():
    analysis, pruned = check(SqueezeExcite(), torch.randn(2, 3, 7, 7))
    assert sorted(g.units for g in prunable(analysis)) == [4, 8]
    assert pruned.fc2.out_channels == pruned.conv.out_channels == 4


# --------------------------------------------------------------------------- cat, split, slices


class CatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 1)
        self.d = nn.Conv2d(3, 4, 1)
        self.e = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        y = self.c(y)
        p, q = torch.split(y, [3, 5], dim=1)
        r, s = y.chunk(2, dim=1)
        t = y[:, 1:4]
        return self.e(torch.cat([p[:, :2] + r[:, :2], q[:, :2] * s[:, :2], t[:, :2] - self.d(x)[:, :2]], 1))


def test_cat_split_chunk_and_slices():
    analysis, pruned = check(CatSplit(), torch.randn(2, 3, 5, 5))
    assert pruned.a.out_channels == 2 and pruned.b.out_channels == 3 and pruned.c.in_channels == 5
    assert any("split sizes" in c for g in analysis.groups for c in g.constants)


class FlattenHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = h.view(h.size(0), 6, 16).reshape(x.shape[0], -1)  # a constant 6 that slimming rewrites
        return self.out(torch.relu(self.fc(h)))


def test_flatten_view_reshape_map_channels_to_feature_blocks():
    analysis, pruned = check(FlattenHead(), torch.randn(2, 3, 6, 6))
    conv_group = next(g for g in prunable(analysis) if g.units == 6)
    fc = next(i for n, d, i in conv_group.slices if n == "fc.weight")
    assert fc.shape == (6, 16) and fc[1].tolist() == list(range(16, 32))
    assert pruned.fc.in_features == 3 * 16


class Permutes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.lin = nn.Linear(8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.conv(x).permute(0, 2, 3, 1)  # channels last
        h = torch.relu(self.lin(h)).transpose(1, 3).transpose(2, 3)
        return self.out(h)


def test_permute_and_transpose():
    analysis, pruned = check(Permutes(), torch.randn(2, 3, 4, 5), min_groups=2)
    assert pruned.lin.in_features == 4 and pruned.lin.out_features == 4


class Shuffle(nn.Module):
    """ShuffleNetV2-style unit: split, branch, cat, channel shuffle by view/transpose/view."""

    def __init__(self, module_shuffle: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.branch = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
                                    nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1))
        self.shuffle = nn.ChannelShuffle(2) if module_shuffle else None
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        if self.shuffle is not None:
            x = self.shuffle(x)
        else:
            n, c, h, w = x.size()
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.out(x)


@pytest.mark.parametrize("module_shuffle", [False, True])
def test_channel_shuffle(module_shuffle):
    analysis, pruned = check(Shuffle(module_shuffle), torch.randn(2, 3, 5, 5))
    # channel j of each half is one unit: pass-through half and branch output shrink together
    assert sorted(g.units for g in prunable(analysis)) == [4, 4, 6]
    assert pruned.get_submodule("branch.0").out_channels == 3 and pruned.get_submodule("branch.5").out_channels == 2
    assert pruned.get_submodule("out").in_channels == 4


def test_pixel_shuffle_and_unshuffle():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(4, 6, 3, padding=1),
                          nn.PixelUnshuffle(2), nn.ReLU(), nn.Conv2d(24, 2, 1))
    analysis, pruned = check(model, torch.randn(2, 3, 6, 6), min_groups=2)
    assert sorted(g.units for g in prunable(analysis)) == [4, 6]  # blocks of 4 channels, and 6 channels
    assert modules(pruned, nn.Conv2d)[0].out_channels == 8 and modules(pruned, nn.Conv2d)[2].in_channels == 12


def test_pooling_and_adaptive_pooling():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 1), nn.AvgPool2d(2),
                          nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    analysis, pruned = check(model, torch.randn(2, 3, 10, 10), min_groups=2)
    assert pruned.get_submodule("8").in_features == 4


def test_einsum_and_matmul():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 6)
            self.k = nn.Linear(4, 6)
            self.v = nn.Linear(4, 8)
            self.o = nn.Linear(8, 4)

        def forward(self, x):
            a = torch.einsum("bid,bjd->bij", self.q(x), self.k(x))
            return self.o(a @ self.v(x))

    analysis, pruned = check(Mix(), torch.randn(2, 5, 4), min_groups=2)
    assert pruned.q.out_features == pruned.k.out_features == 3


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_prunes_whole_heads(batch_first):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = self.inp(x)
            y, _ = self.attn(h, h, h, need_weights=False)
            return self.out(y + h)

    x = torch.randn(2, 7, 5) if batch_first else torch.randn(7, 2, 5)
    analysis, pruned = check(Block(), x, min_groups=2)
    assert sorted(g.units for g in prunable(analysis)) == [4, 16]  # heads, and the residual stream
    heads = next(g for g in prunable(analysis) if g.units == 4)
    assert {(n, tuple(i.shape)) for n, _, i in heads.slices} >= {("attn.in_proj_weight", (4, 12)),
                                                                 ("attn.out_proj.weight", (4, 4))}
    assert pruned.attn.in_proj_weight.shape == (3 * 8, 8) and pruned.attn.num_heads == 2
    code = pruned.code
    assert "scaled_dot_product_attention" in code and ", 2, 4)" in code  # view(.., heads=2, head_dim=4)


def test_attention_with_mask_is_left_whole_and_frozen():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x, mask):
            y, w = self.attn(x, x, x, attn_mask=mask)
            return self.out(y) + w.sum()

    model = Block().eval()
    analysis = analyze(model, (torch.randn(2, 4, 8), torch.zeros(4, 4, dtype=torch.bool)))
    assert not prunable(analysis)


def test_torchvision_vit_heads_and_mlp():
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3)
    analysis, pruned = check(model, torch.randn(2, 3, 16, 16), min_groups=4)
    assert sorted(g.units for g in prunable(analysis)) == [4, 4, 16, 32, 32]  # 16: the hidden width
    assert pruned.encoder.layers.encoder_layer_0.self_attention.num_heads == 2


def test_torchvision_swin_heads_and_mlp():
    model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                               window_size=[2, 2], num_classes=3)
    analysis, pruned = check(model, torch.randn(2, 3, 16, 16), min_groups=4)
    assert sorted(g.units for g in prunable(analysis)) == [2, 4, 16, 32, 64, 128]  # 16, 32: stage widths
    # the slimmed graph calls the vendored copy (which takes the new head count), not torchvision's
    assert "fxmeta_analysis_rules_attention_shifted_window_attention" in pruned.code
    assert "torchvision_models_swin_transformer_shifted_window_attention" not in pruned.code


def test_torchvision_swin_v2_logit_scale_and_position_mlp():
    model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[4],
                                               window_size=[2, 2], num_classes=3,
                                               block=torchvision.models.swin_transformer.SwinTransformerBlockV2,
                                               downsample_layer=torchvision.models.swin_transformer.PatchMergingV2)
    analysis, pruned = check(model, torch.randn(2, 3, 8, 8), min_groups=2)
    heads = [g for g in prunable(analysis) if g.units == 4]
    assert heads and any(n.endswith("logit_scale") for n, _, _ in heads[0].slices)


# --------------------------------------------------------------------------- unknown ops


@torch.fx.wrap
def swish_like(x):
    return x * torch.sigmoid(x)


@torch.fx.wrap
def roll_channels(x):
    return torch.roll(x, 1, dims=1)


class WithSwish(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(swish_like(self.a(x)))


class WithRoll(WithSwish):
    def forward(self, x):
        return self.b(roll_channels(self.a(x)))


def test_unknown_elementwise_function_is_proven_by_probe():
    analysis, _ = check(WithSwish(), torch.randn(2, 3, 5, 5))
    assert analysis.probed == {"swish_like": "index map proven by probe"}


def test_unknown_channel_mixing_function_is_frozen():
    model = WithRoll().eval()
    analysis = analyze(model, torch.randn(2, 3, 5, 5))
    assert not prunable(analysis)
    assert "probe failed" in analysis.frozen_reasons["roll_channels"] or "mixes" in analysis.frozen_reasons[
        "roll_channels"]


class Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent: becomes an automatic leaf
            return x * 2
        return x


def test_automatic_leaf_module_is_frozen():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), Untraceable(), nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    analysis = analyze(model.eval(), torch.randn(2, 3, 5, 5))
    assert "1" in analysis.gm.meta["fxmeta.auto_leaves"]
    assert [g.units for g in prunable(analysis)] == [4]  # only the width after the leaf is free
    assert analysis.frozen_reasons["_1"] == "automatic leaf module"


@pytest.mark.parametrize("op", ["softmax", "mean", "sum"])
def test_reductions_over_channels(op):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            h = self.a(x)
            if op == "softmax":
                g = F.softmax(h, dim=1)
            elif op == "mean":
                g = h.mean(1, keepdim=True)
            else:
                g = h.sum(1, keepdim=True)
            return self.b(h * g)

    analysis = analyze(Net().eval(), torch.randn(2, 3, 4, 4))
    # softmax depends on every channel; a sum does not, and a mean is a statistic over the kept ones
    assert bool(prunable(analysis)) == (op != "softmax")
    if op != "softmax":
        check(Net(), torch.randn(2, 3, 4, 4))


def test_rule_table_is_extended_in_one_line():
    from fxmeta.analysis.rules.elementwise import elementwise
    from fxmeta.analysis.rules.table import RULES, RuleTable

    calls = []

    def counted(ctx, node):
        calls.append(node.name)
        return elementwise(ctx, node)

    model, x = WrappedAct().eval(), torch.randn(1, 3, 2, 2)
    without = analyze(model, x)
    assert list(without.probed.values()) == ["index map proven by probe"]  # unknown op: probed
    table = RULES.with_rules({swish_leaf: counted})
    assert isinstance(table, RuleTable) and swish_leaf in table and swish_leaf not in RULES
    assert (RULES + {swish_leaf: counted})[swish_leaf] is counted
    with pytest.raises(TypeError):
        RULES[swish_leaf] = counted  # the default table is immutable
    analysis = analyze(model, x, rules=table)
    assert calls == ["swish_leaf"] and analysis.probed == {}
    assert prunable(analysis)
    calls.clear()
    from fxmeta.pruning import prune

    assert prune(model, x, speedup=1.2, rules={swish_leaf: counted}).speedup >= 1.2  # extra rules, one call
    assert calls and swish_leaf not in RULES


class Conv1DMLP(nn.Module):
    """GPT-2's Conv1D: the weight is stored (in, out) and called through torch.addmm."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 16)), nn.Parameter(torch.randn(16))
        self.w2, self.b2 = nn.Parameter(torch.randn(16, 4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        return torch.addmm(self.b2, torch.relu(torch.addmm(self.b1, x, self.w1)), self.w2)


def test_addmm_with_a_plain_weight_is_a_linear_layer():
    analysis, pruned = check(Conv1DMLP(), torch.randn(5, 8))
    assert [g.units for g in prunable(analysis)] == [16]
    assert pruned.w1.shape == (8, 8) and pruned.w2.shape == (8, 4)


class MaskedHeads(nn.Module):
    """Attention with a causal mask broadcast over batch and heads, as Hugging Face models pass it."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.register_buffer("mask", torch.triu(torch.full((6, 6), float("-inf")), 1)[None, None])

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def test_a_mask_broadcast_over_heads_leaves_heads_prunable():
    analysis, pruned = check(MaskedHeads(), torch.randn(2, 6, 16))
    assert [g.units for g in prunable(analysis)] == [4]
    assert pruned.qkv.weight.shape == (24, 16)
