"""MetanetPass and the documented pass pipeline (Lower → Metanet → Raise → RemoveChannels)."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_manager import PassManager

from fxmeta import models
from fxmeta.errors import FxmetaError, SpecError, UnsupportedModelError
from fxmeta.ir import WeightGraph
from passes import LowerPass, MetanetPass, RaisePass

from helpers import randomize_bn

torch.set_num_threads(1)


def _model():
    return randomize_bn(models.resnet20(in_channels=1)).eval()


def _double_convs(graph: WeightGraph) -> WeightGraph:
    """A stand-in metanetwork with a known answer: every conv kernel times two."""
    edges = [l.edge * 2 if l.edge is not None and l.edge_kind.startswith("conv") else l.edge for l in graph.layers]
    return graph.with_features(edges, [l.node for l in graph.layers])


def test_metanet_pass_rewrites_the_ir_that_raise_pass_builds():
    model, x = _model(), torch.randn(2, 1, 8, 8)
    gm = fx.symbolic_trace(model)
    out = PassManager([LowerPass(x), MetanetPass(_double_convs), RaisePass()])(gm).graph_module
    new, old = out.state_dict(), model.state_dict()
    assert new.keys() == old.keys()
    for name, value in old.items():
        is_conv = name.endswith("weight") and value.dim() == 4
        assert torch.equal(new[name], value * 2 if is_conv else value), name
    # ReLU(2 * conv) with BatchNorm in between is not 2 * the output, but it does change it
    with torch.no_grad():
        assert not torch.allclose(out(x), model(x))


def test_metanet_pass_leaves_the_module_and_replaces_the_ir():
    model, x = _model(), torch.randn(1, 1, 8, 8)
    gm = fx.symbolic_trace(model)
    LowerPass(x)(gm)
    lowered = gm.meta["fxmeta.ir"]
    result = MetanetPass(_double_convs)(gm)
    assert result.graph_module is gm and result.modified  # the IR it carries was replaced
    assert gm.meta["fxmeta.ir"] is not lowered
    assert torch.equal(gm.meta["fxmeta.ir"].layer("conv1").edge, lowered.layer("conv1").edge * 2)


def test_metanet_pass_errors():
    gm = fx.symbolic_trace(_model())
    with pytest.raises(FxmetaError, match="run LowerPass first"):
        MetanetPass(_double_convs)(gm)
    LowerPass(torch.randn(1, 1, 8, 8))(gm)
    with pytest.raises(FxmetaError, match="returned a dict, not a WeightGraph"):
        MetanetPass(lambda g: {})(gm)

    def broken(graph):
        raise KeyError("conv2d:5x5")

    with pytest.raises(UnsupportedModelError, match="cannot rewrite this model .*KeyError"):
        MetanetPass(broken)(gm)
    with pytest.raises(SpecError, match="no such metanetwork file"):
        MetanetPass("/nonexistent/metanet.pt")
    with pytest.raises(TypeError, match="needs a Metanet"):
        MetanetPass(3)


def test_untrained_metanet_is_nearly_the_identity():
    from fxmeta.metanet import Metanet

    model, x = _model(), torch.randn(4, 1, 8, 8)
    gm = fx.symbolic_trace(model)
    LowerPass(x)(gm)
    torch.manual_seed(0)
    net = Metanet.for_graph(gm.meta["fxmeta.ir"], width=8, depth=2, ratio=0.01).train()
    out = PassManager([MetanetPass(net), RaisePass()])(gm).graph_module
    assert net.training  # the pass runs it in eval mode and restores the mode
    with torch.no_grad():
        ref, got = model(x), out(x)
    assert not torch.equal(ref, got)
    assert torch.allclose(got, ref, atol=0.1 * ref.abs().max().item())


def test_documented_pipeline_prunes_what_the_metanet_wrote():
    from fxmeta.pruning.flops import count_flops
    from passes import RemoveChannelsPass

    model, x = _model(), torch.randn(1, 1, 8, 8)
    gm = fx.symbolic_trace(model)
    pm = PassManager([LowerPass(x), MetanetPass(_double_convs), RaisePass(), RemoveChannelsPass(speedup=2)])
    out = pm(gm).graph_module
    assert count_flops(model, x) / count_flops(out, x) >= 2
    assert out.meta["fxmeta.plan"]["groups"] and out.meta["fxmeta.speedup"] >= 2
    # the kept kernels are the metanetwork's (doubled), not the original ones
    kept, original = out.get_submodule("conv1").weight, model.get_submodule("conv1").weight
    rows = [[torch.equal(k, 2 * o) for o in original] for k in kept.detach()]
    assert all(any(r) for r in rows)


# --------------------------------------------------------------------------- under PassManager


def test_pass_manager_wraps_fxmeta_errors_with_the_cause_kept():
    gm = fx.symbolic_trace(_model())
    with pytest.raises(Exception, match="'RaisePass' pass") as info:
        PassManager([RaisePass()])(gm)
    assert isinstance(info.value.__cause__, FxmetaError) and "run LowerPass first" in str(info.value.__cause__)


def test_checks_run_after_each_pass_and_see_each_result():
    from passes import check_ir

    model, x = _model(), torch.randn(1, 1, 8, 8)
    seen = []

    def record(gm):
        check_ir(gm)
        seen.append("fxmeta.ir" in gm.meta)

    pm = PassManager([LowerPass(x), MetanetPass(_double_convs), RaisePass()], run_checks_after_each_pass=True)
    pm.add_checks(record)
    pm(fx.symbolic_trace(model))
    assert seen == [False, True, True, False]  # before the passes, after Lower, Metanet, Raise


def test_a_broken_ir_fails_the_metanet_pass_ensures():
    gm = fx.symbolic_trace(_model())
    LowerPass(torch.randn(1, 1, 8, 8))(gm)

    def drop_a_row(graph):
        layer = graph.layers[1]
        edges = [l.edge[:-1] if i == 1 else l.edge for i, l in enumerate(graph.layers)]
        assert layer.edge is not None
        return graph.with_features(edges, [l.node for l in graph.layers])

    with pytest.raises(Exception, match="rows"):
        MetanetPass(drop_a_row)(gm)


def test_steps_repeat_the_whole_list_while_it_reports_changes():
    model, x = _model(), torch.randn(2, 1, 8, 8)
    calls = []

    def counting(graph):
        calls.append(1)
        return _double_convs(graph)

    out = PassManager([LowerPass(x), MetanetPass(counting), RaisePass()], steps=2)(fx.symbolic_trace(model))
    assert len(calls) == 2  # every pass reports modified: the list ran twice, the metanet acted twice
    conv = next(n for n, v in model.state_dict().items() if v.dim() == 4)
    assert torch.equal(out.graph_module.state_dict()[conv], model.state_dict()[conv] * 4)
    same = PassManager([LowerPass(x), RaisePass()], steps=3)(fx.symbolic_trace(model)).graph_module
    with torch.no_grad():
        assert torch.equal(same(x), model(x))  # lower -> raise is the identity, however often it runs


def test_a_conditioned_metanet_in_the_pipeline_prunes_the_channels_it_was_told():
    from fxmeta.ir import lower
    from fxmeta.metanet import Metanet
    from fxmeta.metanet.condition import FEATURES
    from fxmeta.pruning import prune
    from passes import RemoveChannelsPass

    model, x = _model(), torch.randn(1, 1, 8, 8)
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    net = Metanet.for_graph(lower(model, x), width=8, depth=1, ratio=1.0, condition=len(FEATURES))
    with pytest.raises(FxmetaError, match="speedup=\\) and a few training batches="):
        MetanetPass(net)
    # an untrained metanetwork changes the weights, yet the prune removes what the original's l2 prune removes
    pipeline = PassManager([LowerPass(x), MetanetPass(net, speedup=2.0, batches=batches), RaisePass(),
                            RemoveChannelsPass(2.0)])
    out = pipeline(fx.symbolic_trace(model)).graph_module
    plain = prune(model, x, speedup=2.0).module
    assert {k: v.shape for k, v in out.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert "fxmeta.prune_importance" not in out.meta


def test_one_spec_makes_the_pass_pipeline_and_the_library_call_remove_the_same_channels():
    """A metanetwork told the prune a spec makes, and the removal pass given the same spec, remove
    what ``fxmeta.prune(spec=...)`` removes from the original weights, settings that differ from the
    defaults included."""
    from fxmeta.ir import lower
    from fxmeta.metanet import Metanet
    from fxmeta.metanet.condition import FEATURES
    from fxmeta.pruning import prune
    from fxmeta.pruning.spec import PruneSpec
    from passes import RemoveChannelsPass

    model, x = _model(), torch.randn(1, 1, 8, 8)
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    net = Metanet.for_graph(lower(model, x), width=8, depth=1, ratio=1.0, condition=len(FEATURES))
    for spec in (PruneSpec(2.0, allocation="uniform", min_keep=0.3), PruneSpec(1.5, importance="l1", round_to=2)):
        pipeline = PassManager([LowerPass(x), MetanetPass(net, spec=spec, batches=batches), RaisePass(),
                                RemoveChannelsPass(spec=spec)])
        out = pipeline(fx.symbolic_trace(model)).graph_module
        library = prune(model, x, spec=spec)
        assert out.meta["fxmeta.plan"]["groups"] == library.plan["groups"], spec
        assert out.meta["fxmeta.plan"]["allocation"] == (spec.allocation or "global")


def test_transform_runs_the_stages_the_passes_wrap_and_prunes_as_the_pass_pipeline_does():
    """One orchestration: ``fxmeta.transform`` runs the stage list the passes wrap one by one,
    so the same metanetwork and spec give the same pruned weights either way."""
    from fxmeta.ir import lower
    from fxmeta.metanet import Metanet
    from fxmeta.pipeline.stages import Lower, Raise, RemoveChannels, Rewrite, prune_stages
    from fxmeta.pipeline.transform import TransformConfig, transform
    from fxmeta.pruning.spec import PruneSpec
    from passes import RemoveChannelsPass

    model, x = _model(), torch.randn(1, 1, 8, 8)
    net = Metanet.for_graph(lower(model, x), width=8, depth=1, ratio=1.0)
    assert [type(s) for s in prune_stages(metanet=net)] == [Lower, Rewrite, Raise, RemoveChannels]
    spec = PruneSpec(2.0, allocation="uniform", round_to=2)
    result = transform(model, x, TransformConfig(prune=spec, metanet=net, latency_threads=1))
    assert [n for n, _ in result.stages if n in ("lower", "metanet", "raise", "remove channels")] == \
        ["lower", "metanet", "raise", "remove channels"]
    pipeline = PassManager([LowerPass(x, spec=spec), MetanetPass(net, spec=spec), RaisePass(),
                            RemoveChannelsPass(spec=spec)])
    out = pipeline(fx.symbolic_trace(model)).graph_module
    assert out.meta["fxmeta.plan"]["groups"] == result.plan["groups"]
    ours, theirs = result.module.state_dict(), out.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
