"""What a compensation's refit reads: drawn rows, recorded original outputs, the slim network's weights."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fxmeta.analysis.channels import analyze
from fxmeta.pruning import compensation, targets
from fxmeta.pruning.calibration import Calibration
from fxmeta.pruning.compensation import compensate
from fxmeta.pruning.importance import activation_importance
from fxmeta.pruning.selfcheck import self_check
from fxmeta.pruning.slimming import slim, write_back
from fxmeta.pruning.targets import TargetRecorder, Targets, input_rows, output_rows, row_count


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 4, 3, padding=1),
    nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
    nn.Conv2d(4, 6, 3, groups=2),
    nn.Conv2d(3, 5, 1, stride=2),
    nn.Conv1d(3, 4, 5, stride=2, padding=2),
    nn.Linear(5, 4),
], ids=["same", "strided-dilated", "grouped", "pointwise-strided", "conv1d", "linear"])
def test_drawn_rows_are_the_rows_of_the_whole_matrix(conv):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 5) if isinstance(conv, nn.Linear) else \
        torch.randn(3, conv.in_channels, 9) if isinstance(conv, nn.Conv1d) else torch.randn(3, conv.in_channels, 9, 8)
    if isinstance(conv, nn.Linear):
        x = torch.randn(3, 7, 5)
    y = conv(x)
    full_in, full_out = input_rows(conv, x), output_rows(conv, y)
    assert len(full_in) == len(full_out) == row_count(conv, y)
    if not isinstance(conv, nn.Linear) and conv.groups == 1:  # the unfolded input times the weight is the output
        bias = conv.bias.detach()
        assert torch.allclose(full_in @ conv.weight.detach().reshape(len(bias), -1).t() + bias, full_out, atol=1e-5)
    rows = torch.tensor([0, 3, len(full_in) - 1, 5, 11])
    channels = torch.tensor([0, 2])
    assert torch.equal(input_rows(conv, x, rows), full_in[rows])
    assert torch.equal(output_rows(conv, y, rows), full_out[rows])
    k = 1 if isinstance(conv, nn.Linear) else conv.weight[0, 0].numel()
    cols = (channels[:, None] * k + torch.arange(k)).reshape(-1)
    assert torch.equal(input_rows(conv, x, rows, channels), full_in[rows][:, cols])
    assert torch.equal(input_rows(conv, x, None, channels), full_in[:, cols])


def test_a_layer_draws_the_same_rows_wherever_it_is_met(monkeypatch):
    monkeypatch.setattr(targets, "MIN_ROWS", 50)
    monkeypatch.setattr(targets, "ROWS_PER_FEATURE", 1)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    ys = [conv(torch.randn(4, 2, 6, 6)) for _ in range(3)]  # 432 rows, 50 drawn
    whole = Targets.of("layer", conv, ys, means=True)
    recorder = TargetRecorder(samples=12, means=True)
    for y in ys:
        recorder.add("layer", conv, y)
    recorder.finish()
    piecewise = recorder.get("layer")
    assert whole.pick is not None and len(whole.pick) == 50
    assert torch.equal(whole.pick, piecewise.pick)
    assert all(torch.equal(a, b) for a, b in zip(whole.parts, piecewise.parts))
    everything = torch.cat([output_rows(conv, y) for y in ys])
    assert torch.equal(torch.cat(whole.parts), everything[whole.pick])
    assert torch.allclose(whole.mean, everything.double().mean(0))
    assert not torch.equal(Targets.of("another layer", conv, ys, means=False).pick, whole.pick)


def test_the_recorder_gives_up_past_its_budget_or_on_pieces_of_unequal_shapes():
    conv = nn.Conv2d(2, 3, 1)
    over = TargetRecorder(samples=2, budget=100)
    over.add("layer", conv, conv(torch.randn(2, 2, 8, 8)))  # 128 rows x 3 channels x 4 bytes
    over.finish()
    assert not over.usable and over.get("layer") is None
    unequal = TargetRecorder(samples=4)
    unequal.add("layer", conv, conv(torch.randn(2, 2, 4, 4)))
    unequal.add("layer", conv, conv(torch.randn(2, 2, 5, 5)))
    unequal.finish()
    assert not unequal.usable


def test_the_blocked_normal_equations_equal_the_full_product(monkeypatch):
    monkeypatch.setattr(compensation, "GRAM_BLOCK", 8)
    a = torch.randn(2, 30, 21)
    gram = torch.zeros(2, 21, 21)
    compensation._add_gram(gram, a)
    compensation._add_gram(gram, a)
    assert torch.allclose(compensation._symmetric(gram), 2 * a.transpose(1, 2) @ a, atol=1e-4)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.b(self.a(x)).mean((2, 3)))


def _removed(analysis, seed=0):
    gen = torch.Generator().manual_seed(seed)
    removed = torch.zeros(analysis.uf.size, dtype=torch.bool)
    for g in analysis.groups:
        if g.prunable:
            removed[g.roots[torch.randperm(g.units, generator=gen)[: g.units // 3]]] = True
    return removed


@pytest.mark.parametrize("mode", ["bias", "lstsq"])
def test_recorded_targets_give_the_weights_the_original_network_in_lockstep_gives(mode):
    torch.manual_seed(0)
    model = _Net().eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    results = []
    for record in (False, True):
        analysis = analyze(copy.deepcopy(model), batches[0][:1])  # compensation changes the weights
        removed = _removed(analysis)
        recorder = TargetRecorder(12, means=mode == "bias") if record else None
        activation_importance(analysis, Calibration(batches), recorder)
        assert record is (recorder is not None and recorder.usable)
        done = compensate(analysis, removed, Calibration(batches), mode, recorded=recorder)
        assert done.changed == ["b.0", "head"]
        pruned = slim(analysis, removed)
        self_check(analysis, pruned, removed, shapes_checked=True)  # the written-back weights are the slim ones
        results.append({k: v.clone() for k, v in analysis.gm.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-5) for k in results[0])
    assert not torch.equal(results[0]["b.0.weight"], model.b[0].weight.detach()) or mode == "bias"


def test_write_back_puts_the_slim_weights_into_the_kept_entries():
    model = _Net().eval()
    analysis = analyze(copy.deepcopy(model), torch.randn(1, 3, 8, 8))
    removed = _removed(analysis, seed=1)
    small = slim(analysis, removed)
    conv, bn = (lambda gm: (gm.get_submodule("b.0"), gm.get_submodule("b.1")))(small)
    before = analysis.gm.get_submodule("b.0").weight.detach().clone()
    with torch.no_grad():
        conv.weight.add_(1.0)
        bn.running_mean.add_(2.0)
    write_back(analysis, removed, small, ["b.0.weight", "b.1.running_mean"])
    again = slim(analysis, removed)
    assert torch.equal(again.get_submodule("b.0").weight, conv.weight)
    assert torch.equal(again.get_submodule("b.1").running_mean, bn.running_mean)
    changed = analysis.gm.get_submodule("b.0").weight.detach() != before
    assert int(changed.sum()) == conv.weight.numel() < before.numel()  # only the kept entries moved
