"""Nothing lost, nothing run without --trust, no success that is not one: the CLI's safety rules.

Each test is the regression test of one defect of the reliability review (numbered as
there); all run in-process on a tiny network and the digits data (a second or two each).
"""
from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import torch

import fxmeta
from fxmeta import cli

TINY = """
import torch
from torch import nn


def make(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""
FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "256", "--no-progress", "--device", "cpu",
        "--bn-batches", "1", "--speedup", "1.3"]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY)
    return f"{tmp_path / 'tiny.py'}:make"


# 1. --log obeys the output rules --------------------------------------------------------------
def test_1_log_never_overwrites_an_input_or_an_existing_file(tmp_path, tiny, capsys):
    victim = tmp_path / "victim.pt"
    code, _, err = run(["prune", tiny, "--input-shape", "1,1,8,8", "--speedup", "1.3", "--out", victim], capsys)
    assert code == 0, err
    before = victim.read_bytes()
    code, _, err = run(["transform", victim, *FAST, "--log", victim, "--out", tmp_path / "v.pt"], capsys)
    assert code == 2 and "also an input" in err and victim.read_bytes() == before
    (tmp_path / "old.jsonl").write_text("mine\n")
    code, _, err = run(["transform", tiny, *FAST, "--log", tmp_path / "old.jsonl", "--out", tmp_path / "v.pt"], capsys)
    assert code == 2 and "exists; pass --force" in err and (tmp_path / "old.jsonl").read_text() == "mine\n"
    code, _, err = run(["transform", tiny, *FAST, "--log", tmp_path / "x.pt", "--out", tmp_path / "x.pt"], capsys)
    assert code == 2 and "different paths" in err and not (tmp_path / "x.pt.ckpt").exists()


# 2. only fxmeta's own files are deleted -------------------------------------------------------
def test_2_an_existing_checkpoint_folder_and_its_files_are_kept(tmp_path, tiny, capsys):
    mine = tmp_path / "mine.pt.ckpt"
    mine.mkdir()
    (mine / "important.txt").write_text("data")
    code, _, err = run(["transform", tiny, *FAST, "--out", tmp_path / "mine.pt"], capsys)
    assert code == 0, err
    assert (mine / "important.txt").read_text() == "data"
    assert sorted(os.listdir(mine)) == ["important.txt"]  # fxmeta's run.json and finetune/ are gone
    code, _, err = run(["transform", tiny, *FAST, "--out", tmp_path / "fresh.pt"], capsys)
    assert code == 0 and not (tmp_path / "fresh.pt.ckpt").exists()  # a folder fxmeta made: removed


# 3. manifests run nothing without --trust; with it a user family goes end to end ------------
def test_3_hostile_zoo_manifest_runs_nothing_without_trust(tmp_path, capsys, monkeypatch):
    (tmp_path / "evil_module.py").write_text("open(__file__ + '.ran', 'w').close()\ndef load():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "zoo.json").write_text(json.dumps({
        "format": "fxmeta.zoo/1", "model_spec": "fxmeta:resnet20", "data": "evil_module:load",
        "spec_kwargs": {}, "input_shape": [1, 1, 8, 8], "settings": {},
        "members": [{"index": 0, "file": "m.pt", "seed": 0, "split": "train", "metrics": {}}]}))
    code, _, err = run(["meta-train", zoo, "--out", tmp_path / "mn", "--epochs", "0"], capsys)
    assert code == 2 and "--trust" in err and "evil_module:load" in err
    assert not (tmp_path / "evil_module.py.ran").exists() and "evil_module" not in sys.modules
    assert not (tmp_path / "mn").exists()


def test_3_user_family_zoo_meta_train_transform_with_trust(tmp_path, tiny, capsys):
    zoo, mn = tmp_path / "zoo", tmp_path / "mn"
    code, _, err = run(["zoo", tiny, "--count", "2", "--val-count", "1", "--epochs", "1", "--finetune-epochs", "0",
                        "--prune-speedup", "1.2", "--batch-size", "256", "--no-progress", "--out", zoo], capsys)
    assert code == 0, err
    code, _, err = run(["meta-train", zoo, "--out", mn, "--epochs", "0", "--eval-finetune-epochs", "0",
                        "--eval-bn-batches", "1", "--no-progress"], capsys)
    assert code == 2 and "--trust" in err
    code, _, err = run(["meta-train", zoo, "--out", mn, "--epochs", "1", "--eval-finetune-epochs", "0",
                        "--eval-bn-batches", "1", "--batches-per-step", "1", "--no-progress", "--trust"], capsys)
    assert code == 0, err
    code, _, err = run(["transform", tiny, "--metanet", mn / "best.pt", *FAST, "--out", tmp_path / "p.pt"], capsys)
    assert code == 0, err
    assert fxmeta.load(tmp_path / "p.pt", trust=True)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# 5. divergence is an error, not a saved model -------------------------------------------------
@pytest.mark.parametrize("flags, message", [(["--lr", "nan"], "--lr must be a finite number > 0"),
                                            (["--lr", "-1"], "--lr must be a finite number > 0"),
                                            (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
                                            (["--workers", "-1"], "--workers must be >= 0"),
                                            (["--num-classes", "0"], "--num-classes must be >= 1"),
                                            (["--input-shape", ""], "bad input shape")])
def test_5_8_numeric_flags_are_checked_before_any_work(tmp_path, tiny, capsys, flags, message):
    code, _, err = run(["transform", tiny, *FAST, *flags, "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and message in err, err
    assert os.listdir(tmp_path) == ["tiny.py"]


def test_5_diverged_training_stops_with_an_error_and_writes_no_model(tmp_path, tiny, capsys):
    code, _, err = run(["transform", tiny, *FAST[:-4], "--epochs", "2", "--lr", "1e12", "--speedup", "1.3",
                        "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and "diverged" in err, err
    assert not (tmp_path / "o.pt").exists()


def test_5_the_retry_a_divergence_suggests_is_accepted(tmp_path, tiny, capsys):
    """Diverged in its first epoch, the run leaves nothing to resume and nothing that refuses the retry."""
    argv = ["transform", tiny, *FAST[:-4], "--epochs", "1", "--speedup", "1.3", "--out", tmp_path / "o.pt"]
    code, _, err = run(argv + ["--lr", "1e12"], capsys)
    assert code == 2 and "diverged" in err and not (tmp_path / "o.pt.ckpt").exists(), err
    code, _, err = run(argv + ["--lr", "0.01"], capsys)
    assert code == 0, err


def test_5_a_resumed_run_leaves_no_checkpoint_folders(tmp_path, tiny, capsys):
    ckpt = tmp_path / "o.pt.ckpt" / "finetune"
    ckpt.mkdir(parents=True)  # what an interrupted run leaves (its checkpoint already used up)
    code, _, err = run(["transform", tiny, *FAST, "--resume", "--out", tmp_path / "o.pt"], capsys)
    assert code == 0, err
    assert not (tmp_path / "o.pt.ckpt").exists()


# 8. outputs are checked before the long work --------------------------------------------------
def test_8_output_problems_fail_before_training(tmp_path, tiny, capsys):
    (tmp_path / "dir.pt").mkdir()
    code, _, err = run(["transform", tiny, *FAST, "--out", tmp_path / "dir.pt", "--force"], capsys)
    assert code == 2 and "is a directory" in err and "stage" not in err
    (tmp_path / "file").write_text("x")
    code, _, err = run(["transform", tiny, *FAST, "--checkpoint-dir", tmp_path / "file", "--out", tmp_path / "o.pt"],
                       capsys)
    assert code == 2 and "is a file" in err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            code, _, err = run(["transform", tiny, *FAST, "--out", ro / "o.pt"], capsys)
            assert code == 2 and "not writable" in err
        finally:
            ro.chmod(stat.S_IRWXU)
    assert not any(p.name.endswith(".ckpt") for p in tmp_path.iterdir())


def test_8_damaged_imagefolder_fails_before_training(tmp_path, tiny, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "img" / split / cls
            folder.mkdir(parents=True)
            Image.new("L", (8, 8)).save(folder / "0.png")
    (tmp_path / "img" / "train" / "a" / "broken.png").write_bytes(b"not a png")
    code, _, err = run(["transform", tiny, "--data", f"imagefolder:{tmp_path / 'img'}", "--image-size", "8",
                        "--epochs", "1", "--no-progress", "--device", "cpu", "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and "broken.png" in err, err
    assert not (tmp_path / "o.pt.ckpt").exists()


# 10. the smaller items -------------------------------------------------------------------------
def test_10_messages(tmp_path, tiny, capsys):
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ts.pt"))
    code, _, err = run(["prune", tmp_path / "ts.pt", "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and "TorchScript" in err and "weights_only=False" not in err
    code, _, err = run(["prune", tmp_path, "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and "is a directory" in err
    code, _, err = run(["prune", tiny, "--input-shape", "1,1,8,8", "--speedup", "inf", "--out", tmp_path / "o.pt"],
                       capsys)
    assert code == 2 and "not a finite number" in err
    code, _, err = run(["prune", tiny, "--input-shape", "1,1,8,8", "--speedup", "50", "--out", tmp_path / "o.pt"],
                       capsys)
    assert code == 2 and "--speedup" in err and "lower the target or min_keep" not in err


def test_10_existing_checkpoints_need_resume_or_force(tmp_path, tiny, capsys):
    ckpt = tmp_path / "o.pt.ckpt" / "finetune"
    ckpt.mkdir(parents=True)
    torch.save({"epoch": 1}, ckpt / "last.pt")
    code, _, err = run(["transform", tiny, *FAST, "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and "--resume" in err and (ckpt / "last.pt").exists()


def test_10_interrupt_names_the_kept_checkpoint(tmp_path, tiny, capsys, monkeypatch):
    from fxmeta.training import loop

    real = loop._save_checkpoint

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_stop)
    code, _, err = run(["transform", tiny, *FAST, "--out", tmp_path / "o.pt"], capsys)
    assert code == 130 and "--resume" in err and "nothing was written" not in err


def test_10_failed_meta_train_leaves_no_empty_folder(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "zoo.json").write_text(json.dumps({
        "format": "fxmeta.zoo/1", "model_spec": "fxmeta:resnet20", "data": "digits", "spec_kwargs": {},
        "input_shape": [1, 1, 8, 8], "settings": {},
        "members": [{"index": 0, "file": "missing.pt", "seed": 0, "split": "train", "metrics": {}}]}))
    code, _, err = run(["meta-train", zoo, "--out", tmp_path / "mn", "--epochs", "0"], capsys)
    assert code == 2, err
    assert not (tmp_path / "mn").exists()


def test_9_damaged_zoo_manifest(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "zoo.json").write_text('{"format": "fxmeta.zoo/1", "members": [{"file": "../../etc/passwd"}]')
    code, _, err = run(["meta-train", zoo, "--out", tmp_path / "mn"], capsys)
    assert code == 2 and "damaged file" in err
    (zoo / "zoo.json").write_text(json.dumps({
        "format": "fxmeta.zoo/1", "model_spec": "fxmeta:resnet20", "data": "digits", "spec_kwargs": {},
        "input_shape": [1, 1, 8, 8], "settings": {},
        "members": [{"index": 0, "file": "../outside.pt", "seed": 0, "split": "train"}]}))
    code, _, err = run(["meta-train", zoo, "--out", tmp_path / "mn"], capsys)
    assert code == 2 and "damaged file" in err and "inside the zoo folder" in err


def test_dump_output_obeys_the_rules(tmp_path, tiny, capsys):
    code, _, err = run(["dump", tiny, "--input-shape", "1,1,8,8", "--out", tmp_path / "tiny.py"], capsys)
    assert code == 2 and "also an input" in err
    assert (tmp_path / "tiny.py").read_text() == TINY
