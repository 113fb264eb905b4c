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


@pytest.fixture(autouse=True)
def _fresh_command_list(monkeypatch):
    # cli.main appends the registered commands to a module-level list on every call
    monkeypatch.setattr(cli, "_EXTRA_COMMANDS", [])


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
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
    "no overwrite": (["prune", *R20, "--out", "{d}/exists.pt"], "exists; pass --force"),
    "export no overwrite": (["prune", *R20, "--out", "{d}/o.pt", "--export", "{d}/exists.pt"], "exists; pass --force"),
    "out is the input": (["prune", "fxmeta:resnet20@{d}/exists.pt", "--out", "{d}/exists.pt", "--force"],
                         "is also an input"),
    "out equals export": (["prune", *R20, "--out", "{d}/o.pt", "--export", "{d}/o.pt"], "different paths"),
    "missing out folder": (["prune", *R20, "--out", "{d}/no/such/dir/o.pt"], "does not exist"),
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


def test_error_in_a_real_process_exits_non_zero_with_one_line(tmp_path):
    proc = run_cli("prune", "fxmeta:resnet20", "--speedup", "0.9", "--out", str(tmp_path / "o.pt"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: speed-up 0.9 is below 1; ask for the FLOPs ratio to "
                                                "reach, e.g. --speedup 2"]
    assert not os.listdir(tmp_path)


def test_help_texts_list_the_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("transform", "prune", "demo"):
        assert command in out
    cli._EXTRA_COMMANDS.clear()
    with pytest.raises(SystemExit):
        cli.main(["transform", "--help"])
    out = capsys.readouterr().out
    for flag in ("--speedup", "--metanet", "--data", "--resume", "--log", "--export", "--force", "--trust"):
        assert flag in out
