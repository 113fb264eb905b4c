"""Fuzzing (see tests/fuzzing.py): a fast slice here, the full size under ``-m slow`` and in
``python -m benchmarks.fuzz`` (benchmarks/results/fuzz.md)."""
from __future__ import annotations

import os
import random

import pytest
import torch
from fuzzing import Tally, corrupt_case, run_dags

import fxmeta
from fxmeta import cli


def test_random_dags_fast_slice():
    tally = Tally()
    run_dags(6, seed=1, tally=tally)
    assert tally.examples >= 6
    assert tally.outcomes.get("ok", 0) >= tally.examples // 2, tally.outcomes  # cases ran, not only skips


@pytest.mark.slow
def test_random_dags_thousand():
    tally = Tally()
    run_dags(1000, seed=0, tally=tally)
    assert tally.examples >= 1000
    assert tally.outcomes.get("ok", 0) >= tally.examples // 2, tally.outcomes


def _valid_files(folder):
    from fxmeta.ir import lower
    from fxmeta.metanet.files import save_metanet
    from fxmeta.metanet.model import Metanet
    from fxmeta.models import resnet20

    assert cli.main(["prune", "fxmeta:resnet20", "--in-channels", "1", "--input-shape", "1,1,8,8", "--speedup",
                     "1.5", "--out", str(folder / "pruned.pt")]) == 0
    graph = lower(resnet20(in_channels=1).eval(), torch.randn(1, 1, 8, 8))
    save_metanet(Metanet.for_graph(graph, width=4, depth=1), str(folder / "metanet.pt"))
    return folder / "pruned.pt", folder / "metanet.pt"


def corruption(folder, count: int, seed: int) -> dict:
    from fxmeta.metanet.files import load_metanet

    pruned, metanet = _valid_files(folder)
    results = {}
    for path, load in ((pruned, fxmeta.load), (metanet, lambda p: load_metanet(str(p)))):
        data = path.read_bytes()
        reference = load(path).state_dict()
        rng = random.Random(seed)
        outcomes = [corrupt_case(str(path), data, load, reference, rng, str(folder / "mutated.pt"))
                    for _ in range(count)]
        results[path.name] = outcomes
    return results


def _check(results):
    for name, outcomes in results.items():
        bad = [o for o in outcomes if o not in ("error", "same")]
        assert not bad, f"{name}: {bad[:3]}"


def test_corruption_fast_slice(tmp_path, capsys):
    _check(corruption(tmp_path, 15, seed=1))
    capsys.readouterr()


@pytest.mark.slow
def test_corruption_five_hundred(tmp_path, capsys):
    _check(corruption(tmp_path, 500, seed=0))
    capsys.readouterr()
    assert not os.path.exists(tmp_path / "mutated.pt")


def damaged_inputs(folder, count: int, seed: int) -> dict:
    """Damaged user inputs: SPEC@weights state dicts and Hugging Face folders."""
    from fuzzing import damaged_hf_case, damaged_state_case

    from fxmeta.io.files import resolve_model
    from fxmeta.models import resnet20

    rng = random.Random(seed)
    reference = resnet20(in_channels=1).state_dict()

    def resolve(spec):
        return resolve_model(spec, in_channels=1).module

    states = [damaged_state_case("fxmeta:resnet20", reference, resolve, rng, str(folder / "w.pt"))
              for _ in range(count)]
    results = {"state dict (SPEC@weights.pt)": states}
    try:
        import transformers  # noqa: F401
    except ImportError:
        return results
    results["Hugging Face folder"] = [damaged_hf_case(str(folder / "hf"), rng) for _ in range(max(1, count // 5))]
    return results


def test_damaged_inputs_fast_slice(tmp_path):
    results = damaged_inputs(tmp_path, 30, seed=0)
    _check(results)
    assert sum(o == "error" for o in results["state dict (SPEC@weights.pt)"]) >= 15  # damage was made and seen
