import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fxmeta.errors import SpecError
from fxmeta.models import get_model
from fxmeta.training.data import load_data, make_loaders
from fxmeta.training.loop import TrainConfig, evaluate, lr_factor, recalibrate_bn, resolve_amp, train

torch.set_num_threads(1)


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, 10),
    )


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(epochs=2, lr=0.1, batch_size=64, device="cpu", progress=False, seed=7)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _no_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_learns_digits(tmp_path, digits):
    model = _tiny_cnn()
    before = evaluate(model, make_loaders(digits, 256).val, "cpu")["acc"]
    result = train(model, digits, _config(tmp_path, epochs=3))
    assert before < 0.2 < 0.6 < result.best_val_acc
    assert result.best_epoch == 1 + max(range(3), key=lambda i: result.history[i]["val_acc"])
    # the returned weights are those of the best validation epoch
    val = evaluate(result.model, make_loaders(digits, 256).val, "cpu")
    assert val["acc"] == pytest.approx(result.best_val_acc)
    assert result.test["acc"] > 0.6 and result.seconds > 0
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[0]["samples"] == 1077 // 64 * 64  # ragged last batch dropped


def test_resnet20_on_digits(tmp_path, digits):
    torch.manual_seed(0)
    result = train(get_model("resnet20", in_channels=1), digits, _config(tmp_path, lr=0.05))
    assert result.best_val_acc > 0.8


def test_resume_after_interrupt_is_bit_exact(tmp_path, digits):
    straight = train(_tiny_cnn(), digits, _config(tmp_path, checkpoint_dir=str(tmp_path / "a")))
    # "interrupted" after one epoch: same run length, stopped by an epochs=1 run
    first = train(_tiny_cnn(), digits, _config(tmp_path, epochs=1, checkpoint_dir=str(tmp_path / "b")))
    assert _no_time(first.history) == _no_time(straight.history[:1])
    fresh = _tiny_cnn()
    with torch.no_grad():  # resume must not depend on the weights it starts from
        for p in fresh.parameters():
            p.add_(1.0)
    resumed = train(fresh, digits, _config(tmp_path, checkpoint_dir=str(tmp_path / "b"), resume=True))
    assert _state_equal(straight.model.state_dict(), resumed.model.state_dict())
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert last_a["epoch"] == last_b["epoch"] == 2
    assert _state_equal(last_a["model"], last_b["model"])
    assert _state_equal(last_a["optimizer"]["state"][0], last_b["optimizer"]["state"][0])
    assert _no_time(resumed.history) == _no_time(straight.history)
    # and a different seed gives different weights, so the comparison above can fail
    other = train(_tiny_cnn(), digits, _config(tmp_path, seed=8))
    assert not _state_equal(straight.model.state_dict(), other.model.state_dict())


def test_resume_without_checkpoint_starts_fresh_and_corrupt_checkpoint_fails(tmp_path, digits):
    cfg = _config(tmp_path, epochs=1, checkpoint_dir=str(tmp_path / "c"), resume=True)
    assert len(train(_tiny_cnn(), digits, cfg).history) == 1
    (tmp_path / "c" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(SpecError, match="cannot resume"):
        train(_tiny_cnn(), digits, cfg)
    assert not [p for p in (tmp_path / "c").iterdir() if p.name != "last.pt"]  # no temp files left


def test_json_lines_log(tmp_path, digits):
    log = tmp_path / "logs" / "metrics.jsonl"
    train(_tiny_cnn(), digits, _config(tmp_path, log_path=str(log), schedule="step", optimizer="adamw",
                                       lr=3e-3, label_smoothing=0.1))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r.get("epoch") for r in records[:2]] == [1, 2]
    assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= records[0].keys()
    assert records[-1]["final"] and 0 <= records[-1]["test_acc"] <= 1
    assert records[0]["lr"] == pytest.approx(3e-3) and records[1]["lr"] == pytest.approx(3e-4)


def test_schedules_and_config_checks():
    cos = TrainConfig(epochs=4)
    assert [lr_factor(e, cos) for e in range(4)] == pytest.approx([1, 0.8535534, 0.5, 0.1464466])
    step = TrainConfig(epochs=10, schedule="step", milestones=(3, 6), gamma=0.5)
    assert [lr_factor(e, step) for e in (0, 2, 3, 6, 9)] == [1, 1, 0.5, 0.25, 0.25]
    for bad in (dict(optimizer="lamb"), dict(schedule="linear"), dict(amp="fp8"), dict(device="tpu")):
        with pytest.raises(SpecError):
            TrainConfig(**bad)
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(SpecError, match="CUDA"):
        resolve_amp("fp16", torch.device("cpu"))


def test_bf16_autocast_on_cpu_trains(tmp_path, digits):
    result = train(_tiny_cnn(), digits, _config(tmp_path, amp="bf16"))
    assert result.best_val_acc > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last(tmp_path, digits):
    torch.manual_seed(0)
    model = get_model("resnet20", in_channels=1)
    result = train(model, digits, _config(tmp_path, device="cuda", amp="auto", channels_last=True, lr=0.05))
    assert result.best_val_acc > 0.8
    assert next(result.model.parameters()).is_cuda


# ------------------------------------------------------------------------------ DDP


def _ddp_worker(out: str) -> None:
    """Run under torchrun: train on 2 CPU ranks, save each rank's final weights."""
    torch.set_num_threads(1)
    splits = load_data("digits")
    result = train(_tiny_cnn(), splits, TrainConfig(
        epochs=2, lr=0.1, batch_size=32, device="cpu", progress=False, seed=3,
        log_path=os.path.join(out, "log.jsonl"), checkpoint_dir=os.path.join(out, "ckpt")))
    rank = os.environ["RANK"]
    torch.save({"state": result.model.state_dict(), "val_acc": result.best_val_acc,
                "history": result.history}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow  # two torchrun processes: half a minute on 2 cores
def test_ddp_two_cpu_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--ddp-worker", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _state_equal(r0["state"], r1["state"])
    assert _no_time(r0["history"]) == _no_time(r1["history"])  # metrics reduced across ranks
    assert r0["val_acc"] > 0.5
    # the ranks split the data (539 each, 16 full batches of 32) instead of both taking all of it
    assert [h["samples"] for h in r0["history"]] == [2 * 16 * 32] * 2
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # written by rank 0 only: 2 epochs + final
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 2


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp-worker"]:
    _ddp_worker(sys.argv[2])


def test_recalibrate_bn_averages_the_batches_statistics():
    model = _tiny_cnn()
    torch.manual_seed(1)
    batches = [(torch.randn(6, 1, 8, 8) * 3 + 1, torch.zeros(6, dtype=torch.long)) for _ in range(3)]
    bn = model[1]
    bn.momentum = 0.3
    model.train()
    out = recalibrate_bn(model, batches, batches=2)  # the third batch must not be seen
    assert out is model and not model.training and bn.momentum == 0.3
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches[:2]]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert int(bn.num_batches_tracked) == 2
    with torch.no_grad():  # eval mode: the dropout is off, so two runs agree
        x = batches[2][0]
        torch.testing.assert_close(model(x), model(x))


def test_keep_best_or_start_returns_the_given_network_when_no_epoch_beats_it(tmp_path, digits):
    trained = train(_tiny_cnn(), digits, _config(tmp_path, epochs=3)).model
    given = {k: v.clone() for k, v in trained.state_dict().items()}
    val = evaluate(trained, make_loaders(digits, 256).val, "cpu")["acc"]
    # a learning rate that wrecks the network: every epoch is worse than the start
    log = tmp_path / "log.jsonl"
    result = train(trained, digits, _config(tmp_path, epochs=2, lr=50.0, keep="best-or-start", log_path=str(log)))
    assert result.best_epoch == 0 and result.best_val_acc == pytest.approx(val)
    assert all(h["val_acc"] < val for h in result.history)
    assert _state_equal(result.model.state_dict(), given)
    assert json.loads(log.read_text().splitlines()[0])["epoch"] == 0
    # "best" keeps the best of the wrecked epochs; a finetune that helps is kept under either rule
    worse = train(_tiny_cnn(), digits, _config(tmp_path, epochs=3))
    wrecked = train(worse.model, digits, _config(tmp_path, epochs=2, lr=50.0))
    assert wrecked.best_epoch >= 1 and wrecked.best_val_acc < val
    fresh = train(_tiny_cnn(), digits, _config(tmp_path, epochs=2, keep="best-or-start"))
    assert fresh.best_epoch >= 1
