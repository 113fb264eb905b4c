"""The sweep of lstsq's settings for ``benchmarks.calibrated``, on the validation split only: ridge,
calibration batches and the allocation, for l2 and activation importance; and where the library's
defaults stand among them. A library of ``benchmarks.calibrated``, not a benchmark of its own.
"""
from __future__ import annotations

from typing import Any

from fxmeta.pruning.spec import CALIBRATED as CALIBRATED_DEFAULTS

from .common import cached_cell, mean_se, say, table

SWEEP = {"importance": ("l2", "activation"), "ridge": (1e-4, 1e-3, 1e-2, 1e-1), "calib_batches": (8, 32),
         "allocation": ("global", "uniform")}


def sweep(bench: Any, arch: str, seeds: list[int], bases: dict, calib: dict, recal: dict,
          target: float = 4.0) -> list[dict]:
    """lstsq's settings on the validation split only (test is never read): ridge, calibration batches and
    the allocation, for l2 and activation importance, at ``target``."""
    import itertools

    import fxmeta
    from fxmeta.pruning.spec import PruneSpec
    from fxmeta.training.data import calibration_set
    from fxmeta.training.loop import evaluate, recalibrate_bn

    out = []
    for seed in seeds:
        base = bases[(arch, seed)]
        for importance, ridge, batches, allocation in itertools.product(*SWEEP.values()):
            parts = {"stage": "sweep", "arch": arch, "seed": seed, "size": bench.image_size, "importance": importance,
                     "ridge": ridge, "calib_batches": batches, "allocation": allocation, "target": target}

            def run(importance=importance, ridge=ridge, batches=batches, allocation=allocation, seed=seed,
                    base=base):
                calibration = calibration_set(bench.data.train, batches, calib["batch_size"], seed=seed)
                spec = PruneSpec(target, importance=importance, compensate="lstsq", ridge=ridge, allocation=allocation)
                module = fxmeta.prune(base, bench.example, spec=spec, calibration=calibration).module.eval()
                no_recal = evaluate(module, bench.loaders.val)["acc"]
                recalibrate_bn(module, bench.recal_batches(seed), recal["batches"])
                return {"val_no_recal": no_recal, "val": evaluate(module, bench.loaders.val)["acc"]}

            out.append(cached_cell(bench.cache, parts, run))
            c = out[-1]
            say(f"sweep {arch} s{seed} {importance} ridge {ridge:g} batches {batches} {allocation}: "
                f"val {c['val']:.4f} (no recal {c['val_no_recal']:.4f})")
    return out


def sweep_table(sweeps: list[dict]) -> str:
    keys = sorted({(c["importance"], c["allocation"], c["ridge"], c["calib_batches"]) for c in sweeps})
    rows = []
    for k in keys:
        cs = [c for c in sweeps if (c["importance"], c["allocation"], c["ridge"], c["calib_batches"]) == k]
        rows.append([k[0], k[1], f"{k[2]:g}", k[3], f"{100 * mean_se([c['val_no_recal'] for c in cs])[0]:.2f}",
                     f"{100 * mean_se([c['val'] for c in cs])[0]:.2f}"])
    return table(["importance", "allocation", "ridge", "calib batches", "val, stored BN stats",
                  "val, BN recalibrated"], rows)


def sweep_verdict(sweeps: list[dict], alloc: str, calib_batches: int) -> str:
    """Where the library's defaults (ridge, calibration batches) stand among the sweep's settings."""
    from fxmeta.pruning.spec import PruneSpec

    def score(ridge: float, batches: int) -> float:
        return mean_se([c["val_no_recal"] for c in sweeps if c["importance"] == CALIBRATED_DEFAULTS["importance"]
                        and c["allocation"] == alloc and c["ridge"] == ridge and c["calib_batches"] == batches])[0]

    settings = {(c["ridge"], c["calib_batches"]) for c in sweeps}
    best = max(settings, key=lambda k: score(*k))
    ours = (PruneSpec(2.0).ridge, calib_batches)
    gap = 100 * (score(*best) - score(*ours))
    return (f"For {CALIBRATED_DEFAULTS['importance']} + lstsq, {alloc}: the best setting is ridge {best[0]:g} with "
            f"{best[1]} batches ({100 * score(*best):.2f}); the library's defaults, ridge {ours[0]:g} and {ours[1]} "
            f"batches, score {100 * score(*ours):.2f}" + (" (they are the best)." if best == ours else
            f", {gap:.2f} points below" + (f": kept, within 0.5 points of the best at {best[1] // ours[1]}x less "
                                          "calibration time." if gap <= 0.5 and best[1] > ours[1] else ".")))
