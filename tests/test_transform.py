"""fxmeta.pipeline.transform (the pipeline as a library call) and the latency helper."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fxmeta import io
from fxmeta.errors import FxmetaError, InputShapeError, PruningError, SpecError
from fxmeta.models import get_model
from fxmeta.pipeline.latency import compare_latency, measure_latency
from fxmeta.pipeline.transform import StageTimer, TransformConfig, check_model_fits, transform
from fxmeta.pruning.flops import count_flops
from fxmeta.pruning.spec import PruneSpec
from fxmeta.training.data import load_data
from fxmeta.training.loop import TrainConfig

from helpers import randomize_bn

torch.set_num_threads(1)
X = torch.randn(1, 1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _r20(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(get_model("resnet20", in_channels=1), seed).eval()


def _finetune(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "lr": 0.05, "batch_size": 64, "device": "cpu", "progress": False, **kw})


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- no data


def test_transform_without_data_prunes_measures_and_says_what_it_skipped():
    model = _r20()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = transform(model, X, TransformConfig(prune=PruneSpec(2.0)))
    assert result.speedup >= 2.0
    assert result.speedup == pytest.approx(count_flops(model, X) / count_flops(result.module, X))
    assert result.before.accuracy is None and result.after.accuracy is None and result.removed_accuracy is None
    assert result.before.latency.median_ms > 0 and result.after.latency.median_ms > 0
    assert result.after.params < result.before.params
    assert [name for name, _ in result.stages] == ["measure original", "remove channels", "measure pruned",
                                                   "time latency"]
    assert any("no data" in n for n in result.notes) and any("importance alone" in n for n in result.notes)
    assert _state_equal(model.state_dict(), original)  # the input model is not changed
    with torch.no_grad():
        assert result.module(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_metrics_are_plain_data_that_a_weights_only_file_holds(tmp_path):
    result = transform(_r20(), X, TransformConfig(prune=PruneSpec(1.5), latency_batch=4))
    metrics = result.metrics()
    assert metrics["before"]["latency"]["batch"] == 4
    io.save(tmp_path / "p.pt", result.module, spec="fxmeta:resnet20", spec_kwargs={"in_channels": 1},
            plan=result.plan, metrics=metrics, input_shape=X.shape)
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    assert saved["metrics"]["flops_speedup"] == pytest.approx(result.speedup)
    json.dumps(saved["metrics"])  # and JSON-ready as well


# ----------------------------------------------------------------------- with data


def test_transform_with_data_finetunes_and_reports_accuracy(digits, tmp_path):
    log = tmp_path / "log.jsonl"
    config = TransformConfig(prune=PruneSpec(2.0), finetune=_finetune(epochs=2, log_path=str(log)),
                             checkpoint_dir=str(tmp_path / "ckpt"), distill=False)  # an untrained model teaches nothing
    result = transform(_r20(), X, config, data=digits)
    for acc in (result.before.accuracy, result.removed_accuracy, result.after.accuracy):
        assert 0.0 <= acc <= 1.0
    # two epochs on digits take a random-init network well past chance
    assert result.after.accuracy > 0.5 and result.finetune_best_epoch in (1, 2)
    assert "finetune" in dict(result.stages)
    assert (tmp_path / "ckpt" / "finetune" / "last.pt").is_file()
    assert json.loads((tmp_path / "ckpt" / "run.json").read_text())["speedup"] == 2.0
    # epoch 0: the pruned network as given (the finetune keeps it if no epoch beats it on validation)
    assert [json.loads(line).get("epoch") for line in log.read_text().splitlines()][:3] == [0, 1, 2]


def test_batchnorm_recalibration_after_removal(digits):
    def run(bn_batches: int, spec=None):
        spec = spec or PruneSpec(2.0, importance="l2", compensate="none")
        config = TransformConfig(prune=spec, bn_batches=bn_batches, finetune=_finetune(epochs=0), latency_batch=1)
        return transform(_r20(), X, config, data=digits)

    refit = run(4, PruneSpec(2.0))  # the calibrated default (lstsq): its layers fit the stored statistics
    assert refit.recalibrated_accuracy is None and "recalibrate BatchNorm" not in dict(refit.stages)
    assert any("BatchNorm statistics kept" in n for n in refit.notes)
    plain, recalibrated = run(0), run(4)
    assert plain.recalibrated_accuracy is None and "recalibrate BatchNorm" not in dict(plain.stages)
    assert 0.0 <= recalibrated.recalibrated_accuracy <= 1.0
    assert recalibrated.metrics()["recalibrated_accuracy"] == recalibrated.recalibrated_accuracy
    assert "recalibrate BatchNorm" in dict(recalibrated.stages)
    assert recalibrated.removed_accuracy == plain.removed_accuracy  # measured before the recalibration
    stats = {k: v for k, v in recalibrated.module.state_dict().items() if k.endswith("running_mean")}
    before = plain.module.state_dict()
    assert stats and any(not torch.equal(v, before[k]) for k, v in stats.items())
    with pytest.raises(SpecError, match="recalibration batches"):
        TransformConfig(bn_batches=-1)


@pytest.mark.slow
def test_resume_gives_the_weights_of_an_uninterrupted_run(digits, tmp_path):
    def run(epochs: int, folder: str, resume: bool = False):
        config = TransformConfig(prune=PruneSpec(2.0), finetune=_finetune(epochs=epochs, seed=5),
                                 checkpoint_dir=str(tmp_path / folder), resume=resume)
        return transform(_r20(), X, config, data=digits).module.state_dict()

    straight = run(2, "a")
    run(1, "b")  # stopped after one epoch of the same schedule (cosine: epoch 1's lr is the same)
    resumed = run(2, "b", resume=True)
    assert _state_equal(straight, resumed)
    assert not _state_equal(straight, run(1, "c"))  # the comparison above can fail


def test_resume_refuses_checkpoints_of_another_run(digits, tmp_path):
    config = TransformConfig(prune=PruneSpec(2.0), finetune=_finetune(), checkpoint_dir=str(tmp_path))
    transform(_r20(), X, config, data=digits)
    other = TransformConfig(prune=PruneSpec(3.0), finetune=_finetune(), checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(SpecError, match="belong to another run .*speedup: 2.0 then, 3.0 now"):
        transform(_r20(), X, other, data=digits)


def _quiet_first_layer3_channels(graph):
    """A stand-in metanetwork with a known answer: channels 0..15 inside the first block of
    layer3 (conv1's kernels and BatchNorm scale / shift, conv2's inputs) nearly vanish."""
    edges, nodes = [], []
    for layer in graph.layers:
        e, n = layer.edge, layer.node
        if layer.name == "layer3.0.conv1":
            e, n = e.clone(), n.clone()
            e[:16] *= 1e-4
            for col in ("batchnorm2d.weight", "batchnorm2d.bias"):
                n[:16, layer.node_cols.index(col)] *= 1e-4
        if layer.name == "layer3.0.conv2":
            e = e.clone()
            e[:, :16] *= 1e-4
        edges.append(e)
        nodes.append(n)
    return graph.with_features(edges, nodes)


def test_metanet_output_decides_which_channels_go(tmp_path):
    model = _r20()
    config = TransformConfig(prune=PruneSpec(1.5), metanet=_quiet_first_layer3_channels, adapt_epochs=0)
    result = transform(model, X, config)
    # the plan, made on the raised module, replays on a fresh copy of the architecture
    io.save(tmp_path / "m.pt", result.module, spec="fxmeta:resnet20", spec_kwargs={"in_channels": 1},
            plan=result.plan, input_shape=X.shape)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(io.load(tmp_path / "m.pt")(x), result.module(x))
    assert [n for n, _ in result.stages][:4] == ["measure original", "lower", "metanet", "raise"]
    # channels are identified by their BatchNorm scale (random, distinct per channel)
    kept = result.module.get_submodule("layer3.0.bn1").weight.detach()
    original = model.get_submodule("layer3.0.bn1").weight.detach()
    assert len(kept) < len(original)
    assert all((original[16:] == g).any() for g in kept)  # every quietened channel went


def test_adapt_finetune_runs_between_metanet_and_removal(digits, tmp_path):
    config = TransformConfig(prune=PruneSpec(1.5), metanet=lambda g: g, adapt_epochs=1, finetune=_finetune(),
                             checkpoint_dir=str(tmp_path))
    result = transform(_r20(), X, config, data=digits)
    names = [n for n, _ in result.stages]
    assert names.index("raise") < names.index("adapt finetune") < names.index("remove channels")
    assert (tmp_path / "adapt" / "last.pt").is_file() and (tmp_path / "finetune" / "last.pt").is_file()


def _record_prepare(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``fxmeta.prepare`` call the pipeline's stages make (still run)."""
    import fxmeta.pipeline.stages as pipeline

    calls, real_prepare = [], pipeline.prepare

    def recording_prepare(*args, **kwargs):
        calls.append(kwargs)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", recording_prepare)
    return calls


def test_after_a_conditioned_metanet_the_adapt_epochs_train_for_the_prune_it_was_told(digits, monkeypatch):
    from fxmeta.ir import lower
    from fxmeta.metanet import Metanet
    from fxmeta.metanet.condition import FEATURES

    model = _r20()
    net = Metanet.for_graph(lower(model, X), width=8, depth=1, ratio=1.0, condition=len(FEATURES))
    net.zero_outputs()
    calls = _record_prepare(monkeypatch)
    config = TransformConfig(prune=PruneSpec(1.5), metanet=net, adapt_epochs=1, finetune=_finetune())
    result = transform(model, X, config, data=digits)
    assert "adapt finetune" in [n for n, _ in result.stages]
    # the adapt epoch is a prepare epoch with the told importance, not a plain one
    assert len(calls) == 1 and callable(calls[0]["importance"])


# ---------------------------------------------------------------------- checks


def test_config_checks():
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(PruningError, match="below 1|speed-up"):
            TransformConfig(prune=PruneSpec(bad))
    with pytest.raises(SpecError, match="checkpoint directory"):
        TransformConfig(resume=True)
    with pytest.raises(SpecError, match=">= 0"):
        TransformConfig(adapt_epochs=-1)


def test_check_model_fits(digits):
    model = _r20()
    check_model_fits(model, X, digits)
    with pytest.raises(InputShapeError, match="does not fit the data's samples 1x8x8"):
        check_model_fits(model, torch.randn(1, 1, 16, 16), digits)
    with pytest.raises(InputShapeError, match="does not run on an input .* build it with --in-channels 1"):
        check_model_fits(get_model("resnet20").eval(), X, digits)  # built for 3 channels
    with pytest.raises(InputShapeError, match="has 3 outputs but the data has 10 classes; build it with --num-classes 10"):
        check_model_fits(get_model("resnet20", num_classes=3, in_channels=1).eval(), X, digits)


def test_stage_timer_accumulates_in_order():
    seen = []
    timer = StageTimer(report=seen.append)
    for name in ("a", "b", "a"):
        with timer(name):
            pass
    assert [n for n, _ in timer.items()] == ["a", "b"] and seen == ["a", "b", "a"]
    with pytest.raises(RuntimeError):
        with timer("c"):
            raise RuntimeError
    assert "c" in timer.seconds  # a failed stage still records its time


# --------------------------------------------------------------------- latency


def test_latency_fixes_threads_and_restores_state():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU()).train()
    threads = torch.get_num_threads()
    lat = measure_latency(model, torch.randn(1, 8), threads=2, batch=5, warmup=2, repeats=7)
    assert lat.repeats == 7 and lat.batch == 5 and lat.threads == 2 and lat.device == "cpu"
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert torch.get_num_threads() == threads and model.training
    assert int(model[1].num_batches_tracked) == 0  # ran in eval mode: no statistics changed


def test_compare_latency_times_models_in_alternation():
    heavy = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)]).train()
    light = nn.Linear(256, 256).eval()
    slow, fast = compare_latency([heavy, light], torch.randn(16, 256), warmup=2, repeats=15)
    assert slow.repeats == fast.repeats == 15 and slow.batch == fast.batch == 16
    assert slow.median_ms > fast.median_ms
    assert heavy.training and not light.training  # modes restored


def test_latency_stops_at_the_time_budget():
    lat = measure_latency(nn.Identity(), torch.randn(2, 2), warmup=0, repeats=10**6, max_seconds=0.05)
    assert 5 <= lat.repeats < 10**6
    with pytest.raises(ValueError):
        measure_latency(nn.Identity(), torch.randn(2), repeats=0)


# --------------------------------------------------------------------- examples

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_read_ir_dump_example_reads_json_and_graphml_alike(tmp_path):
    from fxmeta.ir.dump import to_graphml, to_json
    from fxmeta.ir.lowering import lower

    example = _example("read_ir_dump")
    graph = lower(get_model("resnet20").eval(), torch.randn(1, 3, 8, 8))
    (tmp_path / "d.json").write_text(to_json(graph))
    (tmp_path / "d.graphml").write_text(to_graphml(graph))
    texts = [example.summary(example.load(str(tmp_path / name))) for name in ("d.json", "d.graphml")]
    assert texts[0] == texts[1]
    assert "32 layers" in texts[0] and "33616 weight slices" in texts[0] and "junctions" in texts[0]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expect", [
    ("prune_torchvision.py", ["--model", "torchvision:resnet18"], "both reproduce the pruned model: True"),
    ("transform_own_model.py", ["--epochs", "1"], "same outputs"),
    ("compile_pipeline.py", [], "pipeline:"),
    ("export_pipeline.py", [], "saved program vs pruned module"),
])
def test_examples_run(script, args, expect, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout


def test_a_conditioned_metanet_needs_data_and_fixes_the_channels_that_go(digits):
    from fxmeta.ir import lower
    from fxmeta.metanet import Metanet
    from fxmeta.metanet.condition import FEATURES

    model = _r20()
    net = Metanet.for_graph(lower(model, X), width=8, depth=1, ratio=1.0, condition=len(FEATURES))
    with pytest.raises(FxmetaError, match="training batches"):
        transform(model, X, TransformConfig(prune=PruneSpec(1.5), metanet=net))
    net.zero_outputs()  # the identity: the prune it was told is the l2 prune of the original
    result = transform(model, X, TransformConfig(prune=PruneSpec(1.5), metanet=net, finetune=_finetune(epochs=0)), data=digits)
    plain = transform(model, X, TransformConfig(prune=PruneSpec(1.5)))
    assert [n for n, _ in result.stages][1:4] == ["lower", "metanet", "raise"]
    assert {k: v.shape for k, v in result.module.state_dict().items()} == \
        {k: v.shape for k, v in plain.module.state_dict().items()}


def test_a_finetune_that_only_hurts_keeps_the_pruned_network_and_says_so(digits):
    from fxmeta.training.loop import train

    base = train(_r20(), digits, _finetune(epochs=2)).model
    config = TransformConfig(prune=PruneSpec(2.0), finetune=_finetune(epochs=1, lr=5.0))  # a step that wrecks it
    result = transform(base, X, config, data=digits)
    assert result.finetune_best_epoch == 0 and result.after.accuracy > 0.5
    assert any("kept the pruned network" in n for n in result.notes)
    assert not any("--prepare-sparsity" in n for n in result.notes)  # no prepare stage: no hint about it


def test_a_prepared_network_kept_by_its_finetune_gets_the_regulariser_hint(digits):
    from fxmeta.training.loop import train
    from fxmeta.training.prepare import PrepareConfig

    base = train(_r20(), digits, _finetune(epochs=2)).model
    wreck = _finetune(epochs=1, lr=5.0)  # a finetune step that wrecks it: the prepared network is kept
    for sparsity, hinted in ((0.0, True), (0.01, False)):
        config = TransformConfig(prune=PruneSpec(2.0), prepare=PrepareConfig(epochs=1, lr=0.01, sparsity=sparsity),
                                 finetune=wreck)
        result = transform(base, X, config, data=digits)
        assert result.finetune_best_epoch == 0
        assert any("--prepare-sparsity" in n for n in result.notes) == hinted


def test_the_prepare_settings_reach_the_prepare_stage_as_one_object(digits, monkeypatch):
    from fxmeta.cli.app import build_parser
    from fxmeta.cli.common import _prepare_config
    from fxmeta.training.prepare import PrepareConfig

    args = build_parser().parse_args(["transform", "m.pt", "--out", "o.pt", "--prepare-epochs", "1",
                                      "--prepare-sparsity", "0.02", "--prepare-weight", "0.5"])
    settings = _prepare_config(args)
    assert settings == PrepareConfig(epochs=1, weight=0.5, sparsity=0.02)
    calls = _record_prepare(monkeypatch)
    transform(_r20(), X, TransformConfig(prune=PruneSpec(1.5), prepare=settings, finetune=_finetune()), data=digits)
    assert len(calls) == 1 and calls[0]["sparsity"] == 0.02 and calls[0]["weight"] == 0.5


# --------------------------------------------------------------- the finetune's objective


def test_the_default_finetune_distils_from_an_original_that_is_better_and_fits(digits, monkeypatch):
    from dataclasses import replace

    from fxmeta.training import distill
    from fxmeta.training.loop import train

    base = train(_r20(), digits, _finetune(epochs=3)).model
    base.zero_grad(set_to_none=True)
    config = TransformConfig(prune=PruneSpec(8.0, importance="l2", compensate="none"), finetune=_finetune(epochs=1),
                             bn_batches=0)
    result = transform(base, X, config, data=digits)
    assert result.finetune_objective == "distill", result.notes
    assert any(n.startswith("finetune by distillation") for n in result.notes)
    assert result.metrics()["finetune_objective"] == "distill"
    assert not any(p.grad is not None for p in base.parameters())  # the teacher was a frozen copy
    # a teacher copy that would take more than a quarter of the free memory: the labels
    monkeypatch.setattr(distill, "free_memory", lambda device: 4 * distill.model_bytes(base) - 1)
    result = transform(base, X, config, data=digits)
    assert result.finetune_objective == "labels" and any("would not fit" in n for n in result.notes)
    # said outright, it holds whatever the memory
    assert transform(base, X, replace(config, distill=True), data=digits).finetune_objective == "distill"
    monkeypatch.undo()
    assert transform(base, X, replace(config, distill=False), data=digits).finetune_objective == "labels"


def test_the_default_finetune_does_not_distil_from_an_original_no_better_than_the_pruned_one(digits):
    from fxmeta.training.loop import train

    base = train(_r20(), digits, _finetune(epochs=3)).model
    # nothing pruned that matters: the pruned network scores as the original does on validation
    config = TransformConfig(prune=PruneSpec(1.0), finetune=_finetune(epochs=1))
    result = transform(base, X, config, data=digits)
    assert result.finetune_objective == "labels"
    assert any("no better on validation" in n for n in result.notes), result.notes
    assert transform(base, X, TransformConfig(prune=PruneSpec(2.0))).finetune_objective is None  # no data


def test_teacher_memory_figures():
    from fxmeta.training.distill import free_memory, model_bytes, teacher_fits

    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20))
    # weights 200 + 20, BatchNorm weight, bias, running mean, var (20 each) in float32, the batch count in int64
    assert model_bytes(model) == 4 * (220 + 4 * 20) + 8
    assert free_memory(torch.device("cpu")) > 0
    assert teacher_fits(model, torch.device("cpu"))[0]
