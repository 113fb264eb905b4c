"""Weight compensation: after the units to remove are chosen, change the weights that stay so
the network loses less, on calibration data.

Every Linear / Conv layer that reads a removed channel is a *consumer*. The slimmed network
(the units removed) runs over the calibration batches node by node in graph order, beside the
original network's outputs (recorded by the activation importance pass, or the original run in
lockstep); at each consumer, with its input taken from the already compensated slim network:

- ``bias``: the mean of what the layer lost, ``mean(original output - current output)`` per
  output channel, is added to its bias (FLAP's bias compensation, with the inputs the
  compensated network really feeds it);
- ``lstsq``: its weights and its bias are refit by ridge least squares to reproduce its
  original output (ThiNet / He et al. 2017's reconstruction, for convolutions through their
  unfolded inputs, one solve per group of a grouped conv).

A layer without a bias whose output goes only into a BatchNorm takes the shift through that
BatchNorm's running mean instead (the same function in eval mode); a layer with neither gets
no shift, and says so. The changed weights are written back into the kept entries of the
full-size weights, so the pruned network still equals the masked original exactly (the
self-check holds); BatchNorm recalibration after the prune stays the caller's choice.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.channels import ChannelAnalysis
from ..tracing import eval_mode
from .calibration import Calibration, fixed_batch
from .importance import input_units
from .layers import consumer, consumer_nodes, layer_input, layer_module
from .slimming import get_tensor, slim, write_back
from .targets import TargetRecorder, Targets, channel_dim, input_rows


@dataclass
class Compensation:
    """What a compensation did: the layers it changed and, for each layer it could not, why."""

    mode: str
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0

    def to_plan(self) -> dict[str, Any]:
        return {"mode": self.mode, "changed": list(self.changed), "skipped": dict(self.skipped),
                "samples": self.samples}


def _only_batchnorm_user(gm: fx.GraphModule, node: fx.Node, calls: dict[str, int]) -> nn.Module | None:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module":
        bn = gm.get_submodule(users[0].target)
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None \
                and calls.get(users[0].target, 0) == 1:
            return users[0]
    return None


def _why_not(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv3d):
        return "Conv3d is not refit"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r} is not refit"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r} is not refit"
    return None


SOLVE_DTYPE = torch.float32  # float64 where the float32 factorisation fails


def _solve(a_t_a: Tensor, a_t_y: Tensor, ridge: float, weights: Tensor, fitted: Tensor,
           dtype: torch.dtype | None = None) -> Tensor:
    """Ridge solutions of a batch of normal equations ``(groups, f, f) sol = (groups, f, out)``.

    ``fitted`` (groups, f) flags the features in the fit; the others have zero rows and columns, get
    a unit diagonal and solve to zero. ``weights`` flags the fitted features that are weights: they
    are regularised by ``ridge`` times their group's mean diagonal (an intercept is not).
    Cholesky in ``SOLVE_DTYPE``; where that factorisation fails, again in float64, then LU, then the
    least-norm solution."""
    dtype = dtype or SOLVE_DTYPE
    system, rhs = a_t_a.to(dtype, copy=True), a_t_y.to(dtype)  # a copy: the diagonal is regularised in place
    diag = system.diagonal(dim1=1, dim2=2)
    scale = (diag * weights).sum(1) / weights.sum(1).clamp_min(1)
    reg = ridge * scale.clamp_min(1e-12)[:, None] * weights + (~fitted).to(dtype) + 1e-12
    system.diagonal(dim1=1, dim2=2).add_(reg)
    factor, info = torch.linalg.cholesky_ex(system)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs, factor)
    if dtype != torch.float64:
        return _solve(a_t_a, a_t_y, ridge, weights, fitted, torch.float64)
    try:  # not positive definite in floating point: LU, then the least-norm solution
        return torch.linalg.solve(system, rhs)
    except RuntimeError:
        return torch.linalg.lstsq(system, rhs).solution


GRAM_BLOCK = 256  # column block of the normal equations' product, for layers with many features


def _add_gram(out: Tensor, a: Tensor) -> None:
    """``out += a^T a`` for a batch ``a`` (groups, rows, f), only the blocks on and above the diagonal
    for a wide ``a`` (about half the work of the full product; :func:`_symmetric` fills the rest)."""
    f = a.shape[2]
    if f < 2 * GRAM_BLOCK:
        out.baddbmm_(a.transpose(1, 2), a)
        return
    a = a.contiguous()
    for start in range(0, f, GRAM_BLOCK):
        end = min(start + GRAM_BLOCK, f)
        out[:, start:end, start:].baddbmm_(a[:, :, start:end].transpose(1, 2), a[:, :, start:])


def _symmetric(gram: Tensor) -> Tensor:
    """The full matrix from :func:`_add_gram`'s upper blocks (in place: each lower block is its mirror)."""
    f = gram.shape[2]
    if f < 2 * GRAM_BLOCK:
        return gram
    for start in range(GRAM_BLOCK, f, GRAM_BLOCK):
        gram[:, start:, start - GRAM_BLOCK:start] = gram[:, start - GRAM_BLOCK:start, start:].transpose(1, 2)
    return gram


def _refit(module: nn.Module, xs: list[Tensor], targets: Targets, intercept: bool,
           ridge: float) -> tuple[Tensor, Tensor | None]:
    """A (slimmed) layer's new weight and intercept, fit on the calibration pieces ``xs`` (its
    inputs) to the original outputs ``targets``.

    The rows the targets were drawn at (``fxmeta.pruning.targets``) enter the normal equations,
    which are accumulated piece by piece in float32 for all groups of a grouped conv at once,
    and solved by :func:`_solve`."""
    weight = module.weight.detach()
    groups = getattr(module, "groups", 1)
    out_per, f = weight.shape[0] // groups, weight[0].numel()
    fitted = torch.ones(groups, f + 1, dtype=torch.bool)
    fitted[:, -1] = intercept
    weights = fitted.clone()
    weights[:, -1] = False
    a_t_a = torch.zeros(groups, f + 1, f + 1, device=weight.device)
    a_t_y = torch.zeros(groups, f + 1, out_per, device=weight.device)
    for i, (x, target) in enumerate(zip(xs, targets.parts)):
        if not len(target):
            continue
        rows = targets.piece_rows(i)
        a = input_rows(module, x, None if rows is None else rows.to(x.device))
        ones = torch.full((len(a), groups, 1), float(intercept), dtype=a.dtype, device=a.device)
        a = torch.cat([a.reshape(len(a), groups, f), ones], 2).float().permute(1, 0, 2)  # (groups, rows, f + 1)
        t = target.to(a.device).reshape(len(target), groups, out_per).permute(1, 0, 2)
        _add_gram(a_t_a, a)
        a_t_y.baddbmm_(a.transpose(1, 2), t)
    sol = _solve(_symmetric(a_t_a).cpu(), a_t_y.cpu(), ridge, weights, fitted)  # (groups, f + 1, out_per)
    new_w = sol[:, :-1].transpose(1, 2).reshape(weight.shape)
    new_b = sol[:, -1].reshape(-1) if intercept else None
    return (new_w.to(weight.dtype).to(weight.device),
            None if new_b is None else new_b.to(weight.dtype).to(weight.device))


def _mean_lost(module: nn.Module, targets: Targets, xs: list[Tensor]) -> Tensor:
    """Per output channel, the mean of original output minus the output on ``xs``, over all pieces."""
    total = 0
    for x in xs:
        y = module(x)
        d = channel_dim(module, y)
        total = total + y.double().sum([i for i in range(y.dim()) if i != d])
    return (targets.mean.to(total.device) - total / max(targets.total, 1)).to(module.weight.dtype)


class _Lockstep:
    """Interpreters of one graph, one per piece of the calibration data, run node by node by hand
    (so the caller can act between nodes), freeing values after their last use."""

    def __init__(self, make: Callable[[], fx.Interpreter], pieces: list[tuple]) -> None:
        self.interps = []
        for args in pieces:
            interp = make()
            interp.env = {}
            interp.args_iter = iter(args)
            self.interps.append(interp)

    def step(self, node: fx.Node) -> list[Any]:
        out = []
        for interp in self.interps:
            interp.env[node] = interp.run_node(node)
            out.append(interp.env[node])
        return out

    def values(self, node: fx.Node) -> list[Any]:
        """``node``'s value on each piece."""
        return [interp.env[node] for interp in self.interps]

    def free(self, node: fx.Node) -> None:
        for interp in self.interps:
            for gone in interp.user_to_last_uses.get(node, []):
                interp.env.pop(gone, None)


@torch.no_grad()
def compensate(analysis: ChannelAnalysis, removed: Tensor, calibration: Calibration, mode: str = "lstsq",
               ridge: float = 1e-3, progress: Callable[[str], None] | None = None,
               recorded: TargetRecorder | None = None, small: fx.GraphModule | None = None) -> Compensation:
    """Compensate ``analysis.gm``'s weights in place for removing the units flagged in ``removed``.

    ``small``: the network without those units (``slim(analysis, removed)``, made here if not
    given); its layers are refit in place, then written back into ``analysis.gm``.
    ``recorded``: the original network's outputs, recorded by a pass over the same calibration
    batches (activation importance records them); without them (or if the recorder gave up) the
    original network runs in lockstep with the slim one. The caller owns the weights
    (``fxmeta.prune`` works on a copy of the model)."""
    gm = analysis.gm
    report = Compensation(mode)
    if mode == "none":
        return report
    consumers = set(consumer_nodes(gm))
    calls: dict[str, int] = {}  # calls per module, uses per stored weight of an addmm
    for n in gm.graph.nodes:
        if n.op == "call_module" or n in consumers:
            key = consumer(gm, n).key if n in consumers else n.target
            calls[key] = calls.get(key, 0) + 1
    by_id: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    shared = {name: len(names) for names in by_id.values() for name in names}  # names of each tensor
    # the batches as given (pieces of a captured graph's fixed batch): a network runs faster on
    # small batches than on all of them stacked, and the refit never needs them in one tensor
    pieces = [gm.graph.process_inputs(*inputs)
              for inputs, _ in calibration.chunks(fixed_batch(gm, analysis.example_input))]
    report.samples = sum(int(p[0].shape[0]) for p in pieces)
    small = small if small is not None else slim(analysis, removed)
    small_nodes = {n.name: n for n in small.graph.nodes}
    changed: list[str] = []
    with eval_mode(gm), eval_mode(small):
        original = None if recorded is not None and recorded.usable else _Lockstep(lambda: fx.Interpreter(gm), pieces)
        current = _Lockstep(lambda: fx.Interpreter(small), pieces)
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            if original is not None:
                original.step(node)
            if node in consumers:
                layer = _Layer(node, layer_module(gm, node), layer_module(small, small_nodes[node.name]),
                               current.values(small_nodes[layer_input(node).name]))

                def targets_of(layer: _Layer = layer) -> Targets | None:
                    if original is None:
                        return recorded.get(layer.node.name)
                    ys = original.values(layer.node)
                    return Targets.of(layer.node.name, layer.module, ys, mode == "bias") \
                        if isinstance(ys[0], Tensor) else None

                changed += _compensate_layer(gm, layer, targets_of, small, analysis, removed, mode, ridge, calls,
                                             shared, report)
            current.step(small_nodes[node.name])
            if original is not None:
                original.free(node)
            current.free(small_nodes[node.name])
    write_back(analysis, removed, small, changed)
    report.skipped.update(_weights_outside_layers(analysis, removed, consumers))
    if progress is not None:
        progress(f"compensated {len(report.changed)} layers ({mode})")
    return report


_PRODUCTS = {torch.matmul, operator.matmul, torch.mm, torch.bmm, torch.einsum, torch.addmm, torch.baddbmm, torch.mv,
             torch.addmv, F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d}
_PRODUCT_METHODS = {"matmul", "mm", "bmm", "mv", "__matmul__"}


def _weights_outside_layers(analysis: ChannelAnalysis, removed: Tensor, consumers: set) -> dict[str, str]:
    """Weights that sum over a removed channel in a product the compensation does not refit (``x @ w``
    with a stored ``w``, say): named so in the plan. (Element-wise uses, a position embedding added,
    need no refit.)"""
    gm, out = analysis.gm, {}
    for node in gm.graph.nodes:
        product = (node.op == "call_function" and node.target in _PRODUCTS) or \
            (node.op == "call_method" and node.target in _PRODUCT_METHODS)
        if not product or node in consumers:
            continue
        weights = [a.target for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"
                   and getattr(get_tensor(gm, a.target), "dim", lambda: 0)() >= 2]
        inputs = [analysis.values.get(a.name) for a in node.args if isinstance(a, fx.Node) and a.op != "get_attr"]
        if weights and any(isinstance(v, list) and any(d is not None and bool(removed[analysis.roots(d)].any())
                                                       for d in v) for v in inputs):
            name = getattr(node.target, "__name__", str(node.target)).strip("_")
            out.update({w: f"read by {name}, not by a Linear / Conv layer: not refit" for w in weights})
    return out


@dataclass
class _Layer:
    node: fx.Node  # the consumer in the original graph
    module: nn.Module  # its module there (``layers.layer_module``)
    small: nn.Module  # its slimmed module
    xs: list[Any]  # its inputs in the slim network, one per piece


def _compensate_layer(gm: fx.GraphModule, layer: _Layer, targets_of: Callable[[], Targets | None],
                      small: fx.GraphModule, analysis: ChannelAnalysis, removed: Tensor, mode: str, ridge: float,
                      calls: dict, shared: dict, report: Compensation) -> list[str]:
    """Compensate one consumer for its removed inputs; returns the names of the tensors changed in ``small``."""
    node, xs = layer.node, layer.xs
    module, names = layer.module, consumer(gm, node)
    if not isinstance(xs[0], Tensor):
        return []
    units = input_units(analysis, node, channel_dim(module, xs[0]))
    if units is None or not bool(removed[units].any()):
        return []  # the layer loses no input
    name = names.key
    why = _why_not(module)
    if why is None and calls[name] > 1:
        why = "the layer is called more than once"
    if why is None and any(shared.get(t, 1) > 1 for t in (names.weight, names.bias) if t):
        why = "its weights are shared with another layer"
    if why is None and mode == "lstsq" and node.op == "call_module" and len(node.args) + len(node.kwargs) > 1:
        why = "called with more than its input"
    if why is not None:
        report.skipped[name] = why
        return []
    targets = targets_of()
    if targets is None:
        return []
    out_labels = analysis.param_dims.get((names.weight, names.out_dim))
    if out_labels is not None:  # the layer's own output channels that stay
        targets = targets.restricted((~removed[analysis.roots(out_labels)]).nonzero().squeeze(1))
    bn_node = None if module.bias is not None else _only_batchnorm_user(gm, node, calls)
    touched = []
    if mode == "lstsq":
        new_w, shift = _refit(layer.small, xs, targets, module.bias is not None or bn_node is not None, ridge)
        layer.small.weight.copy_(new_w)
        touched.append(names.weight)
        if shift is not None and module.bias is not None:
            layer.small.bias.copy_(shift)
            touched.append(names.bias)
            shift = None
    else:
        shift = _mean_lost(layer.small, targets, xs)
        if module.bias is not None:
            layer.small.bias.add_(shift)
            touched.append(names.bias)
            shift = None
    if shift is not None and bn_node is not None:
        small.get_submodule(bn_node.target).running_mean.sub_(shift.to(module.weight.dtype))
        touched.append(f"{bn_node.target}.running_mean")
    elif mode == "bias" and shift is not None:
        report.skipped[name] = "no bias to shift and no BatchNorm after it (fxmeta adds no parameters)"
        return []
    report.changed.append(name)
    return touched
