"""The zoo and meta-training setup of ``benchmarks.prunability``, shared by the benchmarks that reuse its
zoos and metanetworks (``prunability``, ``allocation``, ``allocation_confirm``, ``metanet_capacity``, and
the library ``allocation_cells``): its ``Settings`` (the zoo, the metanetwork, the objectives meta-trained),
``STEP_LRS`` (the SGD controls' and the learned optimisers' start-lr candidates), ``build_zoo_once`` and
``meta_train_once`` (cached and resumable), ``rewrite_for`` (a metanetwork's output for a prune and the
importance to prune it with) and ``gradient_step`` (the T-step SGD control on the masked loss).
A library of the benchmarks, not a benchmark."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say
from benchmarks.digits import FULL as PREPARE
from benchmarks.digits import Bench, cache_key

DATA_SPEC = "benchmarks.quality:digits16"  # the same 16x16 digits as benchmarks.prepare, loadable by name
STEP_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Settings:
    family: str = "resnet20"
    transfer: tuple[str, ...] = ("resnet56",)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    targets: tuple[float, ...] = (2.0, 3.0, 4.0, 8.0)
    zoo_count: int = 10
    zoo_val: int = 2
    zoo_seed: int = 1000
    zoo_epochs: int = 20
    zoo_lr: float = 0.1
    meta_epochs: int = 12
    width: int = 32
    depth: int = 6
    ratio: float = 0.01
    batches_per_step: int = 4
    select_speedup: float = 4.0
    # the objective sweep; reg 0.2 = the reference's 10 rescaled to ~8 batches per step (quality.py's reasoning).
    # "prunable" / "reference": ratio 0.01 as the reference; "prunable r1": ratio 1 from a zero-initialised
    # decoder (the metanet starts as the identity but may change weights by their own size); "nodes r1 4x":
    # only node tables (norm scales and shifts, biases) change, one mask target
    objectives: tuple[tuple[str, tuple], ...] = (
        ("prunable", (("objective", "prunable"), ("mask_speedups", (2.0, 4.0, 8.0)), ("mask_weight", 1.0),
                      ("reg", 0.0))),
        ("reference", (("objective", "reference"), ("reg", 0.2))),
        ("prunable r1", (("objective", "prunable"), ("mask_speedups", (2.0, 4.0, 8.0)), ("mask_weight", 1.0),
                         ("reg", 0.0), ("ratio", 1.0), ("zero_init", True))),
        ("nodes r1 4x", (("objective", "prunable"), ("mask_speedups", (4.0,)), ("mask_weight", 1.0),
                         ("reg", 0.0), ("ratio", 1.0), ("zero_init", True), ("learn", "nodes"), ("lr", 3e-3))),
        # told the prune (fxmeta.metanet.condition): removal flags + the masked-loss gradient on 2 batches
        ("conditioned", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                         ("mask_weight", 1.0), ("reg", 0.0), ("ratio", 1.0), ("zero_init", True))),
        # the same, longer (36 epochs: 288 steps), and with the gradient input on 8 batches instead of 2
        ("conditioned 36ep", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                              ("mask_weight", 1.0), ("reg", 0.0), ("ratio", 1.0), ("zero_init", True),
                              ("epochs", 36))),
        ("conditioned g8", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                            ("mask_weight", 1.0), ("reg", 0.0), ("ratio", 1.0), ("zero_init", True),
                            ("grad_batches", 8))),
        # a learned optimiser: the gradient-step head (starts as exactly SGD at step_lr, the lr of the
        # T-step SGD control chosen on the held-out zoo val) and T rewrites unrolled, each told a fresh gradient
        ("conditioned step T1", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                                 ("mask_weight", 1.0), ("reg", 0.0), ("ratio", 1.0), ("zero_init", True),
                                 ("step_lr", 0.03))),
        # 3 rewrites unrolled, on the pruned network's loss alone (the prune is fixed: the unpruned accuracy
        # is never used; with it, trial runs lost held-out accuracy epoch by epoch)
        ("conditioned step T3", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                                 ("mask_weight", 1.0), ("ce_weight", 0.0), ("reg", 0.0), ("ratio", 1.0),
                                 ("zero_init", True), ("step_lr", 0.1), ("steps", 3))),
        # the same with 10 rewrites, against 10 SGD steps (lr 0.1: that control's choice on the zoo val)
        ("conditioned step T10", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                                  ("mask_weight", 1.0), ("ce_weight", 0.0), ("reg", 0.0), ("ratio", 1.0),
                                  ("zero_init", True), ("step_lr", 0.1), ("steps", 10))),
    )
    # families that also get a zoo (8 + 2 of their own, the base recipe's lr) and a metanetwork meta-trained
    # on it; its start lr and the SGD controls' lr on that family are chosen on that zoo's held-out members
    own_zoos: tuple[str, ...] = ("resnet56",)
    own_objectives: tuple[tuple[str, tuple], ...] = (
        ("conditioned step T3", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                                 ("mask_weight", 1.0), ("ce_weight", 0.0), ("reg", 0.0), ("ratio", 1.0),
                                 ("zero_init", True), ("step_lr", 0.1), ("step_lrs", STEP_LRS), ("steps", 3))),
        # 6 epochs: on ResNet20 the 10-rewrite one peaked at epoch 3 of 12 (held-out zoo val)
        ("conditioned step T10", (("objective", "prunable"), ("conditioned", True), ("mask_speedups", (2.0, 4.0, 8.0)),
                                  ("mask_weight", 1.0), ("ce_weight", 0.0), ("reg", 0.0), ("ratio", 1.0),
                                  ("zero_init", True), ("step_lr", 0.1), ("step_lrs", STEP_LRS), ("steps", 10),
                                  ("epochs", 6))),
    )


def build_zoo_once(s: Settings, cache: Path, family: str | None = None) -> tuple[Path, float]:
    """The zoo of ``family`` (default: the metanetworks' family); another family trains at its base lr."""
    from fxmeta.metatrain.zoo import build_zoo

    family = family or s.family
    lr = s.zoo_lr if family == s.family else PREPARE.lr_of(PREPARE.base_lrs, family)
    folder = cache / f"zoo-{family}-{cache_key([s.zoo_count, s.zoo_val, s.zoo_seed, s.zoo_epochs, lr])}"
    say(f"zoo: {s.zoo_count} {family} members, seeds {s.zoo_seed}.., {s.zoo_epochs} epochs (resumable)")
    zoo = build_zoo(f"fxmeta:{family}", data=DATA_SPEC, count=s.zoo_count, out=folder, prune_speedup=1.0,
                    epochs=s.zoo_epochs, finetune_epochs=0, seed=s.zoo_seed, val_count=s.zoo_val, lr=lr,
                    progress=False, trust=True)
    # each member records its own training time: the zoo's cost, however many runs built it
    return folder, sum(float(m.metrics.get("seconds", 0.0)) for m in zoo.members)


def meta_train_once(s: Settings, zoo: Path, name: str, options: dict, cache: Path) -> dict:
    from fxmeta.metanet.files import load_metanet
    from fxmeta.metatrain.loop import meta_train

    options = dict(options)
    epochs = options.pop("epochs", s.meta_epochs)
    settings = {**dict(width=s.width, depth=s.depth, ratio=s.ratio, batches_per_step=s.batches_per_step,
                       speedup=s.select_speedup, eval_finetune_epochs=0, progress=False), **options}
    folder = cache / f"metanet-{name.replace(' ', '-')}-{cache_key([str(zoo), epochs, settings])}"
    done = folder / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return {**info, "baseline": _baseline(folder), "metanet": load_metanet(str(folder / "best.pt"))}
    t0 = time.perf_counter()
    say(f"meta-training ({name}): {epochs} epochs, {options}")
    result = meta_train(zoo, folder, epochs=epochs, preset_name="reference", force=True, trust=True, **settings)
    info = {"seconds": time.perf_counter() - t0, "best_epoch": result.best_epoch, "best_score": result.best_score,
            "history": [{k: v for k, v in h.items() if k != "val"} for h in result.history],
            "options": options if epochs == s.meta_epochs else {**options, "epochs": epochs}}
    done.write_text(json.dumps(info))
    say(f"meta-training ({name}): best epoch {result.best_epoch}, held-out score {result.best_score:.4f}, "
        f"{info['seconds']:.0f} s")
    return {**info, "baseline": _baseline(folder), "metanet": result.metanet}


def _baseline(folder: Path) -> float:
    """The held-out zoo score without a metanetwork (meta-training logs it as epoch 0)."""
    for line in (folder / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("baseline"):
            return float(record["score"])
    return float("nan")


def rewrite_for(metanet: Any, bench: Bench, model: torch.nn.Module, target: float,
                allocation: str = "global") -> tuple[torch.nn.Module, Any]:
    """The metanetwork's output for a prune to ``target`` and the importance to prune it with (a
    conditioned metanetwork takes its gradient on the first of the shared calibration batches)."""
    from fxmeta.metanet.rewriting import apply_for_prune
    from fxmeta.pruning.spec import PruneSpec

    return apply_for_prune(metanet, model, bench.example, PruneSpec(target, allocation=allocation), bench.calibration)


def gradient_step(model: torch.nn.Module, bench: Bench, target: float, lr: float,
                  steps: int = 1, allocation: str = "global") -> tuple[torch.nn.Module, Any]:
    """``steps`` SGD steps of ``model``'s weights on the masked loss of the prune fixed by its own weights,
    each on the first 2 calibration batches (what the conditioned metanetwork sees), and that prune's
    importance."""
    from fxmeta.ir import lower, raise_graph
    from fxmeta.metanet.condition import Condition

    graph = lower(model, bench.example)
    condition = Condition(graph, bench.example, target, allocation=allocation)
    params = condition.sgd(dict(graph.module.named_parameters()), bench.calibration[:2], lr, steps)
    module = raise_graph(graph)
    module.load_state_dict(params, strict=False)
    return module, condition.importance()
