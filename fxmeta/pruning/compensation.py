"""Weight compensation: after the units to remove are chosen, change the weights that stay so
the network loses less, on calibration data and before anything is removed.

Every Linear / Conv layer that reads a removed channel is a *consumer*. The original network
and the masked one (removed channels zeroed, norms over kept entries: the self-check's
reference) run side by side on the calibration batches, node by node in graph order; at each
consumer, with its input taken from the already compensated masked network:

- ``bias``: the mean of what the layer lost, ``mean(original output - current output)`` per
  output channel, is added to its bias (FLAP's bias compensation, with the inputs the
  compensated network really feeds it);
- ``lstsq``: its weights on the kept input channels and its bias are refit by ridge least
  squares to reproduce its original output (ThiNet / He et al. 2017's reconstruction, for
  convolutions through their unfolded inputs, one solve per group of a grouped conv).

A layer without a bias whose output goes only into a BatchNorm takes the shift through that
BatchNorm's running mean instead (the same function in eval mode); a layer with neither gets
no shift, and says so. The compensated weights are the full-size weights, so the pruned
network still equals the masked original exactly (the self-check holds); BatchNorm
recalibration after the prune stays the caller's choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.channels import ChannelAnalysis
from ..tracing import eval_mode
from .calibration import Calibration, fixed_batch
from .importance import channel_dim, consumer_nodes, input_units
from .selfcheck import masked_original, removed_masks

MAX_ROWS = 32768  # rows (samples x positions) per least-squares solve: a fixed, seeded draw above this


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


def _rows(module: nn.Module, x: Tensor) -> Tensor:
    """A consumer's input as a (rows, features) matrix (convolutions unfolded: channel-major, kernel-minor)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, padding, stride = ((1, module.kernel_size[0]), (1, module.dilation[0]),
                                             (0, module.padding[0]), (1, module.stride[0]))
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _out_rows(module: nn.Module, y: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])


def _row_count(module: nn.Module, y: Tensor) -> int:
    return y.numel() // y.shape[-1 if isinstance(module, nn.Linear) else 1]


def _why_not(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv3d):
        return "Conv3d is not refit"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r} is not refit"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r} is not refit"
    return None


def _solve(a_t_a: Tensor, a_t_y: Tensor, ridge: float, weights: Tensor, fitted: Tensor) -> Tensor:
    """Ridge solutions of a batch of normal equations ``(groups, f, f) sol = (groups, f, out)``, in float64.

    ``fitted`` (groups, f) flags the features in the fit; the others have zero rows and columns, get
    a unit diagonal and solve to zero. ``weights`` flags the fitted features that are weights: they
    are regularised by ``ridge`` times their group's mean diagonal (an intercept is not)."""
    a_t_a, a_t_y = a_t_a.double(), a_t_y.double()
    diag = a_t_a.diagonal(dim1=1, dim2=2)
    scale = (diag * weights).sum(1) / weights.sum(1).clamp_min(1)
    reg = ridge * scale.clamp_min(1e-12)[:, None] * weights + (~fitted).double() + 1e-12
    system = a_t_a + torch.diag_embed(reg)
    factor, info = torch.linalg.cholesky_ex(system)
    if bool((info == 0).all()):
        return torch.cholesky_solve(a_t_y, factor)
    try:  # not positive definite in floating point: LU, then the least-norm solution
        return torch.linalg.solve(system, a_t_y)
    except RuntimeError:
        return torch.linalg.lstsq(system, a_t_y).solution


def _refit(module: nn.Module, xs: list[Tensor], ys: list[Tensor], keep: Tensor, intercept: bool, ridge: float,
           gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """New weight (full size; removed input columns unchanged, they read zeros) and intercept, fit on
    the calibration pieces ``xs`` (inputs) / ``ys`` (original outputs).

    At most MAX_ROWS rows (samples x positions), a seeded draw over all pieces, enter the normal
    equations, which are accumulated piece by piece in float32 for all groups of a grouped conv at
    once, and solved in float64."""
    weight = module.weight.detach()
    groups = getattr(module, "groups", 1)
    out_per, in_per = weight.shape[0] // groups, weight.shape[1]
    counts = [_row_count(module, y) for y in ys]
    total = sum(counts)
    pick = None if total <= MAX_ROWS else torch.randperm(total, generator=gen)[:MAX_ROWS].sort().values
    k = weight[0].numel() // in_per
    cols = keep.reshape(groups, in_per).repeat_interleave(k, dim=1)  # (groups, in_per * k)
    # one group: the kept columns alone (the system's size is the kept features); groups: every
    # group's columns, the removed ones zeroed, so that all groups solve in one batch
    take = cols[0].nonzero().squeeze(1) if groups == 1 else None
    fit_cols = cols if take is None else cols[:, take]
    fitted = torch.cat([fit_cols, torch.full((groups, 1), intercept)], 1)
    weights = torch.cat([fit_cols, torch.zeros(groups, 1, dtype=torch.bool)], 1)
    f = fitted.shape[1]
    a_t_a = torch.zeros(groups, f, f, device=weight.device)
    a_t_y = torch.zeros(groups, f, out_per, device=weight.device)
    mask = fitted.to(weight.dtype).to(weight.device)
    start = 0
    for x, y, n in zip(xs, ys, counts):
        rows = None if pick is None else pick[(pick >= start) & (pick < start + n)] - start
        start += n
        if rows is not None and not len(rows):
            continue
        if take is not None:  # only the kept input channels: fewer columns to unfold
            x = x.index_select(-1 if isinstance(module, nn.Linear) else 1, keep.nonzero().squeeze(1).to(x.device))
        a = _rows(module, x)
        target = _out_rows(module, y)
        if rows is not None:
            a, target = a[rows.to(a.device)], target[rows.to(a.device)]
        ones = torch.ones(len(a), groups, 1, dtype=a.dtype, device=a.device)  # the intercept's column
        a = torch.cat([a.reshape(len(a), groups, -1), ones], 2) * mask  # features out of the fit read zero
        a = a.float().permute(1, 0, 2)  # (groups, rows, f)
        t = target.float().reshape(len(target), groups, out_per).permute(1, 0, 2)
        a_t_a.baddbmm_(a.transpose(1, 2), a)
        a_t_y.baddbmm_(a.transpose(1, 2), t)
    sol = _solve(a_t_a.cpu(), a_t_y.cpu(), ridge, weights, fitted)  # (groups, f, out_per)
    new_w = weight.double().reshape(groups, out_per, in_per * k).clone().cpu()
    fit = sol[:, :-1].transpose(1, 2)  # (groups, out_per, fitted weight columns)
    if take is None:
        new_w = torch.where(cols[:, None, :], fit, new_w)
    else:
        new_w[:, :, take] = fit
    new_b = sol[:, -1].reshape(-1) if intercept else None
    return (new_w.reshape(weight.shape).to(weight.dtype).to(weight.device),
            None if new_b is None else new_b.to(weight.dtype).to(weight.device))


def _mean_lost(module: nn.Module, ys: list[Tensor], xs: list[Tensor]) -> Tensor:
    """Per output channel, the mean of original output minus the output on ``xs``, over all pieces."""
    d = channel_dim(module, ys[0])
    total, count = 0, 0
    for y, x in zip(ys, xs):
        lost = (y - module(x)).double()
        total = total + lost.sum([i for i in range(lost.dim()) if i != d])
        count += lost.numel() // lost.shape[d]
    return (total / max(count, 1)).to(ys[0].dtype)


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
               ridge: float = 1e-3, progress: Callable[[str], None] | None = None) -> Compensation:
    """Compensate ``analysis.gm``'s weights in place for removing the units flagged in ``removed``.

    The caller owns the weights (``fxmeta.prune`` works on a copy of the model)."""
    gm = analysis.gm
    report = Compensation(mode)
    if mode == "none":
        return report
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    shared = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    consumers = set(consumer_nodes(gm))
    # the batches as given (pieces of a captured graph's fixed batch): a network runs faster on
    # small batches than on all of them stacked, and the refit never needs them in one tensor
    pieces = [gm.graph.process_inputs(*inputs)
              for inputs, _ in calibration.chunks(fixed_batch(gm, analysis.example_input))]
    report.samples = sum(int(p[0].shape[0]) for p in pieces)
    gen = torch.Generator().manual_seed(0)
    masks = removed_masks(analysis, removed)
    with eval_mode(gm):
        original = _Lockstep(lambda: fx.Interpreter(gm), pieces)
        masked = _Lockstep(lambda: masked_original(analysis, masks, removed), pieces)
        after: dict[fx.Node, Callable[[], None]] = {}  # a BatchNorm's shift, applied once the original ran it
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            original.step(node)
            if node in after:
                after.pop(node)()
            if node in consumers:
                _compensate_layer(gm, node, original, masked, analysis, removed, mode, ridge, calls, shared, after,
                                  report, gen)
            masked.step(node)
            original.free(node)
            masked.free(node)
    if progress is not None:
        progress(f"compensated {len(report.changed)} layers ({mode})")
    return report


def _compensate_layer(gm: fx.GraphModule, node: fx.Node, original: _Lockstep, masked: _Lockstep,
                      analysis: ChannelAnalysis, removed: Tensor, mode: str, ridge: float, calls: dict, shared: dict,
                      after: dict, report: Compensation, gen: torch.Generator) -> None:
    """Compensate the consumer ``node`` for its removed inputs: its original outputs are in
    ``original``, its (compensated, masked) inputs in ``masked``, one value per piece."""
    module = gm.get_submodule(node.target)
    ys, xs = original.values(node), masked.values(node.args[0])
    if not isinstance(ys[0], Tensor) or not isinstance(xs[0], Tensor):
        return
    units = input_units(analysis, node, channel_dim(module, xs[0]))
    keep = None if units is None else ~removed[units]
    if keep is None or bool(keep.all()):
        return  # the layer loses no input
    name = str(node.target)
    why = _why_not(module)
    if why is None and calls[node.target] > 1:
        why = "the layer is called more than once"
    if why is None and any(len(shared[id(p)]) > 1 for p in module.parameters(recurse=False)):
        why = "its weights are shared with another layer"
    if why is None and mode == "lstsq" and len(node.args) + len(node.kwargs) > 1:
        why = "called with more than its input"
    if why is not None:
        report.skipped[name] = why
        return
    bn_node = None if module.bias is not None else _only_batchnorm_user(gm, node, calls)
    if mode == "lstsq":
        new_w, intercept = _refit(module, xs, ys, keep, module.bias is not None or bn_node is not None, ridge, gen)
        module.weight.copy_(new_w)
        shift = None
        if intercept is not None and module.bias is not None:
            module.bias.copy_(intercept)
        elif intercept is not None:
            shift = intercept
    else:
        shift = _mean_lost(module, ys, xs)
        if module.bias is not None:
            module.bias.add_(shift)
            shift = None
    if shift is not None and bn_node is not None:
        bn = gm.get_submodule(bn_node.target)
        after[bn_node] = lambda bn=bn, shift=shift: bn.running_mean.sub_(shift.to(bn.running_mean.dtype))
    elif mode == "bias" and shift is not None:
        report.skipped[name] = "no bias to shift and no BatchNorm after it (fxmeta adds no parameters)"
        return
    report.changed.append(name)
