"""The product commands end to end: transform / prune / demo through the CLI.

Errors are checked in-process (fast); the round trips run ``python -m fxmeta`` in a
subprocess like a user would, on fxmeta:resnet20 with digits 8x8 and one epoch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import fxmeta
from fxmeta import cli
from fxmeta.io import VERSION

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
R20 = ["fxmeta:resnet20", "--in-channels", "1"]
FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--no-progress", "--device", "cpu"]


def main(argv: list[str]) -> int:
    return cli.main(argv)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(*argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fxmeta", *argv], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------- errors


@pytest.fixture
def files(tmp_path):
    """A pickled module, a .pt2 program, a factory file returning no module, an existing output."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    torch.save(model, tmp_path / "pickled.pt")
    torch.export.save(torch.export.export(model.eval(), (torch.randn(1, 1, 8, 8),)), tmp_path / "prog.pt2")
    (tmp_path / "factory.py").write_text("def make():\n    return 3\n")
    (tmp_path / "branchy.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Sign(nn.Module):\n    def forward(self, x):\n        return x if x.sum() > 0 else -x\n\n"
        "def make():\n    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), Sign(), nn.Conv2d(8, 4, 3),\n"
        "                         nn.Flatten(), nn.Linear(64, 10))\n")
    (tmp_path / "exists.pt").write_bytes(b"keep me")
    return tmp_path


ERROR_CASES = {
    "not a module": (["prune", "{d}/factory.py:make", "--out", "{d}/o.pt"], "not a torch.nn.Module"),
    "bad input shape text": (["prune", *R20, "--input-shape", "1,x,8", "--out", "{d}/o.pt"], "bad input shape"),
    "input shape does not fit": (["prune", *R20, "--input-shape", "1,3,8,8", "--out", "{d}/o.pt"],
                                 "does not run on an input of shape"),
    "shape vs data": (["transform", *R20, "--data", "digits", "--input-shape", "1,1,16,16", "--out", "{d}/o.pt"],
                      "does not fit the data"),
    "classes vs data": (["transform", *R20, "--num-classes", "3", "--data", "digits", "--out", "{d}/o.pt"],
                        "has 3 outputs but the data has 10 classes"),
    "prepare setting without its stage": (["transform", *R20, "--data", "digits", "--prepare-sparsity", "0.01",
                                           "--out", "{d}/o.pt"], "--prepare-sparsity applies only with --prepare-epochs"),
    "unknown spec": (["prune", "fxmeta:resnet21", "--out", "{d}/o.pt"], "unknown model 'resnet21'"),
    "unknown spec form": (["prune", "nonsense", "--out", "{d}/o.pt"], "unknown model spec"),
    "missing file": (["prune", "{d}/missing.pt", "--out", "{d}/o.pt"], "no such file"),
    "missing weights": (["prune", "fxmeta:resnet20@{d}/missing.pt", "--out", "{d}/o.pt"], "no such weights file"),
    "bad data spec": (["transform", *R20, "--data", "mnist", "--out", "{d}/o.pt"], "unknown data spec 'mnist'"),
    "missing data folder": (["transform", *R20, "--data", "cifar10:{d}/nowhere", "--out", "{d}/o.pt"],
                            "no such folder"),
    "speedup below 1": (["prune", *R20, "--speedup", "0.5", "--out", "{d}/o.pt"], "speed-up 0.5 is below 1"),
    "pickle needs trust": (["prune", "{d}/pickled.pt", "--input-shape", "1,1,8,8", "--out", "{d}/o.pt"],
                           "Re-run with --trust"),
    "pt2 needs trust": (["prune", "{d}/prog.pt2", "--out", "{d}/o.pt"], "torch.export program"),
    "resume without data": (["transform", *R20, "--resume", "--out", "{d}/o.pt"], "needs --data"),
    "unexportable": (["prune", "{d}/branchy.py:make", "--input-shape", "1,1,8,8", "--out", "{d}/o.pt",
                      "--export", "{d}/o.pt2"], "torch.export cannot export"),
    "no overwrite": (["prune", *R20, "--out", "{d}/exists.pt"], "exists; pass --force"),
    "export no overwrite": (["prune", *R20, "--out", "{d}/o.pt", "--export", "{d}/exists.pt"], "exists; pass --force"),
    "out is the input": (["prune", "fxmeta:resnet20@{d}/exists.pt", "--out", "{d}/exists.pt", "--force"],
                         "is also an input"),
    "out equals export": (["prune", *R20, "--out", "{d}/o.pt", "--export", "{d}/o.pt"], "different paths"),
    "missing out folder": (["prune", *R20, "--out", "{d}/no/such/dir/o.pt"], "does not exist"),
    "not a metanet file": (["transform", *R20, "--metanet", "{d}/exists.pt", "--out", "{d}/o.pt"],
                           "is not a metanet file"),
    "zoo counts": (["zoo", "--count", "2", "--val-count", "2", "--out", "{d}/zoo"], "0 <= val_count < count"),
    "zoo speedup": (["zoo", "--prune-speedup", "0.5", "--out", "{d}/zoo"], "below 1"),
    "meta-train without zoo": (["meta-train", "{d}", "--out", "{d}/mn"], "is not a model zoo"),
    "meta-train bad init": (["meta-train", "{d}", "--init", "{d}/none.pt", "--out", "{d}/mn"],
                            "no such metanetwork file"),
    "missing metanet": (["transform", *R20, "--metanet", "{d}/none.pt", "--out", "{d}/o.pt"],
                        "no such metanetwork file"),
    "negative epochs": (["transform", *R20, "--data", "digits", "--epochs", "-1", "--out", "{d}/o.pt"],
                        "must be >= 0"),
    "no cuda": (["transform", *R20, "--data", "digits", "--device", "cuda:7", "--out", "{d}/o.pt"], "CUDA"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_and_write_nothing(case, files, capsys):
    argv, message = ERROR_CASES[case]
    if case == "no cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    before = sorted(os.listdir(files))
    code, out, err = run_main([a.format(d=files) for a in argv], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert out == ""
    assert sorted(os.listdir(files)) == before
    assert (files / "exists.pt").read_bytes() == b"keep me"


# Found while pruning, after the checks: the stages run so far are listed, then one error line.
PIPELINE_ERRORS = {
    "pt2 traced with fx is an ATen graph": (["prune", "{d}/prog.pt2", "--trust", "--capture", "fx", "--out",
                                             "{d}/o.pt"], "ATen-level graph"),
    "unreachable speedup": (["prune", *R20, "--speedup", "1000", "--out", "{d}/o.pt"], "unreachable"),
}


@pytest.mark.parametrize("case", PIPELINE_ERRORS)
def test_errors_found_while_pruning_end_in_one_line(case, files, capsys):
    argv, message = PIPELINE_ERRORS[case]
    before = sorted(os.listdir(files))
    code, out, err = run_main([a.format(d=files) for a in argv], capsys)
    assert code == 2 and out == ""
    *stages, last = err.splitlines()
    assert last.startswith("error: ") and message in last
    assert stages == ["> measure original", "> remove channels"]
    assert sorted(os.listdir(files)) == before


def test_error_in_a_real_process_exits_non_zero_with_one_line(tmp_path):
    proc = run_cli("prune", "fxmeta:resnet20", "--speedup", "0.9", "--out", str(tmp_path / "o.pt"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: speed-up 0.9 is below 1; ask for the FLOPs ratio to "
                                                "reach, e.g. --speedup 2"]
    assert not os.listdir(tmp_path)


def test_help_texts_list_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("transform", "prune", "demo", "zoo", "meta-train"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["transform", "--help"])
    out = capsys.readouterr().out
    for flag in ("--speedup", "--metanet", "--data", "--resume", "--log", "--export", "--force", "--trust"):
        assert flag in out


# ------------------------------------------------------------------ round trips


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_transform_round_trip_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the report table at full width, as in a terminal
    out, program, log = tmp_path / "pruned.pt", tmp_path / "pruned.pt2", tmp_path / "log.jsonl"
    code, stdout, stderr = run_main(["transform", *R20, *FAST, "--speedup", "2", "--out", str(out),
                                     "--export", str(program), "--log", str(log)], capsys)
    assert code == 0, stderr[-3000:]
    for row in ("test accuracy", "right after removal", "FLOPs", "parameters", "latency (cpu, batch 1, 1 thr)",
                "time per stage", "remove channels", "finetune", "save", "export", "total"):
        assert row in stdout, row
    # the file: plain data, loadable without running code
    saved = torch.load(out, weights_only=True)
    assert saved["format"] == "fxmeta.model" and saved["version"] == VERSION
    assert saved["spec"] == "fxmeta:resnet20" and saved["spec_kwargs"] == {"in_channels": 1}
    assert saved["plan"]["groups"] and saved["input_shape"] == [1, 1, 8, 8]
    metrics = saved["metrics"]
    assert metrics["flops_speedup"] >= 2 and 0 <= metrics["after"]["accuracy"] <= 1
    assert {"load", "measure original", "remove channels", "finetune", "measure pruned"} <= set(metrics["stages"])
    # fxmeta.load rebuilds it; plain torch.export.load runs the program; both agree
    model = fxmeta.load(out)
    exported = torch.export.load(str(program)).module()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), exported(x), atol=1e-5)
    assert _same_state(model.state_dict(), saved["state_dict"])
    from fxmeta.models import resnet20
    from fxmeta.pruning.flops import count_flops

    assert count_flops(resnet20(in_channels=1), x[:1]) / count_flops(model, x[:1]) >= 2
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # epoch 0: the pruned network as given (the finetune keeps it if no epoch beats it on validation)
    assert [r.get("epoch") for r in records[:2]] == [0, 1] and records[-1]["final"]
    assert sorted(os.listdir(tmp_path)) == ["log.jsonl", "pruned.pt", "pruned.pt2"]  # default checkpoints removed


def test_prune_needs_no_data_and_says_so(tmp_path, capsys):
    code, out, err = run_main(["prune", *R20, "--input-shape", "1,1,8,8", "--speedup", "1.5",
                               "--allocation", "uniform", "--out", str(tmp_path / "p.pt")], capsys)
    assert code == 0, err
    assert "no data given: finetuning and accuracy skipped" in out and "1.5x FLOPs target" in out
    assert fxmeta.load(tmp_path / "p.pt")(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    assert saved["metrics"]["after"]["accuracy"] is None and saved["plan"]["allocation"] == "uniform"


def test_pruning_a_pruned_file_again(tmp_path, capsys):
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    assert run_main(["prune", *R20, "--input-shape", "1,1,8,8", "--speedup", "1.5", "--out", str(first)], capsys)[0] == 0
    code, _, err = run_main(["prune", str(first), "--speedup", "1.5", "--out", str(second)], capsys)
    assert code == 0, err
    # the second file stands alone: the architecture's spec, the first plan, then its own on top
    saved = torch.load(second, weights_only=True)
    assert saved["spec"] == "fxmeta:resnet20" and len(saved["plans_before"]) == 1
    from fxmeta.pruning.flops import count_flops

    x = torch.randn(1, 1, 8, 8)
    assert count_flops(fxmeta.load(first), x) / count_flops(fxmeta.load(second), x) >= 1.5

def test_pickled_module_with_trust(files, capsys):
    out = files / "p.pt"
    code, _, err = run_main(["prune", str(files / "pickled.pt"), "--trust", "--input-shape", "1,1,8,8",
                             "--out", str(out)], capsys)
    assert code == 0, err
    # the result names the pickle as its architecture, so loading it needs trust as well
    with pytest.raises(fxmeta.UnsafeFileError, match="--trust"):
        fxmeta.load(out)
    assert fxmeta.load(out, trust=True)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_own_model_from_a_file(tmp_path, capsys):
    spec = f"{ROOT / 'examples' / 'my_model.py'}:factory"
    code, out, err = run_main(["transform", spec, "--data", "digits", "--epochs", "1", "--batch-size", "64",
                               "--no-progress", "--device", "cpu", "--out", str(tmp_path / "mine.pt")], capsys)
    assert code == 0, err
    assert "test accuracy" in out
    assert fxmeta.load(tmp_path / "mine.pt", trust=True)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("stage", ["save", "export"])
def test_interrupt_while_writing_leaves_no_file(tmp_path, capsys, monkeypatch, stage):
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise KeyboardInterrupt

    if stage == "save":
        monkeypatch.setattr(torch, "save", crash)
    else:
        monkeypatch.setattr(torch.export, "save", crash)
    code, _, err = run_main(["prune", *R20, "--input-shape", "1,1,8,8", "--out", str(tmp_path / "p.pt"),
                             "--export", str(tmp_path / "p.pt2")], capsys)
    assert code == 130 and "interrupted" in err
    # the .pt is written first: when the export is interrupted it is complete, and nothing else is there
    assert os.listdir(tmp_path) == ([] if stage == "save" else ["p.pt"])
    if stage == "export":
        monkeypatch.setattr(torch, "save", real_save)
        assert fxmeta.load(tmp_path / "p.pt")(torch.randn(1, 1, 8, 8)).shape == (1, 10)



def test_demo_trains_once_then_uses_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the command sets it for its process
    argv = ["demo", "--image-size", "8", "--base-epochs", "2", "--epochs", "2", "--prepare-epochs", "1",
            "--adapt-epochs", "1", "--no-progress",
            "--cache-dir", str(tmp_path / "cache"), "--latency-batch", "4"]
    code, out, err = run_main(argv + ["--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "training the base network" in err and "train base" in out
    assert "test acc., finetuned" in out and "2x FLOPs target" in out and "prepared" in out
    if not (ROOT / "fxmeta" / "assets" / "metanet_digits.pt").is_file():
        assert "no metanetwork column" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["metrics.json", "pruned.pt", "pruned.pt2"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["flops_speedup"] >= 2 and "train base" in metrics["stages"]
    assert "BatchNorm recal" in out and 0 <= metrics["recalibrated_accuracy"] <= 1  # on by default
    assert set(metrics["methods"]) >= {"calibrated", "prepared"} and metrics["saved"] == "prepared"
    kept = [name for name, m in metrics["methods"].items() if m["finetune_best_epoch"] == 0]
    assert ("kept the pruned network as it was" in out) == bool(kept)  # said exactly when it happened
    assert fxmeta.load(tmp_path / "out" / "pruned.pt")(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    [cached] = os.listdir(tmp_path / "cache")
    # same base config: the base network comes from the cache (one column is enough to show it)
    code, out, err = run_main(argv + ["--prepare-epochs", "0", "--no-metanet", "--save", "calibrated"], capsys)
    assert code == 0, err
    assert f"base network: cached {tmp_path / 'cache' / cached}" in err and "train base" not in out
    assert "calibrated" in out and "prepared" not in out
    # a different config is a different cache entry; existing result files need --force
    code, _, err = run_main(argv + ["--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "exists; pass --force" in err



def _untrained_metanet(path: Path) -> None:
    from fxmeta.ir.lowering import lower
    from fxmeta.metanet import Metanet, save_metanet
    from fxmeta.models import resnet20

    torch.manual_seed(0)
    graph = lower(resnet20(in_channels=1).eval(), torch.randn(1, 1, 8, 8))
    save_metanet(Metanet.for_graph(graph, width=8, depth=2, ratio=0.01), str(path))


def test_transform_with_a_metanet_file(tmp_path, capsys):
    _untrained_metanet(tmp_path / "metanet.pt")
    out = tmp_path / "pruned.pt"
    code, stdout, err = run_main(["transform", *R20, *FAST, "--metanet", str(tmp_path / "metanet.pt"),
                                  "--adapt-epochs", "1", "--out", str(out)], capsys)
    assert code == 0, err
    assert "with metanetwork" in stdout and "importance alone" not in stdout
    stages = list(torch.load(out, weights_only=True)["metrics"]["stages"])
    assert stages[:9] == ["load", "measure original", "lower", "metanet", "raise", "adapt finetune",
                          "remove channels", "recalibrate BatchNorm", "finetune"]  # recalibration: on by default
    with torch.no_grad():
        assert fxmeta.load(out)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_zoo_then_meta_train_then_transform(tmp_path, capsys):
    zoo, mn = tmp_path / "zoo", tmp_path / "mn"
    code, out, err = run_main(["zoo", "--count", "3", "--val-count", "1", "--epochs", "1", "--finetune-epochs", "0",
                               "--out", str(zoo), "--no-progress"], capsys)
    assert code == 0, err
    assert out.count("member_0") == 3 and f"fxmeta meta-train {zoo}" in err
    code, out, err = run_main(["meta-train", str(zoo), "--out", str(mn), "--epochs", "1", "--width", "8",
                               "--depth", "2", "--batches-per-step", "1", "--eval-finetune-epochs", "0",
                               "--no-progress"], capsys)
    assert code == 0, err
    assert "best epoch 1" in err and (mn / "best.pt").is_file()
    from fxmeta.metanet import load_metanet

    assert load_metanet(str(mn / "best.pt")).conditioned  # the default objective: told the prune
    code, out, err = run_main(["meta-train", str(zoo), "--out", str(mn)], capsys)
    assert code == 2 and "--resume" in err  # checkpoints are not overwritten silently
    code, out, err = run_main(["transform", *R20, "--metanet", str(mn / "best.pt"), "--no-progress",
                               "--out", str(tmp_path / "q.pt")], capsys)
    assert code != 0 and "--data" in err and not (tmp_path / "q.pt").exists()  # it needs data, said plainly
    code, out, err = run_main(["transform", *R20, *FAST, "--metanet", str(mn / "best.pt"),
                               "--out", str(tmp_path / "p.pt")], capsys)
    assert code == 0, err
    assert "with metanetwork" in out


# --------------------------------------------------------- interrupts and DDP (slow)


class _SlowSamples(torch.utils.data.Dataset):
    """Training samples that take a while each, so a run can be interrupted mid-epoch."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.targets = inner.tensors[1].tolist()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.inner[i]


def slow_digits(seed: int = 0):
    """Data spec ``test_cli:slow_digits`` (with tests/ on PYTHONPATH)."""
    from fxmeta.training.data import load_data

    splits = load_data("digits", seed=seed)
    return _SlowSamples(splits.train, 0.002), splits.val, splits.test


@pytest.mark.slow
def test_interrupted_transform_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    common = [sys.executable, "-m", "fxmeta", "transform", *R20, "--data", "test_cli:slow_digits", "--epochs", "3",
              "--batch-size", "64", "--device", "cpu", "--no-progress"]
    straight = subprocess.Popen(common + ["--out", str(tmp_path / "straight.pt"), "--checkpoint-dir",
                                          str(tmp_path / "a")], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    resumed_args = common + ["--out", str(tmp_path / "resumed.pt"), "--checkpoint-dir", str(tmp_path / "b"),
                             "--log", str(tmp_path / "log.jsonl")]
    victim = subprocess.Popen(resumed_args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "b" / "finetune" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGINT)  # during epoch 2 of 3
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 130, err[-2000:]
    assert "interrupted" in err and not (tmp_path / "resumed.pt").exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] < 3
    proc = subprocess.run(resumed_args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)["state_dict"]
    assert _same_state(a, b)
    epochs = [json.loads(line).get("epoch") for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # epochs 0 (the pruned network as it came) and 1 from the first run, 2 and 3 appended on resume, then the summary
    assert epochs == [0, 1, 2, 3, None]


@pytest.mark.slow  # two torchrun processes: half a minute on 2 cores
def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fxmeta",
           "transform", *R20, "--data", "digits", "--epochs", "2", "--batch-size", "32", "--device", "cpu",
           "--no-progress", "--out", str(tmp_path / "ddp.pt"), "--log-file", str(tmp_path / "log.jsonl")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("time per stage") == 1  # rank 0 prints, rank 1 stays quiet
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # written once, by rank 0; epoch 0: the pruned network as it came (the finetune may keep it)
    assert [r.get("epoch") for r in records] == [0, 1, 2, None]
    # the ranks split the 1077 training samples: 2 ranks x 16 full batches of 32 per epoch
    assert [r["samples"] for r in records[1:3]] == [2 * 16 * 32] * 2
    model = fxmeta.load(tmp_path / "ddp.pt")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert sorted(os.listdir(tmp_path)) == ["ddp.pt", "log.jsonl"]


def test_distill_defaults_to_the_memory_and_validation_check_and_can_be_forced_either_way():
    from fxmeta.cli.app import build_parser
    from fxmeta.cli.common import transform_config

    parser = build_parser()
    for flags, want in (([], None), (["--distill"], True), (["--no-distill"], False)):
        args = parser.parse_args(["transform", "resnet20", "--out", "x.pt", *flags])
        assert transform_config(args).distill is want
