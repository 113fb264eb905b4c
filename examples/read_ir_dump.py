"""Read an IR dump, summarise it, and draw it when matplotlib is installed.

    fxmeta dump fxmeta:resnet20 --format json --out r20.json
    python examples/read_ir_dump.py r20.json [--png r20.png]

    fxmeta dump torchvision:resnet18 --format graphml --out r18.graphml
    python examples/read_ir_dump.py r18.graphml

Without a file, fxmeta:resnet20 is lowered in-process. The layer graph is a networkx
DiGraph: one node per IR layer (channels as an attribute), one edge per producer →
consumer pair (edge kind and weight-slice count as attributes). matplotlib is optional
(``pip install matplotlib``); without it only the text summary is printed.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import networkx as nx


def from_json(path: Path) -> nx.DiGraph:
    """The layer graph of a ``fxmeta dump --format json`` file."""
    data = json.loads(path.read_text())
    if data.get("format") != "fxmeta.weightgraph":
        raise SystemExit(f"{path} is not an fxmeta IR dump (format {data.get('format')!r})")
    g = nx.DiGraph(model=data["model"])
    for layer in data["layers"]:
        g.add_node(layer["name"], op=layer["op"], kind=layer["node_kind"],
                   channels=layer["nodes"][1] - layer["nodes"][0])
    for layer in data["layers"]:
        for src in layer["inputs"]:
            g.add_edge(src["layer"], layer["name"], kind=layer["edge_kind"] or "", channels=src["channels"],
                       edges=layer["num_edges"])
    return g


def load(path: str | None) -> nx.DiGraph:
    if path is None:
        import torch

        import fxmeta
        from fxmeta.ir.dump import to_networkx
        from fxmeta.models import resnet20

        torch.manual_seed(0)
        return to_networkx(fxmeta.lower(resnet20().eval(), torch.randn(1, 3, 32, 32)))
    p = Path(path)
    if p.suffix == ".graphml":
        return nx.read_graphml(p)
    return from_json(p)


def summary(g: nx.DiGraph) -> str:
    kinds = Counter(a.get("kind", "?") for _, a in g.nodes(data=True))
    channels = Counter()
    for _, a in g.nodes(data=True):
        channels[a.get("kind", "?")] += int(a.get("channels", 0))
    edge_kinds = Counter()
    for _, _, a in g.edges(data=True):
        edge_kinds[a.get("kind") or "-"] += 1
    # a layer's weight-slice count is stored on each of its incoming edges: count it once
    slices = {d: int(a.get("edges", 0)) for _, d, a in g.edges(data=True)}
    joins = [n for n in g.nodes if g.in_degree(n) > 1]
    lines = [
        f"model {g.graph.get('model', '?')}: {g.number_of_nodes()} layers, {g.number_of_edges()} layer links, "
        f"{sum(channels.values())} channels (IR nodes), {sum(slices.values())} weight slices (IR edges)",
        "layer kinds: " + ", ".join(f"{k} x{n} ({channels[k]} ch)" for k, n in sorted(kinds.items())),
        "link kinds: " + ", ".join(f"{k} x{n}" for k, n in sorted(edge_kinds.items())),
        f"junctions (layers fed by more than one producer, e.g. residual adds): {len(joins)}",
    ]
    if nx.is_directed_acyclic_graph(g):
        lines.append(f"longest path: {len(nx.dag_longest_path(g))} layers")
    biggest = sorted(slices.items(), key=lambda kv: -kv[1])[:5]
    lines.append("most weight slices: " + ", ".join(f"{n} ({e})" for n, e in biggest))
    return "\n".join(lines)


def draw(g: nx.DiGraph, png: str) -> bool:
    """Save a picture of the layer graph; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    # layered left-to-right layout by topological generation (the network's depth)
    for depth, layer_names in enumerate(nx.topological_generations(g)):
        for n in layer_names:
            g.nodes[n]["depth"] = depth
    pos = nx.multipartite_layout(g, subset_key="depth")
    sizes = [20 + 12 * int(g.nodes[n].get("channels", 0)) ** 0.5 for n in g.nodes]
    kinds = sorted({g.nodes[n].get("kind", "?") for n in g.nodes})
    colors = [kinds.index(g.nodes[n].get("kind", "?")) for n in g.nodes]
    fig, ax = plt.subplots(figsize=(max(8, g.number_of_nodes() / 4), 6))
    nx.draw_networkx(g, pos, ax=ax, node_size=sizes, node_color=colors, cmap="tab10", with_labels=False,
                     arrowsize=6, width=0.5)
    ax.set_title(f"{g.graph.get('model', '')}: node size ~ sqrt(channels), colour = layer kind "
                 f"({', '.join(kinds)})", fontsize=9)
    ax.axis("off")
    fig.savefig(png, dpi=120, bbox_inches="tight")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", nargs="?", help="a .json or .graphml file from fxmeta dump (default: resnet20)")
    parser.add_argument("--png", default="ir_graph.png", help="picture to write when matplotlib is installed")
    args = parser.parse_args()
    g = load(args.dump)
    print(summary(g))
    if draw(g, args.png):
        print(f"drew the layer graph to {args.png}")
    else:
        print("matplotlib is not installed: no picture (pip install matplotlib to get one)")


if __name__ == "__main__":
    main()
