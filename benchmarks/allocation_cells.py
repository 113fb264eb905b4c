"""The ResNet56 allocation cells of ``benchmarks.allocation``, shared with ``benchmarks.allocation_confirm``
(which reuses its cache): the allocations, targets and methods compared, the learned optimisers' names, the
zoo members' validation score of a prune (``choice_cell``), the 10-step control's lr per allocation
(``control_lr``), one held-out base network's cell (``cell``) and the start-lr scores a meta-training run
logged (``start_scores``). A library of the benchmarks, not a benchmark."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say
from benchmarks.digits import FULL as PREPARE
from benchmarks.digits import Bench, cache_key
from benchmarks.zoo import STEP_LRS, Settings, gradient_step, rewrite_for

ARCH = "resnet56"
ALLOCATIONS = ("global", "global-mean", "uniform")
TARGETS = (2.0, 3.0, 4.0, 8.0)
STEPS = 10
METHODS = ("fxmeta-l2", "random", f"{STEPS} gradient steps")


def metanet_name(allocation: str) -> str:
    return f"metanet T10 (meta-trained with {allocation})"


# the per-network oracle: benchmarks.prepare's 5 prepare epochs, with the settings its validation sweep
# chose (benchmarks/results/prepare.md: weight 1, lr 0.05, mask once per epoch); at 2x only (~70 s a cell)
PREPARED, PREPARED_HP, PREPARED_TARGETS = "prepared (5 epochs)", {"weight": 1.0, "lr": 0.05, "mask_every": 0}, (2.0,)


def _prune_score(bench: Bench, module: torch.nn.Module, target: float, importance: Any, allocation: str,
                 split: str, seed: int = 0) -> float:
    """Accuracy on ``split`` right after a prune to ``target`` + recalibration on the shared batches."""
    from fxmeta.pruning.pruner import prune
    from fxmeta.training.loop import evaluate, recalibrate_bn

    pruned = prune(module, bench.example, speedup=target, importance=importance, allocation=allocation,
                   seed=seed).module
    recalibrate_bn(pruned, bench.calibration, len(bench.calibration))
    return evaluate(pruned, getattr(bench.loaders, split))["acc"]


def choice_cell(bench: Bench, member: Path, allocation: str, target: float, lr: float | None) -> float:
    """One zoo member's validation score (l2 alone when ``lr`` is None, else 10 SGD steps at ``lr``)."""
    from fxmeta.io.files import load

    path = bench.cache / "allocation-cells" / f"choice-{cache_key([str(member), allocation, target, lr, STEPS])}.json"
    if path.is_file():
        return json.loads(path.read_text())["val_acc"]
    model = load(str(member), trust=True).eval()
    importance: Any = "l2"
    if lr is not None:
        model, importance = gradient_step(model, bench, target, lr, STEPS, allocation)
    acc = _prune_score(bench, model, target, importance, allocation, "val")
    say(f"choice {member.name} {allocation:>11} {target:g}x lr {lr}: val {acc:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val_acc": acc}))
    return acc


def control_lr(bench: Bench, zoo: Path, allocation: str, s: Settings) -> tuple[float, dict]:
    """The 10-step control's lr under ``allocation``: the best of ``STEP_LRS`` on the zoo's held-out
    members' validation split after a prune to ``select_speedup`` (how the learned optimiser's start
    lr is chosen, and benchmarks.prunability's controls' lr)."""
    from fxmeta.metatrain.zoo import load_zoo

    held_out = load_zoo(zoo, trust=True)
    members = [Path(held_out.path(m)) for m in held_out.split("val")]
    scores = {lr: statistics.mean(choice_cell(bench, m, allocation, s.select_speedup, lr) for m in members)
              for lr in STEP_LRS}
    return max(scores, key=scores.get), scores


def cell(bench: Bench, seed: int, method: str, allocation: str, target: float, lr: float,
         metanet: dict | None) -> dict:
    path = bench.cache / "allocation-cells" / \
        f"{ARCH}-s{seed}-{method.replace(' ', '_')}-{allocation}-{target:g}x-" \
        f"{cache_key([lr, metanet['key'] if method.startswith('metanet') else None])}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from fxmeta.errors import FxmetaError

    base, importance = bench.base(ARCH, seed), "random" if method == "random" else "l2"
    record: dict[str, Any] = {"seed": seed, "method": method, "allocation": allocation, "target": target}
    t0 = time.perf_counter()
    try:
        if method.startswith("metanet"):
            base, importance = rewrite_for(metanet["metanet"], bench, base, target, allocation)
        elif method == PREPARED:
            import copy

            from fxmeta.training.prepare import prepare

            config = bench.train_config(PREPARE.pre_epochs, PREPARED_HP["lr"], seed)
            base = prepare(copy.deepcopy(base), bench.example, bench.data, config, [target],
                           weight=PREPARED_HP["weight"], mask_every=PREPARED_HP["mask_every"],
                           allocation=allocation).model.cpu().eval()
        elif method != "fxmeta-l2" and method != "random":
            base, importance = gradient_step(base, bench, target, lr, STEPS, allocation)
        record["recal_test_acc"] = _prune_score(bench, base, target, importance, allocation, "test", seed)
        record["seconds"] = time.perf_counter() - t0
        say(f"{ARCH} s{seed} {method:>45} {allocation:>11} {target:g}x: {record['recal_test_acc']:.4f}")
    except FxmetaError as exc:
        record["error"] = str(exc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def start_scores(cache: Path, name: str) -> dict:
    """The SGD scores of the start-lr candidates a meta-training run logged (its epoch 0)."""
    runs = sorted((cache.glob(f"metanet-{name.replace(' ', '-')}-*/done.json")), key=lambda f: f.stat().st_mtime)
    lines = (runs[-1].parent / "log.jsonl").read_text().splitlines() if runs else []
    return {r["step_lr"]: r["score"] for r in map(json.loads, lines) if "step_lr" in r}
