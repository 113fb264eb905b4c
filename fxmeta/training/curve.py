"""The prunability curve: accuracy (perplexity for a language model) right after pruning, at
several FLOPs targets.

For each speed-up the model is pruned (fxmeta's importance and selection, self-checked)
and scored on one split twice: as pruned, and after its BatchNorm statistics are
recomputed on a fixed list of training batches (the same batches at every target, so
points and curves compare). No finetuning: the curve measures how easy a network is to
prune, which is what the prepare stage and the metanetwork are for.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from torch import nn
from torch.utils.data import DataLoader

from ..errors import PruningError, SpecError


@dataclass
class CurvePoint:
    speedup: float  # the target
    flops_speedup: float | None = None  # measured; None when the target is out of reach
    accuracy: float | None = None  # as pruned
    recalibrated_accuracy: float | None = None  # after BatchNorm recalibration
    error: str | None = None
    perplexity: float | None = None  # a language model's, as pruned


@dataclass
class Curve:
    """One model's curve; ``unpruned`` is its accuracy on the same split."""

    label: str
    split: str
    unpruned: float
    bn_batches: int
    points: list[CurvePoint] = field(default_factory=list)
    unpruned_perplexity: float | None = None  # language models

    @property
    def language_model(self) -> bool:
        return self.unpruned_perplexity is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def prunability_curve(model: nn.Module, example_input: Any, eval_loader: DataLoader, speedups: Sequence[float], *,
                      calibration: list, label: str = "model", split: str = "test", importance: Any = "l2",
                      round_to: int | None = None, ignore: Sequence[str] = (), device: str = "cpu",
                      progress: Any = None, allocation: str = "global", spec: Any = None) -> Curve:
    """Prune ``model`` (left unchanged) to every target and score it right after removal.

    ``spec`` (a ``PruneSpec``; its speed-up is replaced by each target, its unset importance and
    compensation are the calibrated defaults) says how; without one, ``importance``, ``round_to``,
    ``ignore`` and ``allocation`` do, without compensation (meta-training scores its checkpoints so).
    ``calibration`` (training batches) recalibrates BatchNorm after each prune and feeds a
    data-aware spec (taylor / activation importance, compensation)."""
    from ..pruning.pruner import prune
    from ..pruning.spec import PruneSpec, recalibrates
    from .loop import evaluate, recalibrate_bn

    if spec is None:
        spec = PruneSpec(importance=importance, round_to=round_to, ignore=tuple(ignore), allocation=allocation,
                         compensate="none")
    spec = spec.resolved(with_data=bool(calibration))

    if not speedups:
        raise SpecError("give at least one speed-up")
    model = model.eval()
    unpruned = evaluate(model.to(device), eval_loader, device)
    curve = Curve(label, split, unpruned["acc"], len(calibration), unpruned_perplexity=unpruned.get("ppl"))
    model.cpu()
    for target in speedups:
        if progress:
            progress(f"{label}: {target:g}x")
        try:
            result = prune(model, example_input, speedup=float(target), spec=spec,
                           calibration=calibration if spec.needs_data else None)
        except PruningError as exc:
            curve.points.append(CurvePoint(float(target), error=str(exc)))
            continue
        pruned = result.module.to(device)
        scores = evaluate(pruned, eval_loader, device)
        raw = scores["acc"]
        recal = None
        if calibration and recalibrates(spec):
            recalibrate_bn(pruned, calibration, len(calibration), device)
            recal = evaluate(pruned, eval_loader, device)["acc"]
        curve.points.append(CurvePoint(float(target), result.speedup, raw, recal, perplexity=scores.get("ppl")))
    return curve


def write_json(curves: list[Curve], path: str, force: bool = False) -> None:
    from ..io.saving import atomic_write_text

    atomic_write_text(json.dumps([c.to_json() for c in curves], indent=1), path, force=force)


def plot(curves: list[Curve], path: str, force: bool = False) -> None:
    """Accuracy vs speed-up, as pruned (dashed) and recalibrated (solid), one colour per curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecError("plotting needs matplotlib: pip install matplotlib (or drop --plot)") from None
    import os
    import tempfile

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, c in enumerate(curves):
        ok = [p for p in c.points if p.error is None]
        xs = [p.flops_speedup for p in ok]
        colour = f"C{i}"
        if c.language_model:
            ax.plot(xs, [p.perplexity for p in ok], "o-", color=colour, label=c.label)
            ax.axhline(c.unpruned_perplexity, color=colour, lw=0.8, ls=":")
            continue
        if any(p.recalibrated_accuracy is not None for p in ok):
            ax.plot(xs, [100 * p.recalibrated_accuracy for p in ok], "o-", color=colour,
                    label=f"{c.label}, BatchNorm recalibrated")
        ax.plot(xs, [100 * p.accuracy for p in ok], "x--", color=colour, alpha=0.6, label=f"{c.label}, as pruned")
        ax.axhline(100 * c.unpruned, color=colour, lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("FLOPs speed-up")
    if curves[0].language_model:
        ax.set_yscale("log")
        ax.set_ylabel(f"{curves[0].split} perplexity right after pruning")
    else:
        ax.set_ylabel(f"{curves[0].split} accuracy right after pruning (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        if os.path.exists(path) and not force:
            raise SpecError(f"{path} exists; pass --force to overwrite it")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
