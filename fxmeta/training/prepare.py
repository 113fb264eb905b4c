"""Prepare for pruning: train a network on the prunability objective before removal.

The objective is ``CE(net(x)) + weight * CE(masked(x))``, where ``masked`` is the same
network with the channels that a prune to the target speed-up would remove masked out
and BatchNorm on batch statistics (:class:`fxmeta.pruning.masking.MaskedNetwork`): the loss of
the network as it will be after removal and recalibration. Training on it moves the
function out of the channels that will go and makes the importance ranking true, so
that the prune that follows costs little accuracy before any finetune.

Mask schedule: the removed set is recomputed from the current weights, with the
pruner's own importance and FLOPs-targeted selection, at the start of every epoch and,
with ``mask_every=N``, every N steps. Once per epoch is the default: the ranking moves
slowly against one epoch of updates, and a mask that is a function of the weights at a
fixed point of the run keeps resume exact. With several targets, each step draws one
(from a generator seeded by the run's seed and the epoch: the same on every rank and
after a resume).

The plain pass is an ordinary training pass (BatchNorm running statistics update as in
any epoch); the masked pass never touches running statistics.

``sparsity=D`` adds a graded weight decay on every prunable unit's weights: ``D`` on each
group's strongest unit by weight norm, growing to ``16 D`` on its weakest (the schedule of
DepGraph's sparsity learning, Fang et al. 2023, written here as a gradient term). The
masked term alone trains the network the prune leaves until it fits the training set and
the finetune after the prune then has nothing left to learn; on small data the decay is
the regulariser that keeps that from happening (``benchmarks/results/prepare_seqconv*.md``).
The coefficients are fixed with the mask, once per mask update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..analysis.channels import analyze
from ..errors import SpecError
from ..pruning.importance import l2_importance
from ..pruning.masking import MaskedNetwork, analytic_flops, calibrate_target, removal

GRADED_DECAY_RANGE = 16.0  # the weakest unit of a group decays this many times faster than its strongest


@dataclass
class PrepareConfig:
    """Settings of the prepare stage.

    ``epochs`` of training on the prunability objective; ``speedups`` are the FLOPs
    targets whose masks are trained (empty: the run's own target); ``weight`` multiplies
    the masked term; ``mask_every`` recomputes the mask every N steps besides once per
    epoch (0: once per epoch); ``lr`` overrides the finetune's learning rate; ``sparsity``
    is the graded weight decay on prunable units (0: none; see the module doc).
    """

    epochs: int = 0
    speedups: tuple[float, ...] = ()
    weight: float = 1.0
    mask_every: int = 0
    lr: float | None = None
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        self.speedups = tuple(float(s) for s in self.speedups)
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise SpecError(f"prepare epochs must be an integer >= 0, got {self.epochs!r}")
        if any(not math.isfinite(s) or s < 1 for s in self.speedups):
            raise SpecError(f"prepare speed-ups must be finite numbers >= 1, got {self.speedups}")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise SpecError(f"prepare weight must be a finite number >= 0, got {self.weight}")
        if not math.isfinite(self.sparsity) or self.sparsity < 0:
            raise SpecError(f"prepare sparsity must be a finite number >= 0, got {self.sparsity}")
        if self.mask_every < 0:
            raise SpecError(f"mask_every must be >= 0, got {self.mask_every}")
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
            raise SpecError(f"prepare lr must be a positive number, got {self.lr}")


class _Pair(nn.Module):
    """Runs the network and its masked twin on the same batch (one module, so DDP sees both)."""

    def __init__(self, model: nn.Module, masked: MaskedNetwork) -> None:
        super().__init__()
        self.model = model
        self.masked = masked

    def forward(self, x: Any) -> tuple[Any, Any]:
        return self.model(x), self.masked(x)


class PrunabilityObjective:
    """``CE(net) + weight * CE(net with the channels a prune to a target removes masked)``, with
    the graded decay of ``sparsity`` added to the gradients.

    A :class:`fxmeta.training.loop.Objective`: ``train(model, data, config, objective)`` trains on it.
    Build it on the CPU model, before training moves it."""

    def __init__(self, model: nn.Module, example_input: Any, speedups: Sequence[float], *, weight: float = 1.0,
                 mask_every: int = 0, importance: str = "l2", round_to: int | None = None,
                 ignore: Sequence[str] = (), min_keep: float = 0.1, seed: int = 0,
                 allocation: str = "global", sparsity: float = 0.0) -> None:
        if not speedups:
            raise SpecError("the prunability objective needs at least one speed-up target")
        self.speedups = [float(s) for s in speedups]
        self.weight = float(weight)
        self.mask_every = int(mask_every)
        self.sparsity = float(sparsity)
        self.seed = seed
        self._select = {"importance": importance, "round_to": round_to, "min_keep": min_keep, "seed": seed,
                        "allocation": allocation}
        self.analysis = analyze(model, example_input, ignore=tuple(ignore))
        self.masked = MaskedNetwork(self.analysis)
        self._flops = analytic_flops(self.analysis)  # runs the model: once, while it is on the CPU
        self.targets = [calibrate_target(self.analysis, s, **self._select) for s in self.speedups]
        self.removed: list[Tensor] = []
        self._gen = torch.Generator()
        self.mask_updates = 0
        self._decay: list[tuple[Tensor, int, Tensor, Tensor]] = []

    def update_masks(self) -> list[Tensor]:
        """Recompute the removed set of every target (and the decay's coefficients) from the current weights."""
        self.removed = [removal(self.analysis, s, flops_target=t, flops=self._flops, **self._select)
                        for s, t in zip(self.speedups, self.targets)]
        if self.sparsity:
            self._decay = self._graded_decay()
        self.mask_updates += 1
        return self.removed

    def _graded_decay(self) -> list[tuple[Tensor, int, Tensor, Tensor]]:
        """(parameter, dim, index, per-unit coefficient) for every slice of every prunable group."""
        params = dict(self.analysis.gm.named_parameters(remove_duplicate=False))
        terms = []
        for group in self.analysis.groups:
            if not group.prunable:
                continue
            norm = l2_importance(group, params)
            spread = norm.max() - norm.min()
            rank = (norm.max() - norm) / spread if spread > 0 else torch.zeros_like(norm)
            coef = (self.sparsity * GRADED_DECAY_RANGE ** rank).float()
            for name, dim, index in group.slices:
                p = params[name]
                terms.append((p, dim, index.to(p.device), coef.to(p.device)))
        return terms

    @torch.no_grad()
    def after_backward(self) -> None:
        """Add the graded decay's gradient, ``coef * w``, to every prunable unit's weights."""
        for p, dim, index, coef in self._decay:
            if p.grad is None:
                continue
            grad, weight = p.grad.movedim(dim, 0), p.movedim(dim, 0)
            grad[index] += coef.view(-1, *[1] * (weight.dim())) * weight[index]

    def wrap(self, model: nn.Module) -> nn.Module:
        return _Pair(model, self.masked)

    def begin_epoch(self, epoch: int) -> None:
        self._gen.manual_seed(self.seed * 1_000_003 + epoch)
        self.update_masks()

    def before_step(self, step: int) -> None:
        if self.mask_every and step and step % self.mask_every == 0:
            self.update_masks()
        pick = int(torch.randint(len(self.removed), (), generator=self._gen)) if len(self.removed) > 1 else 0
        self.masked.set_removed(self.removed[pick])

    def loss(self, out: Any, y: Tensor, criterion: nn.Module) -> tuple[Tensor, Tensor]:
        from .loop import flat_logits

        full, masked = out  # logits, or model outputs (a language model's: next-token loss per position)
        return criterion(*flat_logits(full, y)) + self.weight * criterion(*flat_logits(masked, y)), full


def prepare(model: nn.Module, example_input: Any, data: Any, train_config: Any, speedups: Sequence[float], *,
            weight: float = 1.0, mask_every: int = 0, importance: str = "l2", round_to: int | None = None,
            ignore: Sequence[str] = (), min_keep: float = 0.1, allocation: str = "global",
            sparsity: float = 0.0) -> Any:
    """Train ``model`` in place for ``train_config.epochs`` epochs on the prunability objective.

    Returns the :class:`fxmeta.training.loop.TrainResult` with the last epoch's weights (the mask
    moves with the weights, so no earlier epoch is scored on what the prune will see)."""
    from dataclasses import replace

    from .loop import train

    objective = PrunabilityObjective(model.cpu(), example_input, speedups, weight=weight, mask_every=mask_every,
                                     importance=importance, round_to=round_to, ignore=ignore, min_keep=min_keep,
                                     seed=train_config.seed, allocation=allocation, sparsity=sparsity)
    return train(model, data, replace(train_config, keep="last"), objective)
