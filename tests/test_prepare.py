"""The prunability objective and the prepare stage (fxmeta.masking, fxmeta.prepare)."""
import copy

import pytest
import torch
from torch import nn

from fxmeta.analysis.channels import analyze
from fxmeta.errors import SpecError
from fxmeta.models import get_model
from fxmeta.pruning.masking import MaskedNetwork, calibrate_target, removal
from fxmeta.pruning.plan import removed_from_plan
from fxmeta.pruning.pruner import prune
from fxmeta.pruning.slimming import slim
from fxmeta.training.data import load_data, make_loaders
from fxmeta.training.loop import TrainConfig, evaluate, recalibrate_bn, train
from fxmeta.training.prepare import PrepareConfig, PrunabilityObjective, prepare

from helpers import randomize_bn

torch.set_num_threads(1)


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(get_model("resnet20", num_classes=10, in_channels=1), seed)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, lr=0.01, batch_size=128, device="cpu", progress=False, seed=3), **kw})


def _bn_stats(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_removal_is_the_prunes_selection():
    model = _resnet()
    x = torch.randn(1, 1, 8, 8)
    analysis = analyze(model, x)
    for speedup in (2.0, 4.0):
        target = calibrate_target(analysis, speedup)
        got = removal(analysis, speedup, flops_target=target)
        want = removed_from_plan(analysis, prune(model, x, speedup).plan)
        assert torch.equal(got, want)


def test_masked_network_is_the_pruned_network_on_batch_statistics():
    model = _resnet().train()
    x = torch.randn(1, 1, 8, 8)
    analysis = analyze(model, x)
    removed = removal(analysis, 3.0, flops_target=calibrate_target(analysis, 3.0))
    assert 0 < int(removed.sum())
    masked = MaskedNetwork(analysis)
    masked.set_removed(removed)
    batch = torch.randn(64, 1, 8, 8)
    labels = torch.randint(0, 10, (64,))
    before = _bn_stats(model)
    out = masked(batch)
    # the masked pass neither reads nor writes running statistics
    assert all(torch.equal(before[k], v) for k, v in _bn_stats(model).items())
    pruned = slim(analysis, removed)
    exact = pruned.train()(batch)  # BatchNorm on the same batch's statistics
    torch.testing.assert_close(out, exact, atol=1e-5, rtol=1e-5)
    # ...which is the pruned network with its BatchNorm recalibrated on that batch (up to
    # the unbiased variance BatchNorm stores)
    recalibrate_bn(pruned, [(batch, labels)], batches=1)
    loss_masked = nn.functional.cross_entropy(out, labels)
    loss_pruned = nn.functional.cross_entropy(pruned.eval()(batch), labels)
    assert loss_masked.item() == pytest.approx(loss_pruned.item(), rel=2e-2)
    # and it differs from the unmasked network: the mask does something
    assert not torch.allclose(out, model(batch), atol=1e-3)


def test_masked_network_is_differentiable_in_the_models_parameters():
    model = _resnet()
    analysis = analyze(model, torch.randn(1, 1, 8, 8))
    masked = MaskedNetwork(analysis)
    removed = removal(analysis, 2.0)
    masked.set_removed(removed)
    masked(torch.randn(16, 1, 8, 8)).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    # removed output channels of the stem get no gradient through the masked pass
    group = next(g for g in analysis.groups if any(n == "conv1.weight" and d == 0 for n, d, _ in g.slices))
    _, _, index = next(s for s in group.slices if s[0] == "conv1.weight" and s[1] == 0)
    gone = removed[group.roots]
    if bool(gone.any()):
        assert grads["conv1.weight"][index[gone].flatten()].abs().max() == 0
    # generated parameters (a metanetwork's output) go through functional_call by the model's names
    params = {n: p.detach() * 2 for n, p in masked.named_parameters()}
    assert set(params) <= {f"gm.{n}" for n, _ in model.named_parameters()}


def test_prepare_makes_the_prune_cheap(digits):
    """The objective's point: accuracy right after a prune (with recalibration) goes up."""
    base = _resnet(1)
    base = train(base, digits, _config(epochs=4, lr=0.1)).model.cpu().eval()
    x = torch.randn(1, 1, 8, 8)
    loaders = make_loaders(digits, 128, seed=0)

    def pruned_acc(model: nn.Module) -> float:
        pruned = prune(model.eval(), x, 3.0).module
        recalibrate_bn(pruned, loaders.train, 5)
        return evaluate(pruned, loaders.val)["acc"]

    plain = train(copy.deepcopy(base), digits, _config(epochs=3)).model.cpu()
    prepared = prepare(copy.deepcopy(base), x, digits, _config(epochs=3), [3.0]).model.cpu()
    assert pruned_acc(prepared) > pruned_acc(plain) + 0.15


def test_prepare_epoch_running_statistics_are_a_plain_epochs(digits):
    # lr 0: the weights stay, so both runs see the same network and the same batches; only
    # the plain pass may move the running statistics
    a, b = _resnet(2), _resnet(2)
    train(a, digits, _config(epochs=1, lr=0.0))
    prepare(b, torch.randn(1, 1, 8, 8), digits, _config(epochs=1, lr=0.0), [2.0])
    sa, sb = _bn_stats(a), _bn_stats(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=1e-6)
    assert not torch.equal(sa["bn1.running_mean"], _bn_stats(_resnet(2))["bn1.running_mean"])


class _Stop(Exception):
    pass


def test_resume_mid_prepare_gives_the_uninterrupted_weights(digits, tmp_path, monkeypatch):
    x = torch.randn(1, 1, 8, 8)
    full = prepare(_resnet(3), x, digits, _config(epochs=2, checkpoint_dir=str(tmp_path / "a")), [2.0, 4.0],
                   mask_every=3).model.state_dict()
    original = PrunabilityObjective.begin_epoch

    def stop_at_one(self, epoch):
        if epoch == 1:
            raise _Stop
        original(self, epoch)

    monkeypatch.setattr(PrunabilityObjective, "begin_epoch", stop_at_one)
    config = _config(epochs=2, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(_Stop):
        prepare(_resnet(3), x, digits, config, [2.0, 4.0], mask_every=3)
    monkeypatch.setattr(PrunabilityObjective, "begin_epoch", original)
    resumed = prepare(_resnet(3), x, digits, _config(epochs=2, checkpoint_dir=str(tmp_path / "b"), resume=True),
                      [2.0, 4.0], mask_every=3).model.state_dict()
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_masks_follow_the_weights_on_schedule(digits):
    model = _resnet(4)
    objective = PrunabilityObjective(model, torch.randn(1, 1, 8, 8), [2.0], mask_every=2)
    train(model, digits, _config(epochs=1, lr=0.5), objective)
    steps = len(make_loaders(digits, 128).train)
    assert objective.mask_updates == 1 + (steps - 1) // 2


def test_graded_decay_adds_coefficient_times_weight_growing_to_16x_on_the_weakest_unit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():  # hidden unit u's weights scaled by u + 1: unit 0 the weakest, unit 5 the strongest
        scale = torch.arange(1.0, 7.0)
        model[0].weight.copy_(torch.ones(6, 4) * scale[:, None])
        model[0].bias.copy_(scale)
        model[2].weight.copy_(torch.ones(3, 6) * scale)
    objective = PrunabilityObjective(model, torch.randn(2, 4), [1.5], sparsity=0.01)
    objective.update_masks()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    objective.after_backward()
    coef = 0.01 * 16.0 ** ((5 - torch.arange(6.0)) / 5)  # 16x on the weakest, 1x on the strongest
    torch.testing.assert_close(model[0].weight.grad, coef[:, None] * model[0].weight.detach())
    torch.testing.assert_close(model[0].bias.grad, coef * model[0].bias.detach())
    torch.testing.assert_close(model[2].weight.grad, coef * model[2].weight.detach())
    assert not model[2].bias.grad.any()  # the output is never pruned, so never decayed


def test_prepare_without_sparsity_adds_no_gradient(digits):
    model = _resnet(8)
    objective = PrunabilityObjective(model, torch.randn(1, 1, 8, 8), [2.0])
    objective.update_masks()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    objective.after_backward()
    assert all(not p.grad.any() for p in model.parameters())


def test_sparsity_shrinks_the_channels_the_prune_removes(digits):
    x = torch.randn(1, 1, 8, 8)

    def removed_share(sparsity: float) -> float:
        model = _resnet(9)
        prepare(model, x, digits, _config(epochs=2, lr=0.05), [2.0], sparsity=sparsity)
        objective = PrunabilityObjective(model.cpu(), x, [2.0])
        removed = objective.update_masks()[0]
        params = dict(objective.analysis.gm.named_parameters(remove_duplicate=False))
        gone = total = 0.0
        for group in (g for g in objective.analysis.groups if g.prunable):
            for name, dim, index in group.slices:
                sq = params[name].detach().movedim(dim, 0)[index].pow(2).flatten(1).sum(1)
                gone += float(sq[removed[group.roots]].sum())
                total += float(sq.sum())
        return gone / total

    assert removed_share(0.05) < 0.5 * removed_share(0.0)


def test_prepare_config_rejects_bad_values():
    for bad in (dict(epochs=-1), dict(speedups=(0.5,)), dict(weight=float("nan")), dict(mask_every=-2),
                dict(lr=0.0), dict(sparsity=-1e-3), dict(sparsity=float("inf"))):
        with pytest.raises(SpecError):
            PrepareConfig(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prepare_on_cuda_with_amp(digits):
    prepared = prepare(_resnet(5), torch.randn(1, 1, 8, 8), digits, _config(epochs=1, device="cuda", amp="bf16"),
                       [2.0])
    assert next(prepared.model.parameters()).is_cuda and prepared.history[0]["train_loss"] > 0


# ------------------------------------------------------------------------------ DDP


def _ddp_worker(out: str) -> None:
    """Run under torchrun: prepare (with the graded decay, added after DDP's all-reduce) on 2 CPU ranks,
    save each rank's final weights."""
    import os

    torch.set_num_threads(1)
    result = prepare(_resnet(6), torch.randn(1, 1, 8, 8), load_data("digits"), _config(epochs=2, batch_size=32),
                     [2.0, 3.0], mask_every=4, sparsity=0.01)
    torch.save({"state": result.model.state_dict(), "history": result.history},
               os.path.join(out, f"rank{os.environ['RANK']}.pt"))


@pytest.mark.slow
def test_prepare_under_torchrun_two_cpu_ranks(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--ddp-worker", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # the ranks drew the same masks and decay coefficients (same weights, same generator): weights stay identical
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert [h["samples"] for h in r0["history"]] == [2 * 16 * 32] * 2


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--ddp-worker"]:
        _ddp_worker(sys.argv[2])


def test_prepare_pass_before_remove_channels(digits):
    from torch.fx.passes.infra.pass_manager import PassManager

    from fxmeta.tracing import trace
    from passes import PreparePass, RemoveChannelsPass

    x = torch.randn(1, 1, 8, 8)
    gm = trace(_resnet(7), x)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    result = PassManager([PreparePass(digits, [2.0], _config(epochs=1), example_input=x),
                          RemoveChannelsPass(speedup=2.0, example_input=x)])(gm)
    assert result.modified and result.graph_module.meta["fxmeta.speedup"] >= 2.0
    assert any(not torch.equal(before[k], v) for k, v in gm.state_dict().items())  # trained in place


def test_after_prepare_pass_a_calibrated_removal_prunes_what_was_prepared_for(digits):
    """PreparePass trains for a weight-importance prune; a RemoveChannelsPass given calibration data and
    the same spec then removes by those weights-only settings (as transform does), not the calibrated
    defaults; the IR lowered before training is dropped; the caller's train flags come back."""
    from torch.fx.passes.infra.pass_manager import PassManager

    from fxmeta.pruning.spec import PruneSpec
    from fxmeta.tracing import trace
    from fxmeta.training.data import calibration_set
    from passes import LowerPass, PreparePass, RemoveChannelsPass

    x = torch.randn(1, 1, 8, 8)
    spec = PruneSpec(2.0)
    gm = trace(_resnet(7), x)
    prepared = PassManager([LowerPass(x, spec=spec), PreparePass(digits, config=_config(epochs=1), spec=spec,
                                                                 example_input=x)])(gm).graph_module
    assert "fxmeta.ir" not in prepared.meta and prepared.meta["fxmeta.prepared"]
    prepared.train()
    out = RemoveChannelsPass(spec=spec, calibration=calibration_set(digits.train, 2, 64))(prepared).graph_module
    plan = out.meta["fxmeta.plan"]
    assert (plan["importance"], plan["allocation"], plan["compensate"]) == ("l2", "global", "none")
    assert all(m.training for m in prepared.modules()) and "fxmeta.prepared" not in out.meta


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "shufflenet_v2_x0_5", "regnet_y_400mf",
                                  "efficientnet_b0", "convnext_tiny", "vit_b_16"])
def test_masked_network_equals_the_pruned_network_on_torchvision(name):
    import torchvision

    torch.manual_seed(0)
    size = 224 if name == "vit_b_16" else 64
    model = randomize_bn(torchvision.models.get_model(name, num_classes=10)).eval()  # no dropout / drop-path
    x = torch.randn(1, 3, size, size)
    analysis = analyze(model, x)
    removed = removal(analysis, 2.0, flops_target=calibrate_target(analysis, 2.0))
    masked = MaskedNetwork(analysis)
    masked.set_removed(removed)
    pruned = slim(analysis, removed)
    for m in pruned.modules():  # the masked network's BatchNorm runs on batch statistics: so does this one
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    batch = torch.randn(4, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(masked(batch), pruned(batch), atol=1e-4, rtol=1e-3)
