"""The metanetwork rows of ``benchmarks.calibrated``: the committed metanetwork, transferred.

The committed conditioned metanetwork (``fxmeta/assets/metanet_digits.pt``) was meta-trained on
a zoo of ResNet20s on scikit-learn's digits at 16x16; it never saw Fashion-MNIST nor a VGG. Here
it rewrites each Fashion-MNIST base network for the prune (conditioned on the target and on the
masked-loss gradient of the base seed's calibration batches, as ``fxmeta transform --data``
does), which is then pruned to the channels the metanetwork was told, either as it is (then the
same BatchNorm recalibration as every row) or with fxmeta's lstsq compensation on the same
calibration batches. Labelled "transferred" in the report. A library of
``benchmarks.calibrated``, not a benchmark of its own.
"""
from __future__ import annotations

import copy
import hashlib
import time
from typing import Any, Callable

import torch

from .common import cached_cell, mean_se, pct, say, table
from .digits import METANET

ROWS = ("metanet (transferred)", "metanet (transferred) + lstsq")


def metanet_cells(bench: Any, arch: str, seed: int, base: torch.nn.Module, targets: tuple, ft_targets: tuple,
                  settings: dict, finetuned: Callable[[Any, torch.nn.Module, int], dict]) -> list[dict]:
    """Per target and row: validation / test accuracy right after the prune and, at ``ft_targets``, after
    ``finetuned`` (the finetune every method of ``benchmarks.calibrated`` gets)."""
    import fxmeta
    from fxmeta.metanet import load_metanet
    from fxmeta.metanet.rewriting import apply_for_prune
    from fxmeta.pruning.spec import PruneSpec, recalibrates

    digest = hashlib.sha256(METANET.read_bytes()).hexdigest()[:12]
    calibration = bench.calibration(seed)
    metanet = None
    cells = []
    for target in targets:
        for row in ROWS:
            parts = {"stage": "metanet", "row": row, "arch": arch, "seed": seed, "size": bench.image_size,
                     "target": target, "metanet": digest, "told": "prepare defaults", **settings,
                     **({"ft": settings["ft"]} if target in ft_targets else {"ft": None})}

            def run(row: str = row, target: float = target) -> dict:
                nonlocal metanet
                metanet = metanet or load_metanet(str(METANET))
                t0 = time.perf_counter()
                # the prune the metanetwork is told (a weight prune: l2, its allocation), then that very prune
                told_spec = PruneSpec(target).resolved(with_data=False, prepare=True)
                model, told = apply_for_prune(metanet, copy.deepcopy(base), bench.example, told_spec, calibration)
                spec = told_spec.with_(importance=told, compensate="lstsq" if row.endswith("lstsq") else "none")
                module = fxmeta.prune(model, bench.example, spec=spec, calibration=calibration).module.eval()
                seconds = time.perf_counter() - t0
                out = {"seconds": round(seconds, 2), **bench.score(module, seed, recalibrate=recalibrates(spec))}
                if target in ft_targets:
                    for p in module.parameters():
                        p.requires_grad_(True)
                    out.update(finetuned(bench, module, seed))
                return out

            cells.append(cached_cell(bench.cache, parts, run))
            c = cells[-1]
            say(f"{arch} s{seed} {row} {target:g}x: val {c['val']:.4f} test {c['test']:.4f}"
                + (f" -> finetuned test {c['ft_test']:.4f}" if "ft_test" in c else "") + f" ({c['seconds']} s)")
    return cells


def metanet_section(cells: list[dict], reference: dict[str, Callable[[str, float, str], list[float]]],
                    targets: tuple, ft_targets: tuple, ft_epochs: int) -> list[str]:
    """The report's section: the transferred metanetwork's rows beside ``reference`` rows (label ->
    ``(arch, target, key) -> values``, key "test" right after the prune or "ft_test" after the finetune)."""
    lines = ["## The metanetwork, transferred from digits", "",
             "The committed conditioned metanetwork (`fxmeta/assets/metanet_digits.pt`), meta-trained on digits "
             "ResNet20s at 16x16 and **never trained on Fashion-MNIST** (nor on any VGG): it rewrites each base "
             "network for the prune (conditioned on the target and the masked-loss gradient of the calibration "
             "batches), which is then pruned to the channels it was told, as it is (+ BatchNorm recalibration) or "
             f"with lstsq compensation. Test accuracy, mean ± SE over seeds, %; after the finetune: {ft_epochs} "
             "epoch(s), as every row of the section above (0 epochs before the prune).", ""]
    head = ["method"] + [f"{t:g}x right after" for t in targets] + [f"{t:g}x after finetune" for t in ft_targets]
    for arch in sorted({c["arch"] for c in cells}):
        rows = []
        for row in ROWS:
            mine = [c for c in cells if c["arch"] == arch and c["row"] == row]
            rows.append([row] + [pct([c["test"] for c in mine if c["target"] == t]) for t in targets]
                        + [pct([c["ft_test"] for c in mine if c["target"] == t and "ft_test" in c]) or "—"
                           for t in ft_targets])
        for label, values in reference.items():
            if not any(values(arch, t, k) for t in targets for k in ("test", "ft_test")):
                continue  # a row this family has no cells of
            rows.append([label] + [pct(values(arch, t, "test")) or "—" for t in targets]
                        + [pct(values(arch, t, "ft_test")) or "—" for t in ft_targets])
        lines += [f"### {arch}", "", table(head, rows), ""]
        def mean(row: str, t: float, key: str, arch: str = arch) -> float:
            return mean_se([c[key] for c in cells if c["arch"] == arch and c["row"] == row and c["target"] == t])[0]

        best = {t: max(ROWS, key=lambda r: mean(r, t, "val")) for t in targets}  # chosen on validation
        default = next(iter(reference.values()))
        gaps = [f"{t:g}x {100 * (mean(best[t], t, 'test') - mean_se(default(arch, t, 'test'))[0]):+.1f} "
                f"({best[t]})" for t in targets if default(arch, t, "test")]
        if gaps:
            lines += [f"The metanetwork row with the better validation accuracy minus {next(iter(reference))}, test, "
                      "right after the prune: " + ", ".join(gaps) + " points.", ""]
    return lines
