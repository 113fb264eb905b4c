"""What a conditioned metanetwork is told about the prune it prepares a network for.

An unconditioned metanetwork has to guess which channels a later prune will remove, and
then make the network robust to losing them, from the weights alone. A conditioned one is
told: the prune is fixed first (the units an importance prune of the *original* weights to
the target removes), and every graph node gets, next to its own tables, the features

* ``removed``: 1 for a channel the prune removes, ``candidate``: 1 for a channel that a
  prune may remove at all (0 for frozen channels, inputs, outputs);
* the gradient of the masked network's cross-entropy (``fxmeta.pruning.masking``: the
  network with the removed channels zeroed, BatchNorm on batch statistics) at the original
  weights, on a few training batches, summarised per node: its Taylor score over incoming
  weights and own parameters (sum of ``gradient * value``), over outgoing weights, the
  root-mean-square gradient of its incoming weights, and the gradient of each column of
  its node table (up to ``NODE_GRADIENTS``); each of these is divided by its
  root-mean-square over the graph, so they compare across networks.

The metanetwork's output is then pruned with the importance of the original weights
(:meth:`Condition.importance`), so exactly the announced channels go. The gradient makes
this a data-aware rewrite: it costs one forward and backward pass of the network on the
given batches (the same training batches BatchNorm recalibration uses).

:meth:`Condition.observe` also hands over the raw gradient of every table, which a
metanetwork with a gradient-step head uses as its step direction, and :func:`rewrite_steps`
applies a metanetwork several times, each told the gradient at the weights the previous
rewrite made: a learned optimiser of the masked loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import FxmetaError
from ..ir.graph import WeightGraph
from ..ir.raising import raise_params

NODE_GRADIENTS = 8
FEATURES = ("removed", "candidate", "taylor_in", "taylor_out", "grad_rms",
            *(f"node_grad{i}" for i in range(NODE_GRADIENTS)))


def node_units(graph: WeightGraph, analysis: Any) -> Tensor:
    """Per graph node, the analysis unit of its channel (-1 where the node has none).

    Layers are named after the module (or fx node) that produces their channels; the
    analysis labels that value's channel dim (1 for conv-like outputs, the last for linear)."""
    by_target: dict[str, Any] = {}
    by_name: dict[str, Any] = {}
    for node in analysis.gm.graph.nodes:
        by_name[node.name] = node
        if node.op == "call_module":
            by_target.setdefault(node.target, node)
    units = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    for layer in graph.layers:
        node = by_target.get(layer.name) or by_name.get(layer.name)
        value = analysis.values.get(node.name) if node is not None else None
        if not isinstance(value, list) or not value:
            continue
        labels = value[1 if len(value) >= 3 else len(value) - 1]
        if labels is None or len(labels) != layer.count:
            continue
        units[layer.start:layer.stop] = analysis.roots(labels)
    return units


class Condition:
    """The fixed prune of one network and the node features that announce it.

    ``graph`` is the network's WeightGraph; ``speedup`` the FLOPs target. The mask is the
    one ``fxmeta.prune(..., importance=importance)`` picks on the original weights."""

    def __init__(self, graph: WeightGraph, example_input: Any, speedup: float, importance: str = "l2",
                 round_to: int | None = None, min_keep: float = 0.1, ignore: Sequence[str] = (),
                 allocation: str = "global", rules: Any = None) -> None:
        from ..analysis.channels import analyze
        from ..pruning.importance import importance_fn
        from ..pruning.masking import MaskedNetwork, analytic_flops, calibrate_target, removal

        self.graph = graph
        self.speedup = float(speedup)
        analysis = analyze(graph.module, example_input, tuple(ignore), rules=rules)
        self.network = MaskedNetwork(analysis)  # masked with this prune once and for all (set below)
        self.original = {k: v.detach() for k, v in raise_params(graph).items()}
        score = importance_fn(importance, 0)
        self._score = score
        target = calibrate_target(analysis, speedup, importance, round_to=round_to, min_keep=min_keep,
                                  allocation=allocation)
        self.removed = removal(analysis, speedup, importance, round_to=round_to, min_keep=min_keep,
                               allocation=allocation,
                               flops_target=target, flops=analytic_flops(analysis), params=self.original)
        candidate = torch.zeros(analysis.uf.size, dtype=torch.bool)
        for group in analysis.groups:
            if group.prunable:
                candidate[group.roots] = True
        units = node_units(graph, analysis)
        known = units >= 0
        if not bool(known.any()):
            raise FxmetaError("no graph node maps to a channel of the analysis: this model cannot be conditioned")
        self.network.set_removed(self.removed)
        self.flags = torch.zeros(graph.num_nodes, 2)
        self.flags[known, 0] = self.removed[units[known]].float()
        self.flags[known, 1] = candidate[units[known]].float()

    def importance(self):
        """The importance that makes ``fxmeta.prune`` remove exactly the announced channels: the
        original weights' scores, whatever weights the pruned module holds."""
        score, original = self._score, self.original
        return lambda group, _params: score(group, original)

    def masked_loss(self, params: dict[str, Tensor], batches: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Mean cross-entropy over ``batches`` of the network with ``params`` (by the model's names) and
        this prune's channels masked out, BatchNorm on batch statistics."""
        loss = 0.0
        for x, y in batches:
            logits = torch.func.functional_call(self.network.gm, params, (x,), strict=False)
            loss = loss + F.cross_entropy(logits, y) / len(batches)
        return loss

    def sgd(self, params: dict[str, Tensor], batches: Sequence[tuple[Tensor, Tensor]], lr: float,
            steps: int) -> dict[str, Tensor]:
        """``steps`` plain SGD steps of ``params`` (by the model's names) on :meth:`masked_loss` over
        ``batches``: what a learned optimiser with a zero-initialised gradient-step head starts as, and
        the control it is measured against."""
        params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        for _ in range(steps):
            grads = torch.autograd.grad(self.masked_loss(params, batches), list(params.values()))
            params = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(params.items(), grads)}
        return {k: v.detach() for k, v in params.items()}

    def features(self, batches: Sequence[tuple[Tensor, Tensor]], graph: WeightGraph | None = None) -> Tensor:
        """The (nodes, len(FEATURES)) condition, the gradient taken on ``batches`` of (x, y) at the
        weights of ``graph`` (default: the original network's)."""
        return self.observe(batches, graph).features

    def observe(self, batches: Sequence[tuple[Tensor, Tensor]], graph: WeightGraph | None = None) -> "Observation":
        """The condition features and the masked-loss gradient of every table of ``graph`` (a graph of
        this network's structure; default: the original weights), taken on ``batches``."""
        if not batches:
            raise FxmetaError("a conditioned metanetwork needs at least one training batch for its gradient input")
        graph = self.graph if graph is None else graph
        n = graph.num_nodes
        out = torch.zeros(n, len(FEATURES))
        out[:, :2] = self.flags
        edges = [None if la.edge is None else la.edge.detach().clone().requires_grad_(la.learned_edges)
                 for la in graph.layers]
        nodes = [None if la.node is None else la.node.detach().clone().requires_grad_(True) for la in graph.layers]
        with torch.enable_grad():  # also inside a rewrite under no_grad
            loss = self.masked_loss(raise_params(graph.with_features(edges, nodes)), batches)
        leaves = [t for t in (*edges, *nodes) if t is not None and t.requires_grad]
        grads = dict(zip(map(id, leaves), torch.autograd.grad(loss, leaves, allow_unused=True)))
        edge_grads = [None if e is None else grads.get(id(e)) for e in edges]
        node_grads = [None if x is None else grads.get(id(x)) for x in nodes]
        taylor_in, taylor_out, grad_sq = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        for layer, edge, node, ge, gn in zip(graph.layers, edges, nodes, edge_grads, node_grads):
            if ge is not None:
                taylor = (ge * edge.detach()).sum(-1)  # (out, in per group)
                taylor_in[layer.start:layer.stop] += taylor.sum(1)
                grad_sq[layer.start:layer.stop] += ge.pow(2).mean((1, 2))
                taylor_out.index_add_(0, layer.edge_index()[0], taylor.reshape(-1))
            if gn is not None:
                taylor_in[layer.start:layer.stop] += (gn * node.detach()).sum(1)
                k = min(NODE_GRADIENTS, gn.shape[1])
                out[layer.start:layer.stop, 5:5 + k] = gn[:, :k]
        out[:, 2], out[:, 3], out[:, 4] = taylor_in, taylor_out, grad_sq.sqrt()
        rms = out[:, 2:].pow(2).mean(0).sqrt()
        out[:, 2:] /= torch.where(rms > 0, rms, torch.ones_like(rms))
        return Observation(out.detach(), edge_grads, node_grads)


@dataclass
class Observation:
    """What a conditioned metanetwork sees of a network: the (nodes, len(FEATURES)) features and the
    raw masked-loss gradient of each layer's edge and node table (None where a table has none or
    is not learned), as the gradient-step head (``MetanetConfig.step_lr``) uses it."""

    features: Tensor
    edges: list[Tensor | None]
    nodes: list[Tensor | None]


def rewrite_steps(metanet: Any, graph: WeightGraph, condition: Condition, batches: Sequence[tuple[Tensor, Tensor]],
                  steps: int | None = None) -> WeightGraph:
    """``steps`` (default: the metanetwork's ``config.steps``) conditioned rewrites, each told the
    gradient at the weights the previous one produced, all on the same ``batches``.

    The observations are data (no gradient flows through them); each rewrite's change is kept on
    the path to the result, so a loss on the last graph trains every rewrite (first-order, as
    learned optimisers are usually trained)."""
    steps = metanet.config.steps if steps is None else steps
    for _ in range(steps):
        seen = condition.observe(batches, graph)
        new = metanet(graph, seen)
        graph = graph.with_features([_on_top(o.edge, n.edge) for o, n in zip(graph.layers, new.layers)],
                                    [_on_top(o.node, n.node) for o, n in zip(graph.layers, new.layers)])
    return graph


def _on_top(old: Tensor | None, new: Tensor | None) -> Tensor | None:
    """A rewrite returns ``detach(old) + change``; put the change on ``old`` itself, so the changes of
    earlier rewrites keep their gradient path."""
    return new if old is None or new is None or new is old else old + (new - old.detach())
