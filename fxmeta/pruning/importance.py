"""Importance criteria: a score per unit of a dependency group (higher: keep)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..analysis.channels import ChannelAnalysis, Group
from ..errors import PruningError
from ..tracing import eval_mode
from .calibration import Calibration, fixed_batch
from .layers import consumer_nodes, layer_input, layer_module
from .targets import TargetRecorder, channel_dim

Importance = Callable[[Group, dict[str, Tensor]], Tensor]


# --------------------------------------------------------------------------- importance


def _group_reduce(group: Group, params: dict[str, Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    total = torch.zeros(group.units, dtype=torch.float64)
    for name, dim, index in group.slices:
        p = params[name].detach()
        total += fn(p.movedim(dim, 0)[index.to(p.device)].flatten(1).double()).sum(1).cpu()
    return total / max(1, len(group.slices))


def l2_importance(group: Group, params: dict[str, Tensor]) -> Tensor:
    """Group L2 norm: root of the mean over the group's slices of each unit's squared norm."""
    return _group_reduce(group, params, lambda t: t.pow(2)).sqrt()


def l1_importance(group: Group, params: dict[str, Tensor]) -> Tensor:
    return _group_reduce(group, params, lambda t: t.abs())


def random_importance(seed: int = 0) -> Importance:
    gen = torch.Generator().manual_seed(seed)
    return lambda group, params: torch.rand(group.units, generator=gen, dtype=torch.float64)


def importance_fn(importance: str | Importance, seed: int) -> Importance:
    if callable(importance):
        return importance
    table = {"l2": l2_importance, "l1": l1_importance, "random": random_importance(seed)}
    if importance in ("taylor", "activation"):
        raise PruningError(f"importance {importance!r} reads data: give calibration batches (--data, or "
                           "fxmeta.prune(..., calibration=...))")
    if importance not in table:
        raise PruningError(f"unknown importance {importance!r}; use 'l2', 'l1', 'random', 'taylor', 'activation' "
                           "or a callable")
    return table[importance]


# --------------------------------------------------------------------------- from data


def column_norms(module: nn.Module) -> Tensor:
    """Per input channel, the L2 norm of the weights that read it (a grouped conv's own rows only)."""
    w = module.weight.detach().double()
    if isinstance(module, nn.Linear):
        return w.norm(dim=0)
    groups = module.groups
    out_per, in_per = w.shape[0] // groups, w.shape[1]
    return w.reshape(groups, out_per, in_per, -1).pow(2).sum((1, 3)).sqrt().flatten()


def input_units(analysis: ChannelAnalysis, node: fx.Node, dim: int) -> Tensor | None:
    """The unit of every channel on dim ``dim`` of a consumer's input (None where it carries none)."""
    value = analysis.values.get(layer_input(node).name)
    if not isinstance(value, list) or dim >= len(value) or value[dim] is None:
        return None
    return analysis.roots(value[dim])


def _grouped(analysis: ChannelAnalysis, per_unit: Tensor, name: str) -> Importance:
    """Scores read off a per-unit tensor; a group none of whose units got a value falls back to l2."""
    def score(group: Group, params: dict[str, Tensor]) -> Tensor:
        s = per_unit[group.roots]
        return s if bool((s > 0).any()) else l2_importance(group, params)

    score.__name__ = f"{name}_importance"
    return score


def activation_importance(analysis: ChannelAnalysis, calibration: Calibration,
                          record: TargetRecorder | None = None) -> Importance:
    """Per unit: over every Linear / Conv layer that reads it, the RMS of its input channel on the
    calibration batches times the norm of the weights reading that channel (Wanda-sp's signal, and
    FLAP's with the RMS in place of the fluctuation), summed. A group no such layer reads (a
    layer's output channels that go straight into a norm, say) is scored by l2.

    ``record``: also keeps those layers' outputs for the compensation (``fxmeta.pruning.targets``)."""
    gm = analysis.gm
    consumers = consumer_nodes(gm)
    sums: dict[str, Tensor] = {}
    counts: dict[str, float] = {}
    dims: dict[str, int] = {}

    class Recorder(fx.Interpreter):
        def observe(self, module: nn.Module, x: Tensor, run: Callable[[], object]) -> object:
            node = self.current
            x = x.detach()
            d = dims[node.name] = channel_dim(module, x)
            # per batch in the input's precision (no copy of the activation), accumulated in float64
            square = x.float().pow(2).sum([i for i in range(x.dim()) if i != d]).double()
            sums[node.name] = sums.get(node.name, 0) + square
            counts[node.name] = counts.get(node.name, 0) + x.numel() / max(x.shape[d], 1)
            y = run()
            if record is not None and isinstance(y, Tensor):
                record.add(node.name, module, y, self.samples)
            return y

        def call_module(self, target, args, kwargs):
            if self.current in wanted:
                return self.observe(modules[self.current], args[0],
                                    lambda: super(Recorder, self).call_module(target, args, kwargs))
            return super().call_module(target, args, kwargs)

        def call_function(self, target, args, kwargs):
            if self.current in wanted:
                return self.observe(modules[self.current], args[1],
                                    lambda: super(Recorder, self).call_function(target, args, kwargs))
            return super().call_function(target, args, kwargs)

        def run_node(self, n):
            self.current = n
            return super().run_node(n)

    wanted = set(consumers)
    modules = {n: layer_module(gm, n) for n in consumers}
    with torch.no_grad(), eval_mode(gm):
        recorder = Recorder(gm)
        for inputs, _ in calibration.chunks(fixed_batch(gm, analysis.example_input)):
            first = inputs[0] if inputs else None
            recorder.samples = int(first.shape[0]) if isinstance(first, Tensor) and first.dim() else None
            recorder.run(*inputs)
    if record is not None:
        record.finish()
    per_unit = torch.zeros(analysis.uf.size, dtype=torch.float64)
    for node in consumers:
        if node.name not in sums:
            continue
        rms = (sums[node.name] / max(counts[node.name], 1.0)).sqrt()
        norms = column_norms(modules[node])
        if rms.shape != norms.shape:
            continue
        units = input_units(analysis, node, dims[node.name])
        if units is not None:
            per_unit.index_add_(0, units, (rms * norms).cpu())
    return _grouped(analysis, per_unit, "activation")


def taylor_importance(analysis: ChannelAnalysis, calibration: Calibration) -> Importance:
    """First-order Taylor (Molchanov et al. 2019): per unit and calibration batch, the first-order
    change of the loss when the unit is removed, ``t = sum(w * dL/dw)`` over all of the unit's
    slices; the score is the mean over the batches of ``t ** 2``. Squared per batch, so the
    near-zero mean gradient of a trained network does not cancel the signal. The model's own
    parameters and their ``.grad`` are not touched."""
    gm = analysis.gm
    first: dict[int, str] = {}  # tied parameters (an lm_head and its embedding) are one tensor: one entry
    alias: dict[str, str] = {}
    for n, p in gm.named_parameters(remove_duplicate=False):
        alias[n] = first.setdefault(id(p), n)
    params = {n: p.detach().clone().requires_grad_(p.is_floating_point())
              for n, p in gm.named_parameters(remove_duplicate=False) if alias[n] == n}
    buffers = dict(gm.named_buffers(remove_duplicate=False))
    names = [n for n, p in params.items() if p.requires_grad]
    groups = [g for g in analysis.groups if g.prunable]
    squares = {g.key: torch.zeros(g.units, dtype=torch.float64) for g in groups}
    batches = calibration.chunks(fixed_batch(gm, analysis.example_input))
    with eval_mode(gm), torch.enable_grad():
        for inputs, target in batches:
            out = torch.func.functional_call(gm, {**params, **buffers}, inputs, tie_weights=False)
            loss = calibration.loss_of(out, target, inputs)
            grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)))
            change = {n: params[alias[n]].detach() * grads[alias[n]] for n in alias
                      if grads.get(alias[n]) is not None}
            for g in groups:
                t = torch.zeros(g.units, dtype=torch.float64)
                for name, dim, index in g.slices:
                    if name in change:
                        c = change[name]
                        t += c.movedim(dim, 0)[index.to(c.device)].flatten(1).double().sum(1).cpu()
                squares[g.key] += t.pow(2)

    def score(group: Group, own: dict[str, Tensor]) -> Tensor:
        return squares[group.key] / max(len(batches), 1) if group.key in squares else l2_importance(group, own)

    score.__name__ = "taylor_importance"
    return score


def data_importance(name: str, analysis: ChannelAnalysis, calibration: Calibration | None,
                    record: TargetRecorder | None = None) -> Importance:
    """The data-aware criterion ``name`` ("taylor", "activation") measured on ``calibration``;
    ``record``: see :func:`activation_importance` (taylor records nothing)."""
    if calibration is None:
        raise PruningError(f"importance {name!r} reads data: give calibration batches (--data, or "
                           "fxmeta.prune(..., calibration=...))")
    if name == "activation":
        return activation_importance(analysis, calibration, record)
    return taylor_importance(analysis, calibration)
