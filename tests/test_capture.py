"""The torch.export front end: programs captured exactly, pruned like traced models, shipped as programs."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fuzzing import variants
from hypothesis import HealthCheck, given, settings
from torch import Tensor, nn

import fxmeta
from fxmeta import cli
from fxmeta.analysis.channels import analyze
from fxmeta.capture import from_program, trace
from fxmeta.errors import UnsupportedModelError
from fxmeta.keys import CAPTURE, UNMAPPED_OPS
from fxmeta.models import get_model

from helpers import randomize_bn

torch.set_num_threads(1)


class Block(nn.Module):
    """A ViT-like block: LayerNorm, fused qkv, heads through reshape / permute / unbind, SDPA, MLP."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))


MODELS = {  # name: (factory, input shape)
    "resnet20": (lambda: get_model("resnet20"), (1, 3, 32, 32)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (1, 3, 64, 64)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (1, 3, 64, 64)),
    "mlp": (_mlp, (2, 20)),
    "vit_block": (Block, (2, 8, 32)),
}
CNNS = ("resnet20", "resnet18", "mobilenet_v2")


def _case(name: str) -> tuple[nn.Module, Tensor, torch.export.ExportedProgram]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = randomize_bn(factory()).eval()
    x = torch.randn(*shape)
    return model, x, torch.export.export(model, (x,))


@pytest.mark.parametrize("name", MODELS)
def test_captured_graph_is_exact_and_keeps_the_models_names(name):
    model, x, program = _case(name)
    gm = trace(program, x)
    assert gm.meta[CAPTURE] == "export" and gm.meta[UNMAPPED_OPS] == {}
    with torch.no_grad():
        assert torch.equal(gm(x), program.module()(x))
        assert torch.equal(gm(x), model(x))
    assert sorted(gm.state_dict()) == sorted(model.state_dict())  # in the program's order, which may differ
    assert all(gm.get_parameter(n) is p for n, p in model.named_parameters())  # the model's own objects
    calls = {type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"}
    assert calls & {nn.Conv2d, nn.Linear} and not any(
        isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "mobilenet_v2" else n for n in MODELS])
def test_pruning_a_program_removes_what_pruning_the_module_removes(name):
    model, x, program = _case(name)
    via_export = fxmeta.prune(program, x, speedup=2.0)  # self-checked
    via_fx = fxmeta.prune(model, x, speedup=2.0)
    assert via_export.plan["groups"] == via_fx.plan["groups"] and via_export.plan["groups"]
    assert via_export.plan["capture"] == "export" and via_fx.plan["capture"] == "fx"
    assert via_export.speedup == via_fx.speedup
    if name in CNNS:
        assert 2.0 <= via_export.speedup < 2.2


@pytest.mark.parametrize("name", ["resnet20", "vit_block"])
def test_pruned_program_round_trips_and_runs_without_fxmeta(name, tmp_path):
    model, x, program = _case(name)
    result = fxmeta.prune(program, x, speedup=2.0)
    path = tmp_path / "pruned.pt2"
    torch.export.save(result.program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.module(x), atol=1e-6)
        if name == "resnet20":  # the batch dimension stays dynamic
            xb = torch.randn(5, *x.shape[1:])
            assert torch.allclose(loaded(xb), result.module(xb), atol=1e-6)
    assert fxmeta.count_flops(result.program, x) == result.flops_after


def test_core_aten_and_saved_programs_capture_the_same():
    model, x, program = _case("resnet18")
    core = program.run_decompositions()  # convolution, _native_batch_norm_legit_no_training, addmm ...
    gm = trace(core, x)
    with torch.no_grad():
        assert torch.equal(gm(x), core.module()(x))
    assert gm.meta[UNMAPPED_OPS] == {}
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} == {
        n.target for n in trace(model, x).graph.nodes if n.op == "call_module" and "relu" not in n.target
        and "pool" not in n.target}
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    assert sorted(trace(torch.export.load(buf), x).state_dict()) == sorted(model.state_dict())


@torch.library.custom_op("fxmeta_test::mix_channels", mutates_args=())
def mix_channels(x: Tensor) -> Tensor:
    return x + x.mean(1, keepdim=True)


@mix_channels.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("fxmeta_test::scale", mutates_args=())
def scale(x: Tensor) -> Tensor:
    return x * 2


@scale.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 8, 1)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.ops.fxmeta_test.scale(torch.relu(self.c1(x)))  # entry by entry: the probe proves it
        h = torch.ops.fxmeta_test.mix_channels(torch.relu(self.bn(self.c2(h))))  # mixes channels: frozen
        return self.fc(torch.relu(self.c3(h)).mean((2, 3)))


def test_ops_the_table_does_not_know_stay_and_are_probed_or_frozen():
    model = randomize_bn(WithCustomOps()).eval()
    x = torch.randn(1, 3, 12, 12)
    program = torch.export.export(model, (x,))
    analysis = analyze(program, x)
    assert analysis.gm.meta[UNMAPPED_OPS] == {"fxmeta_test.mix_channels.default": 1, "fxmeta_test.scale.default": 1}
    owned = {(name, dim) for g in analysis.groups for name, dim, _ in g.slices}
    assert ("c2.weight", 0) not in owned and ("bn.weight", 0) not in owned  # feeds mix_channels: frozen
    assert ("c1.weight", 0) in owned and ("c3.weight", 0) in owned  # scale is proven by the probe
    assert any("probe" in why or "mixes" in why for why in analysis.frozen_reasons.values())
    result = fxmeta.prune(program, x, speedup=1.5)  # self-checked against the masked original
    assert result.module.c2.weight.shape[0] == 32 and result.module.c1.weight.shape[0] < 16
    with torch.no_grad():
        assert torch.allclose(result.program.module()(x), result.module(x), atol=1e-6)


class ShapeBranch(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        if x.shape[-1] > 8:
            h = torch.relu(self.c2(h))
        return self.fc(h.mean((2, 3)))


class Cond(ShapeBranch):
    """Data-dependent control flow written with torch.cond."""

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.cond(h.sum() > 0, lambda t: t * 2, lambda t: t - 1, (h,))
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


def test_auto_falls_back_to_export_when_fx_cannot_trace():
    model, x = ShapeBranch().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(UnsupportedModelError, match="torch.fx cannot trace"):
        trace(model, x, capture="fx")
    assert trace(model, x).meta[CAPTURE] == "export"
    result = fxmeta.prune(model, x, speedup=2.0)
    assert result.plan["capture"] == "export" and result.speedup >= 2.0 and result.program is None
    replayed = fxmeta.pruning.plan.apply_plan(model, result.plan, x)  # captured as the plan says
    with torch.no_grad():
        assert torch.equal(replayed(x), result.module(x))


def test_torch_cond_is_kept_and_its_channels_frozen():
    model, x = Cond().eval(), torch.randn(1, 3, 8, 8)
    gm = trace(model, x)
    with torch.no_grad():
        assert gm.meta[CAPTURE] == "export" and torch.equal(gm(x), model(x))
    result = fxmeta.prune(model, x, speedup=1.3)
    assert result.module.c1.weight.shape[0] == 16  # feeds the cond: frozen
    assert result.module.c2.weight.shape[0] < 16


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Linear(8, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.fc((torch.relu(self.a(h)) + torch.relu(self.b(h))).mean((2, 3)))


def test_tied_weights_stay_tied_even_through_a_saved_program():
    model, x = Tied().eval(), torch.randn(1, 3, 8, 8)
    program = torch.export.export(model, (x,))
    gm = trace(program, x)
    assert gm.a.weight is gm.b.weight is model.a.weight
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = trace(torch.export.load(buf), x)  # saving unties them; the program reads one tensor for both
    assert loaded.a.weight is loaded.b.weight
    pruned = fxmeta.prune(program, x, speedup=1.2)
    assert pruned.plan["groups"] == fxmeta.prune(model, x, speedup=1.2).plan["groups"]
    assert pruned.module.a.weight is pruned.module.b.weight


def test_unsupported_programs_fail_in_one_clear_line():
    model = nn.Linear(4, 2).eval()
    program = torch.export.export(model, (), {"input": torch.randn(1, 4)})
    with pytest.raises(UnsupportedModelError, match="keyword or nested inputs"):
        from_program(program)
    with pytest.raises(UnsupportedModelError, match="capture must be one of"):
        trace(model, torch.randn(1, 4), capture="jit")
    with pytest.raises(UnsupportedModelError, match="capture='export'"):
        trace(torch.export.export(model, (torch.randn(1, 4),)), torch.randn(1, 4), capture="fx")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants())
def test_random_graphs_capture_exactly_and_analyse_like_fx(case):
    model, in_ch = case
    model = randomize_bn(model).eval()
    x = torch.randn(2, in_ch, 6, 6)
    gm = trace(torch.export.export(model, (x,)), x)
    with torch.no_grad():
        want, got = torch.utils._pytree.tree_leaves(model(x)), torch.utils._pytree.tree_leaves(gm(x))
    assert len(want) == len(got) and all(torch.equal(w, g) for w, g in zip(want, got))
    fx_groups = [(g.key, g.units) for g in analyze(model, x, capture="fx").groups]
    assert [(g.key, g.units) for g in analyze(gm, x).groups] == fx_groups


def test_cli_prunes_a_saved_program_and_ships_a_program(tmp_path, capsys):
    model, x, program = _case("resnet20")
    src = tmp_path / "r20.pt2"
    torch.export.save(program, str(src))
    out, shipped = tmp_path / "pruned.pt", tmp_path / "pruned.pt2"
    argv = ["prune", str(src), "--trust", "--capture", "export", "--speedup", "2", "--out", str(out),
            "--export", str(shipped)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    reference = fxmeta.prune(model, x, speedup=2.0)
    rebuilt = fxmeta.load(out, trust=True)  # the plan replays on the program stored in the file
    deployed = torch.export.load(str(shipped)).module()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), reference.module(x), atol=1e-5)
        assert torch.allclose(deployed(x), reference.module(x), atol=1e-5)


def test_cli_dump_gives_the_same_ir_through_either_capture(capsys):
    assert cli.main(["dump", "fxmeta:resnet20", "--capture", "export", "--input-shape", "1,3,32,32"]) == 0
    dumped = capsys.readouterr().out
    assert cli.main(["dump", "fxmeta:resnet20", "--capture", "fx", "--input-shape", "1,3,32,32"]) == 0
    assert capsys.readouterr().out == dumped  # the same IR either way


def test_the_transform_pipeline_takes_a_program():
    from fxmeta.pipeline.transform import TransformConfig, transform
    from fxmeta.pruning.spec import PruneSpec

    model, x, program = _case("resnet20")
    result = transform(program, x, TransformConfig(prune=PruneSpec(2.0)))
    assert result.plan["capture"] == "export" and result.plan["groups"] == fxmeta.prune(model, x).plan["groups"]
