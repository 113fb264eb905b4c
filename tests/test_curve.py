"""The prunability curve (fxmeta.training.curve) and ``fxmeta curve``."""
import json

import pytest
import torch

from fxmeta.cli.app import main
from fxmeta.models import get_model
from fxmeta.training.curve import prunability_curve
from fxmeta.training.data import calibration_set, load_data, make_loaders
from fxmeta.training.loop import TrainConfig, evaluate, recalibrate_bn, train


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_curve_points_are_prune_then_recalibrate(digits):
    torch.manual_seed(0)
    model = train(get_model("resnet20", in_channels=1), digits,
                  TrainConfig(epochs=2, lr=0.1, batch_size=128, device="cpu", progress=False)).model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 8, 8)
    loader = make_loaders(digits, 128).val
    calibration = calibration_set(digits.train, 3, 128, seed=1)
    assert [len(b[0]) for b in calibration] == [128] * 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(calibration, calibration_set(digits.train, 3, 128, 1)))
    curve = prunability_curve(model, x, loader, [2.0, 1e6], calibration=calibration, split="val")
    assert curve.unpruned == pytest.approx(evaluate(model, loader)["acc"])
    ok, unreachable = curve.points
    assert ok.flops_speedup >= 2.0 and unreachable.error and "unreachable" in unreachable.error
    # the point is exactly: prune, score; recalibrate on the given batches, score
    from fxmeta.pruning.pruner import prune

    pruned = prune(model, x, 2.0).module
    assert ok.accuracy == pytest.approx(evaluate(pruned, loader)["acc"])
    recalibrate_bn(pruned, calibration, 3)
    assert ok.recalibrated_accuracy == pytest.approx(evaluate(pruned, loader)["acc"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched


def test_curve_command_writes_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "curve.json"
    argv = ["curve", "fxmeta:resnet20", "--in-channels", "1", "--data", "digits", "--speedups", "2,3",
            "--bn-batches", "2", "--split", "val", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "right after pruning" in text and "3x" in text
    [curve] = json.loads(out.read_text())
    assert [p["speedup"] for p in curve["points"]] == [2.0, 3.0] and curve["split"] == "val"
    assert main(argv) == 2 and "exists" in capsys.readouterr().err
    assert main(argv[:-2] + ["--speedups", "0.5"]) == 2


def test_curve_with_a_conditioned_metanet_rewrites_once_per_target(tmp_path, capsys):
    from fxmeta.ir import lower
    from fxmeta.metanet import Metanet, save_metanet
    from fxmeta.metanet.condition import FEATURES

    x = torch.randn(1, 1, 8, 8)
    net = Metanet.for_graph(lower(get_model("resnet20", in_channels=1).eval(), x), width=8, depth=1, ratio=1.0,
                            condition=len(FEATURES))
    net.zero_outputs()  # the identity: its curve is the model's own
    save_metanet(net, str(tmp_path / "cond.pt"))
    out = tmp_path / "curve.json"
    argv = ["curve", "fxmeta:resnet20", "--in-channels", "1", "--data", "digits", "--speedups", "2,3",
            "--bn-batches", "2", "--split", "val", "--threads", "1", "--metanet", str(tmp_path / "cond.pt"),
            "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    model, with_metanet = json.loads(out.read_text())
    assert [p["speedup"] for p in with_metanet["points"]] == [2.0, 3.0]
    for a, b in zip(model["points"], with_metanet["points"]):
        assert a["recalibrated_accuracy"] == pytest.approx(b["recalibrated_accuracy"])
