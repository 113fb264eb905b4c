"""IR dumps: JSON / GraphML / DOT are well-formed and agree with the IR; the CLI wraps them."""
from __future__ import annotations

import io
import json

import networkx as nx
import pytest
import torch

from fxmeta import models
from fxmeta.ir import lower
from fxmeta.ir.dump import dump

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


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_cli(capsys):
    """The command line in this process (``fxmeta.cli.main``), with its exit code and output."""

    def run(*args: str) -> _Result:
        from fxmeta.cli import main

        code = main(list(args))
        out = capsys.readouterr()
        return _Result(code, out.out, out.err)

    return run


def test_cli_dump_text_matches_library(tmp_path, run_cli):
    out = tmp_path / "r20.txt"
    res = run_cli("dump", "fxmeta:resnet20", "--input-shape", "1,3,8,8", "--out", str(out))
    assert res.returncode == 0, res.stderr
    torch.manual_seed(0)  # the CLI builds spec architectures with this seed, and the same example input
    from fxmeta.models import resnet20
    from fxmeta.tracing import example_from_shape

    expected = dump(lower(resnet20().eval(), example_from_shape((1, 3, 8, 8))), "text")
    assert out.read_text() == expected
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
def test_cli_bad_input_is_one_clear_line(args, message, run_cli):
    res = run_cli(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_cli_debug_shows_the_traceback():
    from fxmeta.cli import main
    from fxmeta.errors import SpecError

    with pytest.raises(SpecError):  # --debug lets the exception (and its traceback) through
        main(["--debug", "dump", "fxmeta:nosuchnet"])
