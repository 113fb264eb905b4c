"""Tests for fxmeta.io: model specs, safe file loading, atomic saving."""
from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import types
import uuid

import pytest
import torch
from torch import nn

import fxmeta
from fxmeta import io
from fxmeta.errors import FxmetaError, InputShapeError, OutputExistsError, SpecError, UnsafeFileError
from fxmeta.io import files
from fxmeta.io.libraries import _torchvision_shape


def tiny(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


@pytest.fixture
def fake_models(monkeypatch):
    """``fxmeta:tiny`` in the real model registry (fxmeta.models.MODELS) for the length of a test;
    ``.calls`` records what it was built with."""
    from fxmeta import models

    calls = []

    def build(**kwargs):
        calls.append(("tiny", kwargs))
        return tiny(**kwargs)

    monkeypatch.setitem(models.MODELS, "tiny", build)
    return types.SimpleNamespace(calls=calls)


def user_module(tmp_path, monkeypatch, source: str) -> str:
    """Write an importable module and return its name (unique, so no import caching)."""
    name = f"fxmeta_test_user_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


FACTORY_SOURCE = """
    import torch.nn as nn

    def build(num_classes=5):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes)).train()

    def not_a_module():
        return {"weights": 1}

    def broken(num_classes=5):
        raise RuntimeError("boom")

    VALUE = 3
"""


def same_output(a: nn.Module, b: nn.Module, shape) -> bool:
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


# ---------------------------------------------------------------------------- torchvision


def test_torchvision_spec_builds_eval_model_without_weights():
    loaded = io.resolve_model("torchvision:resnet18", num_classes=7)
    assert loaded.module.fc.out_features == 7
    assert not loaded.module.training
    assert loaded.spec == "torchvision:resnet18"
    assert loaded.spec_kwargs == {"num_classes": 7}
    assert loaded.default_input_shape == (1, 3, 224, 224)


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
def test_torchvision_inception_default_shape_is_299():
    loaded = io.resolve_model("torchvision:inception_v3", num_classes=3)
    assert loaded.default_input_shape == (1, 3, 299, 299)


def test_torchvision_vit_default_shape_is_224():
    assert _torchvision_shape("vit_b_16", torch.nn.Module) == (1, 3, 224, 224)


def test_torchvision_errors():
    with pytest.raises(SpecError, match="unknown torchvision model 'nope'"):
        io.resolve_model("torchvision:nope")
    with pytest.raises(SpecError, match="in_channels"):
        io.resolve_model("torchvision:resnet18", in_channels=1)


# ---------------------------------------------------------------------------- fxmeta:NAME


def test_fxmeta_spec_passes_kwargs_and_default_shape(fake_models):
    loaded = io.resolve_model("fxmeta:tiny", num_classes=4, in_channels=1)
    assert fake_models.calls == [("tiny", {"num_classes": 4, "in_channels": 1})]
    assert loaded.module[-1].out_features == 4
    assert loaded.default_input_shape == (1, 1, 32, 32)
    assert io.resolve_model("fxmeta:tiny").default_input_shape == (1, 3, 32, 32)
    with pytest.raises(SpecError, match="unknown model .nope.; known models: resnet20"):
        io.resolve_model("fxmeta:nope")
    with pytest.raises(SpecError, match="does not accept"):
        files._resolve("fxmeta:tiny", {"depth": 3}, trust=False, from_file=None, depth=0)


def test_fxmeta_spec_with_real_zoo():
    models = pytest.importorskip("fxmeta.models")
    loaded = io.resolve_model("fxmeta:resnet20", num_classes=10)
    assert isinstance(loaded.module, nn.Module) and not loaded.module.training
    out = loaded.module(torch.randn(*loaded.default_input_shape))
    assert out.shape == (1, 10)
    with pytest.raises(SpecError):
        models.get_model("no_such_model_name")


# ---------------------------------------------------------------------------- factories


def test_module_factory_spec(tmp_path, monkeypatch):
    name = user_module(tmp_path, monkeypatch, FACTORY_SOURCE)
    loaded = io.resolve_model(f"{name}:build", num_classes=3)
    assert loaded.module[1].out_features == 3
    assert not loaded.module.training
    assert loaded.spec == f"{name}:build" and loaded.default_input_shape is None
    # None kwargs are not passed: the factory's own default applies.
    assert io.resolve_model(f"{name}:build").module[1].out_features == 5


def test_module_factory_errors(tmp_path, monkeypatch):
    name = user_module(tmp_path, monkeypatch, FACTORY_SOURCE)
    cases = {
        "no_such_module_xyz:build": "cannot import no_such_module_xyz",
        f"{name}:missing": "has no attribute 'missing'",
        f"{name}:VALUE": "not a function",
        f"{name}:not_a_module": "returned a dict, not a torch.nn.Module",
        f"{name}:broken": "failed: RuntimeError: boom",
        "torch.nn:Identity@": "no such weights file",
    }
    for spec, message in cases.items():
        with pytest.raises(SpecError, match=message):
            io.resolve_model(spec)


def test_python_file_factory_spec(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent("""
        import dataclasses
        import torch.nn as nn

        @dataclasses.dataclass
        class Config:  # dataclasses need the module registered in sys.modules
            width: int = 6

        def make(num_classes=2):
            return nn.Linear(Config().width, num_classes)
    """))
    loaded = io.resolve_model(f"{path}:make", num_classes=9)
    assert isinstance(loaded.module, nn.Linear)
    assert (loaded.module.in_features, loaded.module.out_features) == (6, 9)
    assert loaded.spec == f"{os.path.abspath(path)}:make"


def test_python_file_sibling_import(tmp_path):
    (tmp_path / "sibling_blocks_xyz.py").write_text("import torch.nn as nn\nBLOCK = nn.Tanh\n")
    (tmp_path / "model.py").write_text("import sibling_blocks_xyz\ndef make():\n    return sibling_blocks_xyz.BLOCK()\n")
    assert isinstance(io.resolve_model(f"{tmp_path / 'model.py'}:make").module, nn.Tanh)
    assert str(tmp_path) not in sys.path


def test_python_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        io.resolve_model(f"{tmp_path / 'absent.py'}:make")
    bad = tmp_path / "bad.py"
    bad.write_text("def make(:\n")
    with pytest.raises(SpecError, match="importing .*bad.py failed: SyntaxError"):
        io.resolve_model(f"{bad}:make")
    with pytest.raises(SpecError, match="name the function"):
        io.resolve_model(str(bad))


def test_unknown_spec_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="unknown model spec 'resnet18'"):
        io.resolve_model("resnet18")
    with pytest.raises(SpecError, match="no such file"):
        io.resolve_model(str(tmp_path / "absent.pt"))
    with pytest.raises(SpecError, match="empty model spec"):
        io.resolve_model("  ")


# ---------------------------------------------------------------------------- fxmeta files


def test_save_then_plain_weights_only_load(tmp_path, fake_models):
    @dataclasses.dataclass
    class Score:
        top1: float
        shape: tuple

    module = io.resolve_model("fxmeta:tiny", num_classes=3).module
    path = tmp_path / "model.pt"
    io.save(path, module, spec="fxmeta:tiny", spec_kwargs={"num_classes": 3},
            metrics={"score": Score(0.5, (1, 2)), "steps": (1, 2)}, input_shape=(1, 3, 16, 16))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fxmeta.model" and raw["version"] == 1
    assert raw["spec"] == "fxmeta:tiny" and raw["spec_kwargs"] == {"num_classes": 3}
    assert raw["metrics"] == {"score": {"top1": 0.5, "shape": [1, 2]}, "steps": [1, 2]}
    assert raw["input_shape"] == [1, 3, 16, 16]
    assert set(raw["state_dict"]) == set(module.state_dict())
    # Cloned: later training of the module does not change what was saved.
    assert raw["state_dict"]["0.weight"].data_ptr() != module[0].weight.data_ptr()


def test_save_load_round_trip(tmp_path, fake_models):
    module = io.resolve_model("fxmeta:tiny", num_classes=3).module
    with torch.no_grad():
        module[1].running_mean.add_(1.5)
    path = tmp_path / "model.pt"
    io.save(path, module, spec="fxmeta:tiny", spec_kwargs={"num_classes": 3}, input_shape=(2, 3, 8, 8))
    loaded = io.resolve_model(str(path))
    assert loaded.spec == "fxmeta:tiny" and loaded.spec_kwargs == {"num_classes": 3}
    assert loaded.default_input_shape == (2, 3, 8, 8) and loaded.plan is None
    assert same_output(module.eval(), loaded.module, (2, 3, 8, 8))
    rebuilt = fxmeta.load(path)
    assert not rebuilt.training and same_output(module, rebuilt, (1, 3, 8, 8))
    with pytest.raises(SpecError, match="drop num_classes=4"):
        io.resolve_model(str(path), num_classes=4)


def test_torchvision_save_load_round_trip(tmp_path):
    module = io.resolve_model("torchvision:squeezenet1_1", num_classes=3).module
    path = tmp_path / "sq.pth"
    io.save(path, module, spec="torchvision:squeezenet1_1", spec_kwargs={"num_classes": 3})
    loaded = io.resolve_model(str(path))
    assert loaded.default_input_shape == (1, 3, 224, 224)
    assert same_output(module, loaded.module, (1, 3, 64, 64))


def test_saved_factory_spec_needs_trust(tmp_path, monkeypatch):
    name = user_module(tmp_path, monkeypatch, FACTORY_SOURCE)
    module = io.resolve_model(f"{name}:build", num_classes=3).module
    path = tmp_path / "m.pt"
    io.save(path, module, spec=f"{name}:build", spec_kwargs={"num_classes": 3})
    # The file chooses which code to import and call: not without trust.
    with pytest.raises(UnsafeFileError, match=f"builds its architecture with {name}:build.*--trust"):
        io.resolve_model(str(path))
    assert same_output(module, io.load(path, trust=True), (1, 3, 2, 2))


def test_saved_spec_loop_is_refused(tmp_path, fake_models):
    path = tmp_path / "loop.pt"
    torch.save({"format": "fxmeta.model", "version": 1, "spec": str(path), "spec_kwargs": {},
                "state_dict": {}}, path)
    with pytest.raises(SpecError, match="levels deep"):
        io.resolve_model(str(path))


def test_saved_file_problems(tmp_path, fake_models):
    module = tiny()
    base = {"format": "fxmeta.model", "version": 1, "spec": "fxmeta:tiny", "spec_kwargs": {},
            "state_dict": module.state_dict()}
    cases = {
        "newer.pt": ({**base, "version": 2}, "version 2; this fxmeta reads up to 1"),
        "other.pt": ({**base, "format": "other"}, "has format 'other'"),
        "damaged.pt": ({k: v for k, v in base.items() if k != "spec"}, "damaged"),
        "list.pt": ([1, 2], "holds a list"),
    }
    for name, (payload, message) in cases.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(SpecError, match=message):
            io.resolve_model(str(tmp_path / name))


def test_save_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="architecture spec"):
        io.save(tmp_path / "a.pt", tiny(), spec="")
    with pytest.raises(ValueError, match="input_shape"):
        io.save(tmp_path / "a.pt", tiny(), spec="fxmeta:tiny", plan={"width": 4})
    with pytest.raises(TypeError, match="cannot store a object"):
        io.save(tmp_path / "a.pt", tiny(), spec="fxmeta:tiny", metrics={"x": object()})
    assert not any(tmp_path.iterdir())


def test_plain_data_conversions():
    import enum

    class Kind(enum.Enum):
        A = "a"

    class Plan:
        def to_dict(self):
            return {"groups": ({"idx": torch.tensor([1, 2])},)}

    out = io.plain_data({Kind.A: {1, 3, 2}, (1, 2): Plan(), "n": torch.tensor(2.0)})
    assert out["a"] == [1, 2, 3]
    assert torch.equal(out["(1, 2)"]["groups"][0]["idx"], torch.tensor([1, 2]))
    assert isinstance(out["(1, 2)"]["groups"], list)


# ---------------------------------------------------------------------------- pruned files


def test_pruned_file_applies_plan_before_loading(tmp_path, fake_models):
    """A pruned file holds the spec, the plan and the slimmer weights: loading rebuilds the
    architecture, replays the plan on it, then loads the weights."""
    model = tiny(num_classes=3).eval()
    x = torch.randn(1, 3, 8, 8)
    result = fxmeta.prune(model, x, speedup=1.5)
    path = tmp_path / "pruned.pt"
    io.save(path, result.module, spec="fxmeta:tiny", spec_kwargs={"num_classes": 3}, plan=result.plan,
            input_shape=(1, 3, 8, 8))
    loaded = io.resolve_model(str(path))
    assert loaded.plan["groups"] == [dict(g) for g in result.plan["groups"]]
    assert not loaded.module.training
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), result.module(x))
    # A plan file as weights for an architecture spec is refused with a hint.
    with pytest.raises(SpecError, match="holds a pruned fxmeta model"):
        io.resolve_model(f"fxmeta:tiny@{path}", num_classes=3)


# ---------------------------------------------------------------------------- SPEC@FILE


def test_state_dict_file_needs_architecture(tmp_path, fake_models):
    module = tiny(num_classes=3)
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), path)
    with pytest.raises(SpecError, match=r"only weights .*SPEC@.*torchvision:resnet18@"):
        io.resolve_model(str(path))
    loaded = io.resolve_model(f"fxmeta:tiny@{path}", num_classes=3)
    assert loaded.spec == "fxmeta:tiny" and loaded.spec_kwargs == {"num_classes": 3}
    assert "with weights from" in loaded.source
    assert same_output(module.eval(), loaded.module, (1, 3, 8, 8))


def test_state_dict_layouts(tmp_path, fake_models):
    module = tiny(num_classes=3)
    ddp = {f"module.{k}": v for k, v in module.state_dict().items()}
    for name, payload in {"ddp.pt": ddp, "ckpt.pt": {"state_dict": module.state_dict(), "epoch": 3}}.items():
        torch.save(payload, tmp_path / name)
        loaded = io.resolve_model(f"fxmeta:tiny@{tmp_path / name}", num_classes=3)
        assert same_output(module.eval(), loaded.module, (1, 3, 8, 8))
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(SpecError, match="holds no state_dict"):
        io.resolve_model(f"fxmeta:tiny@{tmp_path / 'meta.pt'}")


def test_spec_at_file_mismatch_names_keys(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)).state_dict(), path)
    with pytest.raises(SpecError) as info:
        io.resolve_model(f"torchvision:squeezenet1_1@{path}")
    message = str(info.value)
    assert "does not fit torchvision:squeezenet1_1" in message and "\n" not in message
    assert "missing keys (features.0.weight, features.0.bias, features.3.squeeze.weight, ...)" in message
    assert "4 unexpected keys (0.weight, 0.bias, 1.weight, ...)" in message


def test_spec_at_file_size_mismatch(tmp_path, fake_models):
    path = tmp_path / "w.pt"
    torch.save(tiny(num_classes=3).state_dict(), path)
    with pytest.raises(SpecError, match=r"size mismatches, file vs model \(5.weight \(3, 8\) vs \(10, 8\)"):
        io.resolve_model(f"fxmeta:tiny@{path}")


# ---------------------------------------------------------------------------- pickles


def test_pickled_module_needs_trust(tmp_path):
    module = nn.Sequential(nn.Linear(3, 2), nn.ReLU()).train()
    path = tmp_path / "pickled.pt"
    torch.save(module, path)
    with pytest.raises(UnsafeFileError) as info:
        io.resolve_model(str(path))
    message = str(info.value)
    assert "is a pickled module" in message and "--trust" in message and "state_dict" in message
    assert "torch.nn.modules" in message
    loaded = io.resolve_model(str(path), trust=True)
    assert not loaded.module.training and same_output(module.eval(), loaded.module, (4, 3))
    assert loaded.spec == str(path) and "pickled module" in loaded.source


def test_legacy_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="torch.nn.modules.linear.Linear"):
        io.resolve_model(str(path))
    assert isinstance(io.load(path, trust=True), nn.Linear)


def test_pickled_weights_with_trust(tmp_path, fake_models):
    path = tmp_path / "pickled.pt"
    module = tiny(num_classes=3)
    torch.save(module, path)
    with pytest.raises(UnsafeFileError):
        io.resolve_model(f"fxmeta:tiny@{path}", num_classes=3)
    loaded = io.resolve_model(f"fxmeta:tiny@{path}", num_classes=3, trust=True)
    assert same_output(module.eval(), loaded.module, (1, 3, 8, 8))


def test_unreadable_files(tmp_path):
    for name, data in {"junk.pt": b"not a torch file", "empty.pt": b""}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SpecError, match="not a file torch.load can read"):
            io.resolve_model(str(tmp_path / name), trust=True)


def test_trusted_pickle_with_missing_class(tmp_path):
    path = tmp_path / "gone.pt"
    source = "import torch.nn as nn\nclass Gone(nn.Linear):\n    pass\n"
    namespace = types.ModuleType("fxmeta_test_gone_module")
    exec(source, namespace.__dict__)
    sys.modules[namespace.__name__] = namespace
    try:
        torch.save(namespace.Gone(2, 2), path)
    finally:
        del sys.modules[namespace.__name__]
    with pytest.raises(SpecError, match="must be importable"):
        io.resolve_model(str(path), trust=True)


# ---------------------------------------------------------------------------- torch.export


def test_export_program_round_trip(tmp_path):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    example = torch.randn(2, 3, 6, 6)
    program = torch.export.export(module, (example,))
    path = tmp_path / "model.pt2"
    io.atomic_save(program, path)
    with pytest.raises(UnsafeFileError, match="torch.export program.*--trust"):
        io.resolve_model(str(path))
    loaded = io.resolve_model(str(path), trust=True)
    assert loaded.default_input_shape == (2, 3, 6, 6)
    assert "torch.export" in loaded.source
    assert same_output(module, loaded.module, (2, 3, 6, 6))


def test_export_program_unreadable(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"junk")
    with pytest.raises(SpecError, match="not a torch.export program"):
        io.resolve_model(str(path), trust=True)


# ---------------------------------------------------------------------------- writing


def test_atomic_save_writes_and_refuses_overwrite(tmp_path):
    path = tmp_path / "out.pt"
    io.atomic_save({"a": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        io.atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    io.atomic_save({"a": torch.zeros(2)}, path, force=True)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]


def test_atomic_save_failure_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(torch, "save", failing_save)
    path = tmp_path / "out.pt"
    with pytest.raises(RuntimeError, match="disk trouble"):
        io.atomic_save({"a": 1}, path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="disk trouble"):
        io.save(path, tiny(), spec="fxmeta:tiny", force=True)
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]


def test_atomic_save_bad_targets(tmp_path):
    with pytest.raises(OutputExistsError, match="is a directory"):
        io.atomic_save({}, tmp_path, force=True)
    with pytest.raises(FxmetaError, match="does not exist; create it first"):
        io.atomic_save({}, tmp_path / "missing" / "out.pt")


def test_check_output_path(tmp_path, monkeypatch):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    io.check_output_path(tmp_path / "new.pt", ["torchvision:resnet18", str(weights)])
    for inputs in ([str(weights)], ["w.pt"], [f"torchvision:resnet18@{weights}"]):
        with pytest.raises(OutputExistsError, match="is also an input"):
            io.check_output_path(str(weights), inputs, force=True)
    (tmp_path / "net.py").write_text("")
    with pytest.raises(OutputExistsError, match="is also an input"):
        io.check_output_path("net.py", [f"{tmp_path / 'net.py'}:make@w.pt"], force=True)
    link = tmp_path / "link.pt"
    link.symlink_to(weights)
    with pytest.raises(OutputExistsError, match="is also an input"):
        io.check_output_path(link, [str(weights)], force=True)
    hard = tmp_path / "hard.pt"
    os.link(weights, hard)
    with pytest.raises(OutputExistsError, match="is also an input"):
        io.check_output_path(hard, [str(weights)], force=True)
    other = tmp_path / "other.pt"
    other.write_bytes(b"y")
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        io.check_output_path(other, [str(weights)])
    io.check_output_path(other, [str(weights)], force=True)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("text, shape", [
    ("1,3,224,224", (1, 3, 224, 224)),
    (" 1, 3, 32, 32 ", (1, 3, 32, 32)),
    ("(1, 3, 8, 8)", (1, 3, 8, 8)),
    ("1x3x8x8", (1, 3, 8, 8)),
    ("16", (16,)),
])
def test_parse_input_shape(text, shape):
    assert io.parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,,3", "1,3,", "a,b", "1,0,3", "1,-3", "1.5,2", "1,²"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(InputShapeError, match="positive integers separated by commas"):
        io.parse_input_shape(text)
