"""Pruning that reads data: calibration draws, Taylor / activation importance, weight compensation."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

import fxmeta
from fxmeta.analysis.channels import analyze
from fxmeta.errors import PruningError, SpecError
from fxmeta.pruning.calibration import Calibration, default_loss
from fxmeta.pruning.importance import activation_importance, taylor_importance
from fxmeta.pruning.spec import CALIBRATED, PruneSpec, default_settings
from fxmeta.training.data import DataSplits, calibration_set, load_data


def _labelled(n: int, shape: tuple, classes: int = 3, batches: int = 2, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen))
            for _ in range(batches)]


# ------------------------------------------------------------------------------ importance


def test_taylor_importance_equals_a_hand_computation_on_a_two_layer_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    batches = _labelled(8, (5,))
    analysis = analyze(model, batches[0][0][:1])
    (group,) = [g for g in analysis.groups if g.prunable]
    got = taylor_importance(analysis, Calibration(batches))(group, {})
    # by hand: per batch, the loss change of removing hidden unit u to first order, the sum of w * g
    # over its three slices (fc1's row, fc1's bias entry, fc2's column); the mean of its square
    want = torch.zeros(4, dtype=torch.float64)
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        w1, b1, w2, _ = model.parameters()
        g1, gb1, g2, _ = torch.autograd.grad(loss, list(model.parameters()))
        change = (w1 * g1).sum(1) + b1 * gb1 + (w2 * g2).sum(0)
        want += change.double().pow(2)
    want /= len(batches)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # the model's own gradients are untouched


def test_activation_importance_is_input_rms_times_the_reading_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    batches = _labelled(16, (5,))
    analysis = analyze(model, batches[0][0][:1])
    (group,) = [g for g in analysis.groups if g.prunable]
    got = activation_importance(analysis, Calibration(batches))(group, {})
    h = torch.cat([torch.relu(model[0](x)) for x, _ in batches]).double()
    want = h.pow(2).mean(0).sqrt() * model[2].weight.detach().double().norm(dim=0)
    assert torch.allclose(got, want, rtol=1e-6)


def test_data_importance_decides_what_goes_where_the_weights_cannot_tell():
    """Two hidden units with equal weights, one of which is never active on the data: l2 cannot tell
    them apart, activation and Taylor remove the dead one."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    x = torch.rand(32, 2)  # first input >= 0: unit 1 is dead
    batches = [(x, (x[:, 0] > 0.5).long())]
    for importance in ("activation", "taylor"):
        plan = fxmeta.prune(model, x[:1], speedup=1.2, importance=importance, calibration=batches, min_keep=0.5).plan
        assert plan["groups"][0]["removed"] == [1], importance


# ---------------------------------------------------------------------------- compensation


def _copy_chain(conv: bool) -> tuple[nn.Module, torch.Tensor]:
    """A chain whose hidden unit 2 computes exactly what unit 0 computes."""
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                              nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        first, norm, x = model[0], model[1], torch.randn(16, 2, 6, 6)
        with torch.no_grad():
            for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                t.uniform_(0.5, 1.5)
                t[2] = t[0]
    else:
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        first, x = model[0], torch.randn(32, 4)
        with torch.no_grad():
            first.bias[2] = first.bias[0]
    with torch.no_grad():
        first.weight[2] = first.weight[0]
    return model.eval(), x


def _unit_two_first(group, params):
    scores = torch.arange(group.units, 0, -1, dtype=torch.float64)
    scores[2] = 0.0
    return scores


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_lstsq_restores_the_output_exactly_when_the_removed_unit_copies_a_kept_one(conv):
    model, x = _copy_chain(conv)
    calibration = [x]
    result = fxmeta.prune(model, x[:1], speedup=1.1, importance=_unit_two_first, compensate="lstsq", ridge=0.0,
                          calibration=calibration, min_keep=0.5, allocation="global")
    assert [(e["key"].split(".")[0], e["removed"]) for e in result.plan["groups"]] == [("0", [2])]  # the copy
    with torch.no_grad():
        want, got = model(x), result.module(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    plain = fxmeta.prune(model, x[:1], speedup=1.1, importance=_unit_two_first, min_keep=0.5).module
    with torch.no_grad():
        assert not torch.allclose(plain(x), want, atol=1e-2)  # without compensation the output changes
    assert result.plan["compensation"]["changed"] == ["3" if conv else "2"]


def test_bias_compensation_restores_the_mean_output():
    model, x = _copy_chain(conv=False)
    result = fxmeta.prune(model, x[:1], speedup=1.1, importance=_unit_two_first, compensate="bias",
                          calibration=[x], min_keep=0.5)
    with torch.no_grad():
        want, got, plain = model(x), result.module(x), fxmeta.prune(
            model, x[:1], speedup=1.1, importance=_unit_two_first, min_keep=0.5).module(x)
    assert torch.allclose(got.mean(0), want.mean(0), atol=1e-5)
    assert not torch.allclose(plain.mean(0), want.mean(0), atol=1e-3)


class _Mixed(nn.Module):
    """Grouped and depthwise convs, a Conv1d branch, BatchNorm and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                       nn.ReLU(), nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.seq = nn.Sequential(nn.Conv1d(24, 24, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.depthwise(self.grouped(self.stem(x)))
        x = self.seq(x.flatten(2)).mean(2)
        return self.head(x)


@pytest.mark.parametrize("importance", ["l2", "taylor", "activation"])
@pytest.mark.parametrize("compensate", ["bias", "lstsq"])
def test_every_compensated_prune_passes_the_self_check(importance, compensate):
    model = _Mixed().eval()
    batches = _labelled(8, (3, 8, 8), classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fxmeta.prune(model, batches[0][0][:1], speedup=2.0, importance=importance, compensate=compensate,
                          calibration=batches)  # check=True: equals the compensated, masked original
    assert result.speedup >= 2.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's model unchanged
    done = result.plan["compensation"]
    assert done["mode"] == compensate and done["changed"] and done["samples"] == 16
    if compensate == "bias":  # the depthwise conv feeds a BatchNorm, the head has a bias: nothing is left out
        assert done["skipped"] == {}


def test_a_layer_that_cannot_be_compensated_is_named_in_the_plan():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)).eval()
    batches = _labelled(16, (6,))
    plan = fxmeta.prune(model, batches[0][0][:1], speedup=1.5, compensate="bias", calibration=batches).plan
    assert "no bias to shift" in plan["compensation"]["skipped"]["2"]


def test_gpt2s_captured_addmm_layers_are_scored_and_refit_like_linears():
    pytest.importorskip("transformers", minversion="5")
    from hf_models import make

    model, x = make("gpt2")  # captured by torch.export: its Conv1D layers become torch.addmm(bias, x, weight)
    ids = [torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plain = fxmeta.prune(model, x, speedup=1.3, compensate="none", calibration=ids).module
    for compensate in ("bias", "lstsq"):  # the self-check compares with the compensated, masked original
        result = fxmeta.prune(model, x, speedup=1.3, compensate=compensate, calibration=ids)
        done = result.plan["compensation"]
        assert "transformer.h.0.mlp.c_proj" in done["changed"] and "transformer.h.0.attn.c_attn" in done["changed"]
        assert type(result.module) is type(model)
        # the refit reached the stored (in, out) weights through their transposed view
        c_proj, unchanged = result.module.transformer.h[0].mlp.c_proj, plain.transformer.h[0].mlp.c_proj
        assert c_proj.weight.shape == unchanged.weight.shape
        assert not torch.equal(c_proj.bias if compensate == "bias" else c_proj.weight,
                               unchanged.bias if compensate == "bias" else unchanged.weight)


def test_a_captured_addmm_is_scored_by_its_input_and_recorded_for_the_refit():
    from fxmeta.pruning.targets import TargetRecorder

    class Addmm(nn.Module):  # a Linear, then a layer stored as (in, out) like GPT-2's Conv1D
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.w, self.b = nn.Parameter(torch.randn(8, 3)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            return torch.addmm(self.b, torch.relu(self.fc(x)), self.w)

    model, batches = Addmm().eval(), _labelled(16, (6,))
    analysis = analyze(model, batches[0][0][:1])
    record = TargetRecorder(32)
    score = activation_importance(analysis, Calibration(batches), record)
    group = next(g for g in analysis.groups if g.prunable)
    with torch.no_grad():
        h = torch.cat([torch.relu(model.fc(x)) for x, _ in batches]).double()
    expected = h.pow(2).mean(0).sqrt() * model.w.detach().double().norm(dim=1)  # input RMS x the weights reading it
    assert torch.allclose(score(group, dict(model.named_parameters())), expected)
    assert record.usable and record.get([n for n in record.targets][0]).total == 32


def test_weights_read_outside_the_refit_layers_are_named_in_the_plan():
    class Matmul(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.shift = nn.Parameter(torch.randn(1, 8))  # added element-wise: sliced, nothing to refit
            self.w = nn.Parameter(torch.randn(8, 3))

        def forward(self, x):
            return (torch.relu(self.fc(x)) + self.shift) @ self.w

    batches = _labelled(16, (6,))
    plan = fxmeta.prune(Matmul().eval(), batches[0][0][:1], speedup=1.5, compensate="lstsq", calibration=batches).plan
    assert plan["compensation"]["skipped"] == {"w": "read by matmul, not by a Linear / Conv layer: not refit"}


def test_calibrated_prune_of_a_torchvision_model_runs_end_to_end():
    model = torchvision.models.resnet18(num_classes=10).eval()
    batches = _labelled(4, (3, 32, 32), classes=10)
    result = fxmeta.prune(model, batches[0][0][:1], speedup=2.0, calibration=batches)
    assert {k: result.plan[k] for k in CALIBRATED} == CALIBRATED
    assert result.speedup >= 2.0 and result.plan["compensation"]["changed"]


def test_calibrated_prune_of_a_hugging_face_language_model_keeps_its_class():
    pytest.importorskip("transformers", minversion="5")
    from hf_models import make

    model, x = make("llama")
    ids = [torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = fxmeta.prune(model, x, speedup=1.3, importance="taylor", compensate="lstsq", calibration=ids)
    assert type(result.module) is type(model)  # compensated weights in the model's own class
    assert result.plan["compensation"]["changed"]
    with torch.no_grad():
        assert result.module(x).logits.shape == model(x).logits.shape


def test_the_next_token_loss_is_the_default_for_token_ids_without_targets():
    ids = torch.tensor([[1, 2, 3]])
    logits = torch.randn(1, 3, 5)
    want = nn.functional.cross_entropy(logits[0, :2], ids[0, 1:])
    assert torch.allclose(default_loss({"logits": logits}, None, (ids,)), want)
    with pytest.raises(PruningError, match="no targets"):
        default_loss(torch.randn(2, 5), None, (torch.randn(2, 3),))


# ------------------------------------------------------------------------------ settings


def test_data_settings_need_calibration_and_defaults_follow_the_data():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(1, 4)
    with pytest.raises(PruningError, match="importance 'taylor' reads data"):
        fxmeta.prune(model, x, speedup=1.5, importance="taylor")
    with pytest.raises(PruningError, match="compensation 'lstsq' reads data"):
        fxmeta.prune(model, x, speedup=1.5, compensate="lstsq")
    assert fxmeta.prune(model, x, speedup=1.5).plan["importance"] == "l2"
    assert default_settings(with_data=False) == {"importance": "l2", "compensate": "none", "allocation": "global"}
    assert default_settings(with_data=True) == CALIBRATED
    assert default_settings(with_data=True, prepare=True) == default_settings(with_data=False)
    assert PruneSpec(2.0, allocation="global").resolved(with_data=True).allocation == "global"  # named: kept
    with pytest.raises(PruningError, match="unknown compensation"):
        PruneSpec(compensate="magic")
    with pytest.raises(PruningError, match="ridge must be a finite number"):
        PruneSpec(ridge=-1.0)



# ---------------------------------------------------------------------------- calibration data


def _tagged_splits() -> DataSplits:
    """digits with every training image tagged +100 in one pixel, validation and test -100."""
    digits = load_data("digits")

    def tagged(ds, value):
        x, y = ds.tensors if isinstance(ds, TensorDataset) else map(torch.stack, zip(*ds))
        x = x.clone()
        x[:, 0, 0, 0] = value
        return TensorDataset(x, torch.as_tensor(y))

    return DataSplits(tagged(digits.train, 100.0), tagged(digits.val, -100.0), tagged(digits.test, -100.0),
                      digits.num_classes, digits.in_channels, digits.input_shape, digits.description)


def test_the_calibration_draw_reads_only_the_training_split(monkeypatch):
    from fxmeta.models import get_model
    from fxmeta.pipeline import transform as pipeline
    from fxmeta.pipeline.transform import TransformConfig
    from fxmeta.training.loop import TrainConfig

    data = _tagged_splits()
    draws = calibration_set(data.train, 3, 16, seed=1)
    assert all(bool((x[:, 0, 0, 0] == 100.0).all()) for x, _ in draws)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(draws, calibration_set(data.train, 3, 16, seed=1)))
    from fxmeta.pipeline import stages

    seen = []
    real_call = stages.RemoveChannels.__call__

    def spy(self, state):
        seen.extend(self.calibration)
        return real_call(self, state)

    monkeypatch.setattr(stages.RemoveChannels, "__call__", spy)
    model = get_model("resnet20", num_classes=10, in_channels=1)
    config = TransformConfig(prune=PruneSpec(2.0), calib_batches=2, bn_batches=0,
                             finetune=TrainConfig(epochs=0, batch_size=32, device="cpu", progress=False))
    result = pipeline.transform(model, torch.randn(1, 1, 8, 8), config, data=data)
    assert len(seen) == 2 and all(bool((x[:, 0, 0, 0] == 100.0).all()) for x, _ in seen)
    assert result.plan["compensate"] == CALIBRATED["compensate"]  # data given: the calibrated defaults


def test_prune_with_data_calibrates_and_reports_accuracy(tmp_path):
    from fxmeta.cli.app import main

    out = tmp_path / "p.pt"
    log = tmp_path / "log.json"
    rc = main(["prune", "fxmeta:resnet20", "--in-channels", "1", "--data", "digits", "--speedup", "2",
               "--calib-batches", "2", "--batch-size", "32", "--bn-batches", "2", "--out", str(out)])
    assert rc == 0
    saved = torch.load(out, weights_only=True)
    plan = saved["plan"]
    assert plan["importance"] == CALIBRATED["importance"] and plan["compensate"] == CALIBRATED["compensate"]
    metrics = saved["metrics"]
    assert metrics["before"]["accuracy"] is not None and metrics["removed_accuracy"] is not None
    assert metrics["recalibrated_accuracy"] is None  # lstsq refits the layers to the stored statistics
    assert any("BatchNorm statistics kept" in n for n in metrics["notes"])
    module = fxmeta.load(str(out))
    assert module(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert not log.exists()
    json.dumps(plan)  # plain data


def test_prune_refuses_data_settings_without_data(tmp_path, capsys):
    from fxmeta.cli.app import main

    out = tmp_path / "p.pt"
    assert main(["prune", "fxmeta:resnet20", "--importance", "taylor", "--out", str(out)]) == 2
    assert "--importance taylor reads calibration data: give --data" in capsys.readouterr().err
    assert main(["prune", "fxmeta:resnet20", "--compensate", "bias", "--out", str(out)]) == 2
    assert not out.exists()


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_missing_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="Fashion-MNIST not found"):
        load_data(f"fashion-mnist:{tmp_path}")


def test_fashion_mnist_splits_when_installed():
    from fxmeta.training.data import FASHION_MNIST_DIR

    try:
        data = load_data("fashion-mnist")
    except SpecError:
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert torch.bincount(data.val.tensors[1]).tolist() == [600] * 10  # stratified


def test_a_data_importance_is_refused_where_the_network_was_made_for_a_weight_prune():
    from fxmeta.pipeline.transform import TransformConfig
    from fxmeta.training.prepare import PrepareConfig

    with pytest.raises(SpecError, match="prepare stage trains for a prune by weight importance"):
        TransformConfig(prune=PruneSpec(2.0, importance="taylor"), prepare=PrepareConfig(epochs=1))
    with pytest.raises(SpecError, match="metanetwork rewrites for a prune by weight importance"):
        TransformConfig(prune=PruneSpec(2.0, importance="activation"), metanet=lambda graph: graph)
    # named weight settings stay as named, with data or not
    spec = PruneSpec(2.0, importance="l1", compensate="bias", allocation="global-mean")
    assert spec.resolved(with_data=True) == spec == spec.resolved(with_data=False)


def test_ridge_solve_in_float32_matches_float64_and_falls_back_where_cholesky_fails():
    from fxmeta.pruning.compensation import _solve

    gen = torch.Generator().manual_seed(0)
    a, y = torch.randn(200, 30, generator=gen), torch.randn(200, 5, generator=gen)
    gram, rhs = (a.T @ a)[None], (a.T @ y)[None]
    flags = torch.ones(1, 30, dtype=torch.bool)
    fast = _solve(gram, rhs, 1e-3, flags, flags)
    exact = _solve(gram, rhs, 1e-3, flags, flags, torch.float64)
    assert fast.dtype == torch.float32 and exact.dtype == torch.float64
    torch.testing.assert_close(fast.double(), exact, rtol=1e-4, atol=1e-5)
    assert torch.equal(gram, (a.T @ a)[None])  # the caller's normal equations are left as they were
    indefinite = gram.clone()
    indefinite[0, 0, 0] = -indefinite[0, 0, 0]  # no Cholesky factor in any precision: LU solves it
    sol = _solve(indefinite, rhs, 1e-3, flags, flags)
    assert sol.dtype == torch.float64
    system = indefinite.double().clone()
    diag = system.diagonal(dim1=1, dim2=2)
    system.diagonal(dim1=1, dim2=2).add_(1e-3 * diag.mean() + 1e-12)
    torch.testing.assert_close(system @ sol, rhs.double(), rtol=1e-6, atol=1e-6)


def test_ridge_solve_in_float32_fits_as_well_as_float64_on_a_near_singular_system():
    from fxmeta.pruning.compensation import _solve

    gen = torch.Generator().manual_seed(1)
    base = torch.randn(500, 20, generator=gen)
    a = torch.cat([base, base[:, :10] + 1e-4 * torch.randn(500, 10, generator=gen)], 1)  # near-duplicate columns
    y = a @ torch.randn(30, 4, generator=gen) + 0.01 * torch.randn(500, 4, generator=gen)
    gram, rhs = (a.T @ a)[None], (a.T @ y)[None]
    flags = torch.ones(1, 30, dtype=torch.bool)
    for ridge in (1e-3, 1e-6):
        losses = [(a.double() @ _solve(gram, rhs, ridge, flags, flags, dtype)[0].double() - y.double()).pow(2).mean()
                  for dtype in (torch.float32, torch.float64)]
        assert float(losses[0]) <= 1.01 * float(losses[1]) + 1e-6
