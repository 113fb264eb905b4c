"""IR dumps: JSON / GraphML / DOT are well-formed and agree with the IR; the CLI wraps them."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import networkx as nx
import pytest
import torch

from fxmeta import models
from fxmeta.ir.dump import dump
from fxmeta.ir import lower

from helpers import TinyMLP


@pytest.fixture(scope="module")
def resnet20_graph():
    torch.manual_seed(0)
    return lower(models.resnet20().eval(), torch.zeros(1, 3, 8, 8))


def test_json_dump_describes_every_layer(resnet20_graph):
    data = json.loads(dump(resnet20_graph, "json"))
    assert data["num_edges"] == resnet20_graph.num_edges
    assert [l["name"] for l in data["layers"]] == [l.name for l in resnet20_graph.layers]
    fc = data["layers"][-1]
    assert fc["op"] == "linear" and fc["inputs"] == [{"layer": "add_8", "channels": 64}]
    assert set(data["slots"]) | set(data["passthrough"]) == set(resnet20_graph.module.state_dict())


def test_json_channel_detail_has_the_weights():
    model = TinyMLP().eval()
    data = json.loads(dump(lower(model, torch.zeros(2, 6)), "json", detail="channel"))
    fc2 = data["layers"][2]
    assert torch.allclose(torch.tensor(fc2["edge"]).squeeze(-1), model.fc2.weight)


def test_graphml_loads_in_networkx(resnet20_graph):
    g = nx.read_graphml(io.BytesIO(dump(resnet20_graph, "graphml").encode()))
    assert g.number_of_nodes() == len(resnet20_graph.layers)
    assert g.nodes["conv1"]["kind"] == "conv2d+batchnorm2d"
    assert g.edges["conv1", "layer1.0.conv1"]["edges"] == 16 * 16


def test_channel_graphml_has_one_node_per_channel():
    graph = lower(TinyMLP().eval(), torch.zeros(2, 6))
    g = nx.read_graphml(io.BytesIO(dump(graph, "graphml", detail="channel").encode()))
    assert g.number_of_nodes() == graph.num_nodes and g.number_of_edges() == graph.num_edges


def test_dot_is_deterministic(resnet20_graph):
    text = dump(resnet20_graph, "dot")
    assert text.startswith("digraph weightgraph {") and text.rstrip().endswith("}")
    assert text == dump(resnet20_graph, "dot")
    assert '"conv1" -> "layer1.0.conv1"' in text


def test_unknown_format():
    with pytest.raises(ValueError, match="choose one of"):
        dump(lower(TinyMLP().eval(), torch.zeros(2, 6)), "yaml")


def run_cli(*args: str):
    return subprocess.run([sys.executable, "-m", "fxmeta.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_dump_text_matches_library(tmp_path):
    out = tmp_path / "r20.txt"
    res = run_cli("dump", "fxmeta:resnet20", "--input-shape", "1,3,8,8", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_text().startswith("WeightGraph CifarResNet: ")
    again = run_cli("dump", "fxmeta:resnet20", "--input-shape", "1,3,8,8", "--out", str(out))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


@pytest.mark.parametrize("args,message", [
    (["dump", "nothing.here:factory"], "cannot import"),
    (["dump", "fxmeta:resnet20", "--input-shape", "1,5,8,8"], "does not run on an input of shape"),
    (["dump", "fxmeta:nosuchnet"], "resnet20"),
    (["dump", "/no/such/file.pt"], "no such file"),
    (["dump", "fxmeta:resnet20", "--input-shape", "a,b"], "bad input shape"),
    (["dump", "collections:OrderedDict"], "Module"),
])
def test_cli_bad_input_is_one_clear_line(args, message):
    res = run_cli(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_cli_debug_shows_the_traceback():
    res = run_cli("--debug", "dump", "fxmeta:nosuchnet")
    assert res.returncode != 0 and "Traceback" in res.stderr
