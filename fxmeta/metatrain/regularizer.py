"""DepGraph group-norm sparsity: push the weak channel groups of a network towards zero.

For every dependency group (``fxmeta.analysis``) and every unit ``u`` of it (one channel
and all parameter slices that must be removed with it), with ``sq_u`` the sum of squares
of the unit's slices and ``n_u = sqrt(sq_u)``::

    gamma_u = alpha ** ((max n - n_u) / (max n - min n))      # detached; max/min over the group
    penalty = (reg / 2) * sum_u gamma_u * sq_u

so its gradient is ``reg * gamma_u * theta_u``: exactly what Torch-Pruning's
``GroupNormPruner.regularize`` adds to the gradients (the reference meta-training uses it
with reg = 10, alpha = 2**4). As there, biases are neither measured nor penalised unless
``bias=True``, and a group whose units all have the same norm gets ``gamma = 1``.

The penalty is a plain differentiable function of a ``{name: tensor}`` dict, so it works
on generated weights (``fxmeta.ir.raise_params``) as well as on a model's own parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

Slice = tuple[str, int, Tensor]  # (parameter name, dim, index (units, m))


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


@dataclass
class GroupRegularizer:
    """The penalty over fixed groups; call it on a dict of (possibly generated) parameters."""

    groups: list[list[Slice]]
    reg: float = 10.0
    alpha: float = 16.0

    def unit_sq_norms(self, params: Mapping[str, Tensor]) -> list[Tensor]:
        """Per group, the sum of squares of every unit's slices, shape (units,)."""
        out = []
        for slices in self.groups:
            sq = None
            for name, dim, index in slices:
                part = params[name].movedim(dim, 0)[index].pow(2).flatten(1).sum(1)
                sq = part if sq is None else sq + part
            out.append(sq)
        return out

    def gammas(self, params: Mapping[str, Tensor]) -> list[Tensor]:
        """The detached per-unit weights ``alpha ** ((max n - n) / (max n - min n))``."""
        with torch.no_grad():
            return [_gamma(sq.sqrt(), self.alpha) for sq in self.unit_sq_norms(params)]

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        total = None
        for sq in self.unit_sq_norms(params):
            term = (_gamma(sq.detach().sqrt(), self.alpha) * sq).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.reg * total


def _gamma(norms: Tensor, alpha: float) -> Tensor:
    hi, lo = norms.max(), norms.min()
    if not bool(hi > lo):  # all units equally strong (or a single unit): no preference
        return torch.ones_like(norms)
    return torch.pow(torch.as_tensor(alpha, dtype=norms.dtype), (hi - norms) / (hi - lo))


def regularizer_from_groups(groups: Iterable[Any], *, reg: float = 10.0, alpha: float = 16.0, bias: bool = False,
                            params: Iterable[str] | None = None) -> GroupRegularizer:
    """Build the penalty from dependency groups (objects with ``slices`` and ``prunable``).

    Only prunable groups count (the others can never be removed); ``params`` (names of
    learned parameters) drops slices of buffers or of tensors the caller does not generate.
    """
    keep = set(params) if params is not None else None
    chosen: list[list[Slice]] = []
    for group in groups:
        if not getattr(group, "prunable", True):
            continue
        slices = [(name, int(dim), index) for name, dim, index in group.slices
                  if (bias or not _is_bias(name)) and (keep is None or name in keep)]
        if slices:
            chosen.append(slices)
    return GroupRegularizer(chosen, reg=reg, alpha=alpha)


def group_regularizer(model: nn.Module, example_input: Any, *, reg: float = 10.0, alpha: float = 16.0,
                      bias: bool = False, ignore: Sequence[str] = ()) -> GroupRegularizer:
    """Analyse ``model``'s dependency groups and build the penalty over its parameters."""
    from ..analysis.channels import analyze

    analysis = analyze(model, example_input, ignore=ignore)
    names = [name for name, _ in model.named_parameters()]
    return regularizer_from_groups(analysis.groups, reg=reg, alpha=alpha, bias=bias, params=names)
