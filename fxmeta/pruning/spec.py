"""One record of what a prune is: the target, how units are scored, spread and kept, and how
the weights that stay are compensated.

A :class:`PruneSpec` is built once (by the CLI from its flags, by the library from keyword
arguments) and handed to every stage that selects, masks or removes channels, so stages
given the same spec make the same prune.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from ..errors import PruningError
from .selection import check_allocation

# importance criteria by name; the data-aware ones need calibration batches
WEIGHT_IMPORTANCE = ("l2", "l1", "random")
DATA_IMPORTANCE = ("taylor", "activation")
COMPENSATIONS = ("none", "bias", "lstsq")

# What a prune with calibration data does when its importance and compensation are not named:
# chosen on the validation split of ``python -m benchmarks.calibrated`` (benchmarks/results/calibrated.md).
CALIBRATED = {"importance": "activation", "compensate": "lstsq", "allocation": "uniform"}
WEIGHTS_ONLY = {"importance": "l2", "compensate": "none", "allocation": "global"}


def default_settings(with_data: bool, prepare: bool = False) -> dict[str, str]:
    """Importance, compensation and allocation of a prune that names none of them: l2, none and
    global without data; with data the calibrated defaults. A network trained or rewritten for a
    weight-importance prune (``prepare``: a prepare stage or a metanetwork ran) is pruned the way it
    was made for (l2, global) and not compensated: that combination was not measured."""
    if not with_data or prepare:
        return dict(WEIGHTS_ONLY)
    return dict(CALIBRATED)


def recalibrates(spec: PruneSpec) -> bool:
    """Whether BatchNorm statistics should be recomputed after this prune. Not after ``lstsq``: its
    refit reproduces each layer's output under the stored statistics, and recomputing them undid
    part of it on validation (benchmarks/results/calibrated.md)."""
    return spec.compensate != "lstsq"


@dataclass(frozen=True)
class PruneSpec:
    """What to remove and how.

    ``importance``, ``compensate`` and ``allocation`` left as None are filled in by :meth:`resolved`
    once it is known whether the prune has calibration data (:func:`default_settings`): a user who
    gives data gets the calibrated prune without naming it.

    ``speedup``: FLOPs original / pruned to reach. ``importance``: "l2", "l1", "random" (weights
    only), "taylor" (first-order Taylor, Molchanov et al. 2019: per calibration batch the loss change
    of removing the unit, ``sum(w * dL/dw)`` over its slices, squared and averaged), "activation" (each consumer layer's input RMS per
    channel times the norm of the weights that read it, summed over the consumers: Wanda-sp /
    FLAP's signal), or a callable ``(group, params) -> scores``. ``allocation``: how the removal
    spreads over the groups ("global", "global-mean", "uniform", "uniform-tied"). ``round_to``: kept counts are
    multiples of N; ``min_keep``: the least fraction of every group that stays; ``ignore``:
    modules that must not change; ``rules``: extra channel rules ``{op: rule}``.
    ``compensate``: what happens to the weights that stay, computed on the calibration batches
    before removal ("none"; "bias": every layer that loses inputs gets the mean of what it lost
    added to its bias; "lstsq": its kept input weights and bias refit by ridge least squares to
    its original output, layer by layer, each fed by the already compensated layers before it).
    ``ridge``: the least-squares regulariser, relative to the mean diagonal of the inputs' Gram
    matrix. ``seed``: the random importance's seed.
    """

    speedup: float = 2.0
    importance: str | Callable | None = None
    allocation: str | None = None
    round_to: int | None = None
    min_keep: float = 0.1
    ignore: tuple[str, ...] = ()
    rules: Mapping[Any, Callable] | None = field(default=None, compare=False)
    compensate: str | None = None
    ridge: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        self.check(PruningError)

    def check(self, error: type[Exception] = PruningError) -> PruneSpec:
        """Raise ``error`` (a caller's own kind, e.g. SpecError) on any setting out of range."""
        s = self.speedup
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise error(f"speedup must be a number >= 1 (FLOPs original / pruned), got {s!r}")
        if not math.isfinite(s):
            raise error(f"speed-up {s} is not a finite number; ask for the FLOPs ratio to reach, e.g. --speedup 2")
        if s < 1.0:
            raise error(f"speed-up {s} is below 1; ask for the FLOPs ratio to reach, e.g. --speedup 2")
        if self.importance is not None and not callable(self.importance) \
                and self.importance not in WEIGHT_IMPORTANCE + DATA_IMPORTANCE:
            raise error(f"unknown importance {self.importance!r}; use one of "
                        f"{', '.join(WEIGHT_IMPORTANCE + DATA_IMPORTANCE)} or a callable")
        if self.allocation is not None:
            check_allocation(self.allocation, error)
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise error(f"round_to must be a positive integer, got {self.round_to!r}")
        if not isinstance(self.min_keep, (int, float)) or not 0.0 <= self.min_keep <= 1.0:
            raise error(f"min_keep must be within [0, 1], got {self.min_keep!r}")
        if self.compensate is not None and self.compensate not in COMPENSATIONS:
            raise error(f"unknown compensation {self.compensate!r}; use one of {', '.join(COMPENSATIONS)}")
        if not isinstance(self.ridge, (int, float)) or not math.isfinite(self.ridge) or self.ridge < 0:
            raise error(f"ridge must be a finite number >= 0, got {self.ridge!r}")
        return self

    def resolved(self, with_data: bool, prepare: bool = False) -> PruneSpec:
        """This spec with the unset importance / compensation filled in (:func:`default_settings`)."""
        defaults = default_settings(with_data, prepare)
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    @property
    def reads_data(self) -> str | None:
        """What of this prune reads calibration batches ("importance 'taylor'", "compensation 'lstsq'"), or None."""
        if isinstance(self.importance, str) and self.importance in DATA_IMPORTANCE:
            return f"importance {self.importance!r}"
        if self.compensate not in (None, "none"):
            return f"compensation {self.compensate!r}"
        return None

    @property
    def needs_data(self) -> bool:
        """True when the prune reads calibration batches (data importance or compensation)."""
        return self.reads_data is not None

    def with_(self, **changes: Any) -> PruneSpec:
        """A copy with some settings changed (checked again)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """Plain data for plans and run records (a callable importance is "custom")."""
        return {"speedup_target": float(self.speedup),
                "importance": self.importance if isinstance(self.importance, str) else "custom",
                "allocation": self.allocation, "compensate": self.compensate}
