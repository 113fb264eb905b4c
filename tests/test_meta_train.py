"""Zoo building and meta-training end to end on a tiny zoo (digits, ResNet20, one epoch each)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fxmeta.errors import FxmetaError, OutputExistsError
from fxmeta.io import load
from fxmeta.ir import lower
from fxmeta.metanet import load_metanet
from fxmeta.metatrain.loop import meta_train
from fxmeta.metatrain.zoo import build_zoo, load_zoo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    build_zoo("fxmeta:resnet20", "digits", count=3, out=folder, prune_speedup=1.3, epochs=1, finetune_epochs=0,
              val_count=1, progress=False)
    return folder


def test_zoo_members_are_pruned_saved_and_split(zoo_dir, capsys):
    zoo = load_zoo(zoo_dir)
    assert [m.split for m in zoo.members] == ["train", "train", "val"]
    assert [m.seed for m in zoo.members] == [0, 1, 2]
    for member in zoo.members:
        obj = torch.load(zoo.path(member), weights_only=True)  # the safe format
        assert obj["plan"] is not None and member.metrics["speedup"] >= 1.3
        model = load(zoo.path(member))
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    first = load(zoo.path(zoo.members[0])).state_dict()
    second = load(zoo.path(zoo.members[1])).state_dict()
    assert not torch.equal(first["conv1.weight"], second["conv1.weight"])  # different seeds
    # re-running resumes: every finished member is skipped
    build_zoo("fxmeta:resnet20", "digits", count=3, out=zoo_dir, prune_speedup=1.3, epochs=1, finetune_epochs=0,
              val_count=1, progress=True)
    assert capsys.readouterr().out.count("done, skipped") == 3
    with pytest.raises(FxmetaError, match="other settings"):
        build_zoo("fxmeta:resnet20", "digits", count=3, out=zoo_dir, prune_speedup=1.5, epochs=1,
                  finetune_epochs=0, val_count=1, progress=False)


def test_meta_training_smoke_run_checkpoints_log_and_resume(zoo_dir, tmp_path):
    out = tmp_path / "run"
    settings = dict(width=8, depth=1, ratio=0.01, batches_per_step=1, batch_size=32, speedup=1.5,
                    eval_finetune_epochs=0, progress=False)
    result = meta_train(zoo_dir, out, epochs=1, preset_name="reference", **settings)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert len(steps) == 2 and all(r["ce"] > 0 and r["penalty"] > 0 for r in steps)  # 2 training data models
    epochs = [r for r in records if "score" in r and not r.get("baseline")]
    assert len(epochs) == 1 and epochs[0]["val"][0]["speedup"] >= 1.5
    # without a finetune the score is the accuracy after the BatchNorm recalibration
    assert epochs[0]["score"] == epochs[0]["mean_recalibrated_acc"]
    assert all("recalibrated_acc" in entry and "finetuned_acc" not in entry for entry in epochs[0]["val"])
    assert any(r.get("baseline") for r in records)  # validation without the metanetwork, for comparison
    assert result.best_epoch == 1
    for name in ("best.pt", "last.pt"):
        obj = torch.load(out / name, weights_only=True)
        assert isinstance(obj, dict)
    net = load_metanet(str(out / "best.pt"))
    assert net.config.width == 8 and "conv2d+batchnorm2d" in net.config.node_kinds
    with pytest.raises(OutputExistsError):
        meta_train(zoo_dir, out, epochs=1, preset_name="reference", **settings)
    # resuming continues from the saved epoch with the saved optimizer state
    before = {k: v.clone() for k, v in load_metanet(str(out / "last.pt")).state_dict().items()}
    meta_train(zoo_dir, out, epochs=2, preset_name="reference", resume=True, **settings)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "step" in r] == [1, 1, 2, 2]
    after = load_metanet(str(out / "last.pt")).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_metanet_refuses_graphs_of_unknown_kinds(zoo_dir, tmp_path):
    out = tmp_path / "run"
    meta_train(zoo_dir, out, epochs=0, preset_name="reference", width=8, depth=1, progress=False)
    net = load_metanet(str(out / "best.pt"))
    other = nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    graph = lower(other.eval(), torch.randn(1, 1, 8, 8))
    with pytest.raises(FxmetaError, match="unknown to this metanet"):
        net(graph)


def test_prunable_objective_trains_through_the_masked_generated_network(zoo_dir, tmp_path):
    from fxmeta.metatrain.loop import MetaTrainConfig, _train_step, load_data_model, make_metanet

    zoo = load_zoo(zoo_dir)
    config = MetaTrainConfig(objective="prunable", mask_speedups=(2.0, 3.0), mask_weight=1.0, width=8, depth=1,
                             batches_per_step=1, batch_size=32, progress=False, reg=0.0)
    data_model = load_data_model(zoo.path(zoo.members[0]), torch.randn(1, 1, 8, 8), config)

    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))

    def grads(weight: float):
        from dataclasses import replace

        net = make_metanet([data_model.graph], config)  # seeded: the same initial metanet
        optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
        record = _train_step(net, optimizer, data_model, iter([(x, y)] * 2), replace(config, mask_weight=weight), 1,
                             torch.Generator().manual_seed(0))
        return record, [p.grad.clone() for p in net.parameters() if p.grad is not None]

    record, with_mask = grads(1.0)
    _, without = grads(0.0)
    # the masked term is the loss of the generated network pruned to the drawn target (batch statistics)
    assert record["masked_ce"] > record["ce"] > 0
    assert len(with_mask) == len(without) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(with_mask, without))  # and it reaches the metanetwork
    with pytest.raises(Exception, match="objective"):
        MetaTrainConfig(objective="other")
    with pytest.raises(Exception, match="prunable"):
        MetaTrainConfig(objective="reference", conditioned=True)
    with pytest.raises(Exception, match="conditioned"):
        MetaTrainConfig(objective="prunable", steps=2)
    with pytest.raises(Exception, match="step_lr"):
        MetaTrainConfig(objective="prunable", conditioned=True, step_lr=-1.0)
    with pytest.raises(Exception, match="zero_init"):
        MetaTrainConfig(objective="prunable", conditioned=True, step_lr=0.1, step_lrs=(0.1, 0.3))
    with pytest.raises(Exception, match="nothing to train"):
        MetaTrainConfig(objective="reference", ce_weight=0.0)


def test_zero_init_starts_as_the_identity_and_learn_nodes_keeps_the_edges(zoo_dir):
    from fxmeta.metatrain.loop import MetaTrainConfig, _train_step, load_data_model, make_metanet

    zoo = load_zoo(zoo_dir)
    example = torch.randn(1, 1, 8, 8)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for learn in ("all", "nodes"):
        config = MetaTrainConfig(objective="prunable", mask_speedups=(2.0,), width=8, depth=1, ratio=1.0,
                                 zero_init=True, learn=learn, batches_per_step=1, batch_size=32, progress=False,
                                 reg=0.0)
        data_model = load_data_model(zoo.path(zoo.members[0]), example, config)
        net = make_metanet([data_model.graph], config)
        graph = data_model.graph
        with torch.no_grad():
            out = net(graph)
        for a, b in zip(graph.layers, out.layers):  # identity at step 0, even with ratio 1
            for t in ("edge", "node"):
                if getattr(a, t) is not None:
                    assert torch.equal(getattr(a, t), getattr(b, t))
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            _train_step(net, optimizer, data_model, iter([(x, y)] * 2), config, 1, torch.Generator())
        with torch.no_grad():
            out = net(graph)
        edges_moved = any(not torch.equal(a.edge, b.edge) for a, b in zip(graph.layers, out.layers)
                          if a.edge is not None and a.learned_edges)
        nodes_moved = any(not torch.equal(a.node, b.node) for a, b in zip(graph.layers, out.layers)
                          if a.node is not None)
        assert nodes_moved and edges_moved == (learn == "all")
    with pytest.raises(Exception, match="learn"):
        MetaTrainConfig(learn="edges")
    with pytest.raises(Exception, match="step_lr"):
        MetaTrainConfig(learn="step", objective="prunable", conditioned=True)


def test_learn_step_trains_only_the_step_sizes_of_an_sgd_start(zoo_dir):
    from fxmeta.metatrain.loop import MetaTrainConfig, _train_step, load_data_model, make_metanet

    zoo = load_zoo(zoo_dir)
    example = torch.randn(1, 1, 8, 8)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    config = MetaTrainConfig(objective="prunable", conditioned=True, mask_speedups=(2.0,), width=8, depth=1,
                             ratio=1.0, learn="step", step_lr=0.05, steps=2, ce_weight=0.0, batches_per_step=1,
                             batch_size=32, grad_batches=1, progress=False, reg=0.0)
    data_model = load_data_model(zoo.path(zoo.members[0]), example, config)
    net = make_metanet([data_model.graph], config)
    decoders = {k: v.clone() for k, v in net.state_dict().items() if ".dec." in k}
    head = net.step_head.weight.clone()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        record = _train_step(net, optimizer, data_model, iter([(x, y)] * 8), config, 1, torch.Generator())
    assert record["masked_ce"] > 0 and record["ce"] > 0  # the unpruned loss is logged, not trained on
    assert all(torch.equal(net.state_dict()[k], v) for k, v in decoders.items())
    assert not torch.equal(net.step_head.weight, head)


@pytest.mark.parametrize("objective", ["reference", "prunable", "conditioned", "conditioned steps"])
def test_two_step_meta_training_with_each_objective_scores_with_the_curve(zoo_dir, tmp_path, objective):
    from fxmeta.training.curve import prunability_curve
    from fxmeta.training.data import calibration_set, load_data, make_loaders

    out = tmp_path / objective.replace(" ", "_")
    conditioned = objective.startswith("conditioned")
    # a learned optimiser, trained on the pruned network's loss alone
    unrolled = dict(steps=2, step_lr=0.05, step_lrs=(0.05, 0.5), zero_init=True, ce_weight=0.0) \
        if objective == "conditioned steps" else {}
    allocation = "uniform" if unrolled else "global"  # every prune of the run spreads its removal this way
    settings = dict(width=8, depth=1, batches_per_step=1, batch_size=32, speedup=1.5, eval_finetune_epochs=0,
                    eval_bn_batches=2, objective="prunable" if conditioned else objective, mask_speedups=(2.0,),
                    conditioned=conditioned, progress=False, allocation=allocation, **unrolled)
    result = meta_train(zoo_dir, out, epochs=1, preset_name="reference", **settings)  # 2 training members: 2 steps
    assert result.metanet.conditioned == conditioned
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert result.metanet.config.steps == unrolled.get("steps", 1)
    if unrolled:  # the start lr: the better SGD of the candidates on the held-out member
        starts = {r["step_lr"]: r["score"] for r in records if "step_lr" in r}
        assert sorted(starts) == [0.05, 0.5] and result.metanet.config.step_lr == max(starts, key=starts.get)
    else:
        assert result.metanet.config.step_lr == 0.0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert len(steps) == 2 and all(("masked_ce" in r) == (objective != "reference") for r in steps)
    scored = next(r for r in records if r.get("epoch") == 1 and "score" in r)
    assert 0.0 <= scored["score"] <= 1.0
    # the score without a metanetwork is the prunability curve's point on the held-out member
    zoo = load_zoo(zoo_dir)
    member = load(zoo.path(zoo.split("val")[0]))
    loaders = make_loaders(load_data(zoo.data, seed=0), 32, seed=0)
    calibration = calibration_set(loaders.train.dataset, 2, 32, seed=0)
    point = prunability_curve(member, torch.randn(1, 1, 8, 8), loaders.val, [1.5], calibration=calibration,
                              split="val", allocation=allocation).points[0]
    baseline = next(r for r in records if r.get("baseline"))
    assert baseline["score"] == pytest.approx(point.recalibrated_accuracy)


def test_a_start_lr_that_blows_the_network_up_scores_nothing_and_the_run_goes_on(zoo_dir, tmp_path):
    out = tmp_path / "blown"
    result = meta_train(zoo_dir, out, epochs=1, preset_name="reference", width=8, depth=1, batches_per_step=1, batch_size=32, speedup=1.5,
                        eval_finetune_epochs=0, eval_bn_batches=2, objective="prunable", mask_speedups=(2.0,),
                        conditioned=True, steps=2, step_lr=0.05, step_lrs=(0.05, 1e30), zero_init=True,
                        ce_weight=0.0, progress=False)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = {r["step_lr"]: r["score"] for r in records if "step_lr" in r}
    assert starts[1e30] == 0.0 < starts[0.05]
    assert result.metanet.config.step_lr == 0.05


def test_the_library_and_the_command_share_the_meta_training_defaults():
    import argparse

    from fxmeta.cli.meta_train import config_from_args, register_meta_train
    from fxmeta.metatrain.loop import PRESETS, preset

    parser = argparse.ArgumentParser()
    register_meta_train(parser.add_subparsers(dest="command"))
    for objective in PRESETS:
        args = parser.parse_args(["meta-train", "zoo/", "--objective", objective])
        assert config_from_args(args) == preset(objective), objective
    library = preset()  # what fxmeta.meta_train() starts from without a config
    assert library == config_from_args(parser.parse_args(["meta-train", "zoo/"]))
    assert library.conditioned and library.objective == "prunable" and library.steps == 3
