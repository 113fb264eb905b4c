"""Files that stand alone (defect 4), damaged files named as such (defect 9), and pruning
that keeps outputs, index ops and tied weights right (defects 6, 7, 10)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import fxmeta
from fxmeta import cli
from fxmeta.errors import DamagedFileError, FxmetaError, PruningError, SpecError
from fxmeta.pruning.pruner import prune

TINY = """
from torch import nn


def make(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""
SHAPE = ["--input-shape", "1,1,8,8", "--speedup", "1.3"]


def _prune_cli(*argv) -> None:
    assert cli.main(["prune", *map(str, argv)]) == 0


def _input(kind: str, d) -> tuple[list[str], bool]:
    """An input of one kind the CLI accepts, in folder ``d``: (prune arguments, needs trust)."""
    (d / "tiny.py").write_text(TINY)
    torch.manual_seed(0)
    from fxmeta.io.files import resolve_model

    model = resolve_model(f"{d / 'tiny.py'}:make").module
    if kind == "spec":
        return ["fxmeta:resnet20", "--in-channels", "1"], False
    if kind == "spec@weights":
        from fxmeta.models import resnet20

        torch.save(resnet20(in_channels=1).state_dict(), d / "w.pt")
        return [f"fxmeta:resnet20@{d / 'w.pt'}", "--in-channels", "1"], False
    if kind == "fxmeta file":
        fxmeta.io.save(d / "m.pt", model, spec=f"{d / 'tiny.py'}:make")
        return [d / "m.pt", "--trust"], True
    if kind == "pruned file":
        _prune_cli("fxmeta:resnet20", "--in-channels", "1", *SHAPE, "--out", d / "first.pt")
        return [d / "first.pt"], False
    if kind == "pruned file of a factory":
        _prune_cli(f"{d / 'tiny.py'}:make", *SHAPE, "--out", d / "first.pt")
        return [d / "first.pt", "--trust"], True
    if kind == "pickled module":
        torch.save(model, d / "pickled.pt")
        return [d / "pickled.pt", "--trust"], True
    if kind == "file.py:factory":
        return [f"{d / 'tiny.py'}:make"], True
    raise AssertionError(kind)


KINDS = ["spec", "spec@weights", "fxmeta file", "pruned file", "pruned file of a factory", "pickled module",
         "file.py:factory"]


@pytest.mark.parametrize("kind", KINDS)
def test_4_pruned_file_loads_after_the_input_is_deleted(tmp_path, kind, capsys):
    src = tmp_path / "src"
    src.mkdir()
    args, trust = _input(kind, src)
    _prune_cli(*args, *SHAPE, "--out", tmp_path / "pruned.pt")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        want = fxmeta.load(tmp_path / "pruned.pt", trust=True)(x)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "pruned.pt", elsewhere / "copy.pt")
    shutil.rmtree(src)
    os.remove(tmp_path / "pruned.pt")
    if trust:  # the architecture is code: loading it still needs trust, and says so
        with pytest.raises(fxmeta.UnsafeFileError, match="--trust"):
            fxmeta.load(elsewhere / "copy.pt")
    with torch.no_grad():
        got = fxmeta.load(elsewhere / "copy.pt", trust=trust)(x)
    torch.testing.assert_close(got, want)
    capsys.readouterr()


def _saved(tmp_path):
    from fxmeta.models import resnet20

    _prune_cli("fxmeta:resnet20", "--in-channels", "1", *SHAPE, "--out", tmp_path / "p.pt")
    assert resnet20  # the architecture the file names
    return torch.load(tmp_path / "p.pt", weights_only=True)


def _tamper(tmp_path, obj, edit):
    edit(obj)
    obj.pop("checksum", None)  # an edited file whose checksum was dropped as well
    torch.save(obj, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


TAMPER = {
    "plan.groups missing": (lambda o: o["plan"].pop("groups"), "plan.groups is missing"),
    "removed not a list": (lambda o: o["plan"]["groups"][0].__setitem__("removed", "abc"), "removed is the str"),
    "duplicated index": (lambda o: o["plan"]["groups"][0]["removed"].__setitem__(
        slice(0, 2), [o["plan"]["groups"][0]["removed"][0]] * 2), "more than once"),
    "input shape text": (lambda o: o.__setitem__("input_shape", ["a"]), "input_shape"),
    "negative shape": (lambda o: o.__setitem__("input_shape", [1, -1, 8, 8]), "input_shape"),
    "version string": (lambda o: o.__setitem__("version", "1"), "version is the str '1'"),
    "nan weights": (lambda o: o["state_dict"]["conv1.weight"].fill_(float("nan")), "NaN"),
    "int64 weights": (lambda o: o["state_dict"].__setitem__("conv1.weight", o["state_dict"]["conv1.weight"].long()),
                      "torch.int64"),
}


@pytest.mark.parametrize("case", TAMPER)
def test_9_damaged_files_say_so(tmp_path, case, capsys):
    edit, message = TAMPER[case]
    path = _tamper(tmp_path, _saved(tmp_path), edit)
    with pytest.raises(DamagedFileError, match="damaged file") as info:
        fxmeta.load(path)
    assert message in str(info.value)
    code = cli.main(["prune", str(path), "--out", str(tmp_path / "o.pt")])
    assert code == 2 and "damaged file" in capsys.readouterr().err


def test_9_checksum_catches_a_changed_weight(tmp_path):
    obj = _saved(tmp_path)
    obj["state_dict"]["conv1.weight"][0, 0, 0, 0] += 1.0
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(DamagedFileError, match="checksum"):
        fxmeta.load(tmp_path / "bad.pt")


def test_9_newer_version_asks_for_an_update(tmp_path):
    path = _tamper(tmp_path, _saved(tmp_path), lambda o: o.__setitem__("version", 99))
    with pytest.raises(SpecError, match="update fxmeta"):
        fxmeta.load(path)


def test_9_damaged_metanet_file(tmp_path):
    from fxmeta.metanet.files import load_metanet

    torch.save({"format": "fxmeta.metanet/1", "config": {"width": "wide"}, "state_dict": {}}, tmp_path / "m.pt")
    with pytest.raises(FxmetaError, match="damaged file"):
        load_metanet(str(tmp_path / "m.pt"))


# 6. every tensor leaf of the output is an output ------------------------------------------------
class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))
        return {"logits": self.fc(h), "extra": [(x.sum(),)]}


@pytest.mark.parametrize("check", [True, False])
def test_6_tensors_inside_dict_outputs_are_never_pruned(check):
    x = torch.randn(1, 3, 10, 10)
    result = prune(DictOut().eval(), x, speedup=1.3, check=check)
    assert result.module(x)["logits"].shape == (1, 10)


# 7. index ops with an index buffer ---------------------------------------------------------------
class IndexSelect(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 1)
        self.register_buffer("idx", torch.tensor([7, 0, 3, 3, 1, 2, 5, 6]))

    def forward(self, x):
        h = torch.relu(self.c1(x))
        if self.op == "index_select":
            h = torch.index_select(h, 1, self.idx)
        else:
            h = torch.gather(h, 1, self.idx.view(1, 8, 1, 1).expand_as(h))
        return self.c3(torch.relu(self.c2(h))).mean((2, 3))


@pytest.mark.parametrize("op", ["index_select", "gather"])
def test_7_index_ops_with_an_index_buffer_are_frozen(op):
    x = torch.randn(1, 3, 10, 10)
    model = IndexSelect(op).eval()
    result = prune(model, x, speedup=1.1)  # the self-check passes
    assert result.module.c1.out_channels == 8 and result.module.c2.in_channels == 8


def test_7_selfcheck_failure_names_the_module_and_suggests_ignore():
    def wrong(ctx, node):  # a wrong user rule: index_select passes its channel ids through
        return ctx.dims(node.args[0])

    with pytest.raises(PruningError, match=r"--ignore c\d"):
        prune(IndexSelect("index_select").eval(), torch.randn(1, 3, 10, 10), speedup=1.1,
              ignore=["c3"], rules={torch.index_select: wrong})


# 10. tied weights stay tied ----------------------------------------------------------------------
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        return self.fc((torch.relu(self.a(h)) + torch.relu(self.b(h))).mean((2, 3)))


def test_10_tied_weights_stay_tied():
    x = torch.randn(1, 3, 8, 8)
    result = prune(Tied().eval(), x, speedup=1.2)
    assert result.module.a.weight is result.module.b.weight


# ------------------------------------------------------------------ inputs, names, leftovers


def test_an_example_input_is_never_overwritten(tmp_path):
    from fxmeta.cli.app import main

    xin = tmp_path / "xin.pt"
    torch.save(torch.randn(1, 1, 8, 8), xin)
    before = xin.read_bytes()
    for extra in (["--out", str(xin), "--force"], ["--out", str(tmp_path / "p.pt"), "--log", str(xin), "--force"]):
        argv = ["transform" if "--log" in extra else "prune", "fxmeta:resnet20", "--in-channels", "1",
                "--example-input", str(xin), *extra]
        assert main(argv) == 2
    assert xin.read_bytes() == before


def test_a_name_too_long_for_the_temp_file_is_refused_before_any_work(tmp_path, capsys):
    from fxmeta.cli.app import main

    out = tmp_path / ("p" * 250 + ".pt")  # a valid name (255 bytes) whose temp file would not be
    assert main(["prune", "fxmeta:resnet20", "--in-channels", "1", "--out", str(out)]) == 2
    assert "file name is too long" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_an_output_ending_in_a_separator_is_refused_up_front(tmp_path, capsys):
    from fxmeta.cli.app import main

    assert main(["prune", "fxmeta:resnet20", "--in-channels", "1", "--out", str(tmp_path / "pruned") + os.sep]) == 2
    # a separator asks for a Hugging Face folder, which a non-transformers model cannot be written as
    assert "not a transformers model" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_dead_runs_temp_file_is_removed_by_the_next_save(tmp_path):
    from fxmeta.io.saving import atomic_write_text

    out = tmp_path / "out.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.{int(dead.stdout)}.0123456789ab.tmp"
    live = tmp_path / f".out.json.{os.getpid()}.ba9876543210.tmp"  # a running writer's: kept
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    atomic_write_text("{}", out)
    assert out.read_text() == "{}" and not stale.exists() and live.exists()


def test_weights_with_nan_are_refused_before_any_work(tmp_path, capsys):
    from fxmeta.cli.app import main
    from fxmeta.models import resnet20

    state = resnet20(in_channels=1).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "w.pt")
    out = tmp_path / "p.pt"
    assert main(["prune", f"fxmeta:resnet20@{tmp_path / 'w.pt'}", "--in-channels", "1", "--out", str(out)]) == 2
    assert "holds NaN or infinite values (conv1.weight)" in capsys.readouterr().err
    assert not out.exists()


def test_a_huge_example_input_is_a_user_error(tmp_path, capsys):
    from fxmeta.cli.app import main

    out = tmp_path / "p.pt"
    assert main(["prune", "fxmeta:resnet20", "--input-shape", "1,1,100000,100000", "--out", str(out)]) == 2
    assert "give a smaller --input-shape" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------- messages that point the right way


class _Evil:
    def __reduce__(self):
        return (print, ("never printed",))


@pytest.mark.parametrize("case", ["float16 input", "config without hf:", "float16 weights", "min-keep 1",
                                  "evil pt2", "hostile example input", "hostile hf bin"])
def test_messages_say_what_to_do_with_fxmeta(case, tmp_path, capsys):
    from fxmeta.cli.app import main

    out, extra = tmp_path / "o.pt", []
    spec = "fxmeta:resnet20"
    if case == "float16 input":
        extra, want = ["--input-dtype", "float16"], "the input is float16 and the weights are float32"
    elif case == "config without hf:":
        (tmp_path / "cfg.json").write_text('{"model_type": "llama"}')
        spec, want = str(tmp_path / "cfg.json"), "is given as hf:"
    elif case == "float16 weights":
        from fxmeta.models import resnet20

        torch.save({k: v.half() for k, v in resnet20(in_channels=1).state_dict().items()}, tmp_path / "h.pt")
        spec, extra, want = f"fxmeta:resnet20@{tmp_path / 'h.pt'}", ["--in-channels", "1"], "convert them first"
    elif case == "min-keep 1":
        extra, want = ["--min-keep", "1"], "lower the target (--speedup) or --min-keep"
    elif case == "evil pt2":
        (tmp_path / "evil.pt2").write_text("not a zip")
        spec, extra, want = str(tmp_path / "evil.pt2"), ["--trust"], "is not a torch.export program"
    elif case == "hostile example input":
        torch.save(_Evil(), tmp_path / "x.pt")
        extra, want = ["--example-input", str(tmp_path / "x.pt")], "holds more than tensors"
    else:
        pytest.importorskip("transformers", minversion="5")
        folder = tmp_path / "hf"
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"], '
                                            '"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, '
                                            '"num_attention_heads": 2, "vocab_size": 32}')
        torch.save({"w": _Evil()}, folder / "pytorch_model.bin")
        spec, want = f"hf:{folder}", "convert the folder to safetensors"
    assert main(["prune", spec, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert want in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(">")]  # stage notes aside
    assert "weights_only" not in err and "Traceback" not in err and len(lines) == 1, err
    assert not out.exists()
