"""Dumps of a WeightGraph: deterministic text, JSON, GraphML (networkx) and DOT.

Text and JSON are at layer granularity (one line / record per layer). GraphML and DOT
are at layer granularity by default — a ResNet50 has 13M channel-level edges — and at
channel granularity on request (``detail="channel"``) for small models.
"""
from __future__ import annotations

import json
from typing import Any

import networkx as nx
from torch import Tensor

from .graph import Layer, WeightGraph


def _num(x: float) -> str:
    return f"{x:.4g}"


def _stats(t: Tensor | None) -> str:
    if t is None or t.numel() == 0:
        return ""
    t = t.detach().double()
    return f"mean={_num(t.mean().item())} std={_num(t.std(unbiased=False).item())} absmax={_num(t.abs().max().item())}"


def _ranges(ids: Tensor) -> list[list[int]]:
    """Compress sorted-or-not ids into [start, stop) runs, e.g. [[0, 16], [40, 48]]."""
    out: list[list[int]] = []
    for i in ids.tolist():
        if out and out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, i + 1])
    return out


def producers(graph: WeightGraph, layer: Layer) -> list[tuple[int, int]]:
    """(layer index, number of input channels) for each layer feeding ``layer``, in order."""
    if layer.src is None or layer.src.numel() == 0:
        return []
    owners = graph.layer_of_node(layer.src)
    result: list[tuple[int, int]] = []
    for owner in owners.tolist():
        if result and result[-1][0] == owner:
            result[-1] = (owner, result[-1][1] + 1)
        else:
            result.append((owner, 1))
    merged: dict[int, int] = {}
    for owner, n in result:
        merged[owner] = merged.get(owner, 0) + n
    return list(merged.items())


def to_text(graph: WeightGraph) -> str:
    """One line per layer: nodes, inputs, edges and their feature shape, statistics."""
    state = graph.module.state_dict(keep_vars=True)
    n_slotted = sum(state[n].numel() for n in graph.slots)
    n_pass = sum(t.numel() for t in graph.passthrough.values())
    lines = [
        f"WeightGraph {type(graph.module).__name__}: {graph.num_nodes} nodes, {graph.num_edges} edges, "
        f"{len(graph.layers)} layers, {len(graph.slots)} slotted tensors ({n_slotted} elements), "
        f"{len(graph.passthrough)} passthrough tensors ({n_pass} elements)",
        f"node kinds: {', '.join(graph.node_kinds)}",
        f"edge kinds: {', '.join(graph.edge_kinds) or '-'}",
    ]
    for layer in graph.layers:
        inputs = ", ".join(f"%{graph.layers[j].name}({n})" for j, n in producers(graph, layer))
        parts = [f"%{layer.name} = {layer.node_kind} nodes[{layer.start}:{layer.stop}]"]
        if layer.edge is not None:
            shape = "x".join(str(s) for s in layer.edge.shape)
            groups = f" groups={layer.groups}" if layer.groups > 1 else ""
            parts.append(f"<- {inputs} edges={layer.num_edges} {layer.edge_kind}({shape}){groups}")
            if layer.learned_edges:
                parts.append(f"w: {_stats(layer.edge)}")
        if layer.node is not None:
            parts.append(f"node({','.join(layer.node_cols)}): {_stats(layer.node)}")
        lines.append("  " + " ".join(parts))
    if graph.outputs:
        outs = ", ".join(f"%{graph.layers[graph.layer_of_node(o[:1]).item()].name}({len(o)})" for o in graph.outputs if len(o))
        lines.append(f"outputs: {outs}")
    if graph.passthrough:
        lines.append("passthrough: " + ", ".join(f"{k}{list(v.shape)}" for k, v in graph.passthrough.items()))
    for name, why in graph.frozen.items():
        lines.append(f"frozen: {name}: {why}")
    return "\n".join(lines) + "\n"


def to_dict(graph: WeightGraph, detail: str = "layer") -> dict[str, Any]:
    """A JSON-ready description; ``detail="channel"`` adds src ids and feature values."""
    layers = []
    for i, layer in enumerate(graph.layers):
        rec: dict[str, Any] = {
            "index": i, "name": layer.name, "op": layer.op, "node_kind": layer.node_kind,
            "nodes": [layer.start, layer.stop], "edge_kind": layer.edge_kind, "groups": layer.groups,
            "edge_shape": list(layer.edge.shape) if layer.edge is not None else None,
            "num_edges": layer.num_edges, "learned_edges": layer.learned_edges,
            "node_cols": list(layer.node_cols),
            "inputs": [{"layer": graph.layers[j].name, "channels": n} for j, n in producers(graph, layer)],
        }
        if detail == "channel":
            rec["src"] = layer.src.tolist() if layer.src is not None else None
            rec["edge"] = layer.edge.detach().tolist() if layer.edge is not None else None
            rec["node"] = layer.node.detach().tolist() if layer.node is not None else None
        elif layer.src is not None:
            rec["src_ranges"] = _ranges(layer.src)
        layers.append(rec)
    return {
        "format": "fxmeta.weightgraph", "version": 1, "model": type(graph.module).__name__,
        "num_nodes": graph.num_nodes, "num_edges": graph.num_edges,
        "node_kinds": graph.node_kinds, "edge_kinds": graph.edge_kinds, "layers": layers,
        "outputs": [_ranges(o) for o in graph.outputs],
        "slots": {k: {"layer": s.layer, "table": s.table, "col": s.col, "layout": s.layout, "shape": list(s.shape)}
                  for k, s in graph.slots.items()},
        "passthrough": {k: list(v.shape) for k, v in graph.passthrough.items()},
        "frozen": graph.frozen,
    }


def to_json(graph: WeightGraph, detail: str = "layer") -> str:
    return json.dumps(to_dict(graph, detail), indent=1) + "\n"


def to_networkx(graph: WeightGraph, detail: str = "layer") -> nx.DiGraph:
    """A networkx DiGraph of layers (default) or of channels (``detail="channel"``)."""
    g = nx.DiGraph(model=type(graph.module).__name__)
    if detail == "channel":
        for layer in graph.layers:
            for c in range(layer.count):
                attrs = {"layer": layer.name, "kind": layer.node_kind, "channel": c}
                if layer.node is not None:
                    for col, v in zip(layer.node_cols, layer.node[c].tolist()):
                        attrs[col] = float(v)
                g.add_node(layer.start + c, **attrs)
        for layer in graph.layers:
            if layer.edge is None:
                continue
            index = layer.edge_index()
            feats = layer.edge.detach().reshape(-1, layer.edge.shape[-1])
            for (s, d), f in zip(index.t().tolist(), feats.tolist()):
                g.add_edge(s, d, kind=layer.edge_kind, weight=" ".join(_num(x) for x in f))
        return g
    for layer in graph.layers:
        g.add_node(layer.name, op=layer.op, kind=layer.node_kind, channels=layer.count)
    for layer in graph.layers:
        for j, n in producers(graph, layer):
            g.add_edge(graph.layers[j].name, layer.name, kind=layer.edge_kind or "", channels=n,
                       edges=layer.num_edges)
    return g


def to_graphml(graph: WeightGraph, detail: str = "layer") -> str:
    return "\n".join(nx.generate_graphml(to_networkx(graph, detail))) + "\n"


def to_dot(graph: WeightGraph, detail: str = "layer") -> str:
    """Graphviz DOT text (layer granularity unless ``detail="channel"``)."""
    g = to_networkx(graph, detail)

    def q(x: Any) -> str:
        return '"' + str(x).replace('"', r"\"") + '"'

    lines = ["digraph weightgraph {", "  rankdir=TB; node [shape=box, fontsize=10];"]
    for n, a in g.nodes(data=True):
        label = f"{n}\\n{a.get('kind', '')} x{a.get('channels', '')}" if detail != "channel" else f"{a['layer']}[{a['channel']}]"
        lines.append(f"  {q(n)} [label={q(label)}];")
    for s, d, a in g.edges(data=True):
        label = f"{a.get('kind', '')} {a.get('edges', '')}" if detail != "channel" else a.get("weight", "")
        lines.append(f"  {q(s)} -> {q(d)} [label={q(label.strip())}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"text": to_text, "json": to_json, "graphml": to_graphml, "dot": to_dot}


def dump(graph: WeightGraph, fmt: str = "text", detail: str = "layer") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dump format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[fmt](graph) if fmt == "text" else FORMATS[fmt](graph, detail)


__all__ = ["dump", "to_text", "to_json", "to_dict", "to_graphml", "to_dot", "to_networkx", "producers"]
