"""What every method starts from: base networks, the metanetwork, Torch-Pruning's sparsity learning
(Torch-Pruning's pruners themselves are in ``benchmarks.tp_baselines``)."""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..tp_baselines import tp_group_pruner
from .settings import (
    DATA_SPEC,
    IMAGE_SIZE,
    TP_STEPS,
    Context,
    _eval,
    _key,
    _latency_ms,
    _read_json,
    _tag,
    _write_json,
    say,
)

# ---------------------------------------------------------------------------- base networks


def build_bases(ctx: Context, arch: str) -> None:
    """The benchmark's base networks: seeds ``s.seeds``, the zoo's recipe without pre-pruning."""
    from fxmeta.io import load
    from fxmeta.metatrain.zoo import build_zoo

    s = ctx.s
    seeds = sorted(s.seeds)
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit("base seeds must be consecutive (they are built as one zoo)")
    folder = ctx.cache / "base" / f"{arch}-{_key([ctx.base_settings(arch), seeds])}"
    say(f"{arch}: base networks (seeds {seeds}, {s.base_epochs} epochs) in {folder}")
    if (folder / "zoo.json").is_file():
        ctx.reused.append(f"{arch} base networks")
    zoo = build_zoo(f"fxmeta:{arch}", data=DATA_SPEC, count=len(seeds), out=folder, prune_speedup=1.0,
                    epochs=s.base_epochs, finetune_epochs=0, seed=seeds[0], val_count=0, lr=s.base_lr(arch),
                    batch_size=s.batch_size, progress=True)
    for member in zoo.members:
        model = load(zoo.path(member)).eval()
        val, test = _eval(model, ctx)
        ctx.bases[(arch, member.seed)] = {"model": model, "val_acc": val, "test_acc": test,
                                          "train_seconds": member.metrics.get("seconds")}
        ctx.latencies[(arch, member.seed)] = _latency_ms(model, ctx)
        say(f"{arch} seed {member.seed}: base val {val:.4f} test {test:.4f} "
            f"(trained in {member.metrics.get('seconds')} s), latency {ctx.latencies[(arch, member.seed)]:.2f} ms")


# ------------------------------------------------------------------------------ metanetwork


def _meta_train_once(ctx: Context, arch: str, zoo_dir: Path, meta_dir: Path, reg: float) -> dict:
    """One meta-training run (resumable), with its wall time."""
    from fxmeta.metatrain.loop import meta_train

    s = ctx.s
    timing_path = meta_dir / "timing.json"
    timing = _read_json(timing_path)
    if timing is not None:
        ctx.reused.append(f"{arch} metanetwork reg {reg:g}")
        return timing
    previous = _read_json(meta_dir / "partial_seconds.json") or {"seconds": 0.0}
    say(f"{arch}: meta-training {s.meta_epochs} epochs (width {s.meta_width}, depth {s.meta_depth}, ratio "
        f"{s.meta_ratio:g}, reg {reg:g}; checkpoint chosen at {s.meta_speedup:g}x with {s.meta_eval_finetune} "
        f"finetune epochs on the held-out members) in {meta_dir}")
    t0 = time.perf_counter()
    try:
        result = meta_train(zoo_dir, out=meta_dir, epochs=s.meta_epochs, preset_name="reference", width=s.meta_width, depth=s.meta_depth,
                            ratio=s.meta_ratio, reg=reg, speedup=s.meta_speedup, batch_size=s.batch_size,
                            eval_finetune_epochs=s.meta_eval_finetune, resume=True, progress=True)
    finally:  # an interrupted meta-training resumes; its time so far still counts
        _write_json(meta_dir / "partial_seconds.json", {"seconds": previous["seconds"] + time.perf_counter() - t0})
    timing = {"meta_seconds": previous["seconds"] + time.perf_counter() - t0, "best_epoch": result.best_epoch,
              "best_score": result.best_score, "history": result.history}
    _write_json(timing_path, timing)
    return timing


def build_metanet(ctx: Context, arch: str) -> None:
    """Zoo of other seeds + meta-training for each reg of the grid; the held-out members' score
    (meta_train's checkpoint score) picks the reg. Cached, with the wall time of everything."""
    from fxmeta.metanet import load_metanet
    from fxmeta.metatrain.zoo import build_zoo

    s = ctx.s
    zoo_settings = {"count": s.zoo_count, "val": s.zoo_val, "epochs": s.zoo_epochs, "seed": s.zoo_seed,
                    "lr": s.base_lr(arch), "batch_size": s.batch_size, "image_size": IMAGE_SIZE}
    meta_settings = {"epochs": s.meta_epochs, "width": s.meta_width, "depth": s.meta_depth, "ratio": s.meta_ratio,
                     "speedup": s.meta_speedup, "batch_size": s.batch_size, "eval_finetune": s.meta_eval_finetune}
    zoo_dir = ctx.cache / "zoo" / f"{arch}-{_key(zoo_settings)}"
    say(f"{arch}: zoo of {s.zoo_count} members (seeds {s.zoo_seed}..{s.zoo_seed + s.zoo_count - 1}, "
        f"{s.zoo_val} held out) in {zoo_dir}")
    if (zoo_dir / "zoo.json").is_file():
        ctx.reused.append(f"{arch} zoo")
    t0 = time.perf_counter()
    zoo = build_zoo(f"fxmeta:{arch}", data=DATA_SPEC, count=s.zoo_count, out=zoo_dir, prune_speedup=1.0,
                    epochs=s.zoo_epochs, finetune_epochs=0, seed=s.zoo_seed, val_count=s.zoo_val, lr=s.base_lr(arch),
                    batch_size=s.batch_size, progress=True)
    zoo_seconds = sum(float(m.metrics.get("seconds", 0.0)) for m in zoo.members)
    say(f"{arch}: zoo ready ({time.perf_counter() - t0:.0f} s now; {zoo_seconds:.0f} s to build in total)")
    grid = {}
    for reg in s.meta_regs:
        meta_dir = ctx.cache / "metanet" / f"{arch}-reg{_tag(reg)}-{_key([zoo_settings, meta_settings, reg])}"
        grid[reg] = {**_meta_train_once(ctx, arch, zoo_dir, meta_dir, reg), "dir": str(meta_dir)}
        say(f"{arch}: meta reg {reg:g}: best epoch {grid[reg]['best_epoch']}, held-out score "
            f"{grid[reg]['best_score']:.4f}, {grid[reg]['meta_seconds']:.0f} s")
    best = max(s.meta_regs, key=lambda r: grid[r]["best_score"])  # ties: the first (the reference's reg)
    chosen = grid[best]
    ctx.metanets[arch] = {"metanet": load_metanet(str(Path(chosen["dir"]) / "best.pt")).eval(),
                          "zoo_seconds": zoo_seconds, "reg": best, **chosen,
                          "grid_seconds": sum(g["meta_seconds"] for g in grid.values()),
                          "grid": {str(r): {k: v for k, v in g.items() if k != "history"} for r, g in grid.items()},
                          "zoo_members": [asdict(m) for m in zoo.members], "zoo_settings": zoo_settings,
                          "meta_settings": {**meta_settings, "reg": best}}
    ctx.chosen.setdefault(arch, {})["meta_reg"] = {
        "chosen": best, "val_scores": {r: g["best_score"] for r, g in grid.items()},
        "how": f"meta_train's score on the {s.zoo_val} held-out zoo member(s): val acc after the metanetwork, "
               f"prune to {s.meta_speedup:g}x and {s.meta_eval_finetune} finetune epochs (best epoch)"}
    say(f"{arch}: metanet reg {best:g} chosen (best epoch {chosen['best_epoch']}, held-out score "
        f"{chosen['best_score']:.4f}), meta-training {chosen['meta_seconds']:.0f} s")


def generate(base: torch.nn.Module, metanet: Any, example: torch.Tensor) -> torch.nn.Module:
    """base -> lower -> metanetwork -> raise: the network the metanetwork generates, trainable."""
    from fxmeta.ir import lower, raise_graph

    graph = lower(base.eval(), example)
    with torch.no_grad():
        module = raise_graph(metanet(graph)).eval()
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def metanet_output(ctx: Context, arch: str, seed: int) -> tuple[Any, float, dict]:
    """The metanetwork's output, once per base network (the same for every target)."""
    if (arch, seed) not in ctx.ours_inputs:
        t0 = time.perf_counter()
        module = generate(ctx.bases[(arch, seed)]["model"], ctx.metanets[arch]["metanet"], ctx.example)
        seconds = time.perf_counter() - t0
        val, test = _eval(module, ctx)
        ctx.ours_inputs[(arch, seed)] = (module, seconds, {"metanet_val_acc": val, "metanet_test_acc": test})
    return ctx.ours_inputs[(arch, seed)]


# --------------------------------------------------------------------------- Torch-Pruning


def sparsity_learning(ctx: Context, arch: str, seed: int, reg: float) -> tuple[torch.nn.Module, float, dict]:
    """Torch-Pruning's group_sl sparsity learning on a copy of the base network (cached)."""
    import torch.nn.functional as F

    from fxmeta.training.data import make_loaders
    from fxmeta.training.loop import evaluate

    s = ctx.s
    key = _key([ctx.base_settings(arch), arch, seed, reg, s.sl_epochs, s.sl_lr, s.batch_size])
    path = ctx.cache / "sl" / f"{arch}-s{seed}-reg{_tag(reg)}-{key}.pt"
    meta_path = path.with_suffix(".json")
    model = copy.deepcopy(ctx.bases[(arch, seed)]["model"])
    if path.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        info = _read_json(meta_path)
        return model.eval(), info["seconds"], info
    t0 = time.perf_counter()
    pruner = tp_group_pruner(model, ctx.example, reg, TP_STEPS)
    loaders = make_loaders(ctx.splits, s.batch_size, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.sl_lr, momentum=0.9, weight_decay=0.0)
    milestones = (int(0.6 * s.sl_epochs), int(0.8 * s.sl_epochs))  # TP: 60,80 of 100 epochs
    best_val, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(s.sl_epochs):
        lr = s.sl_lr * 0.1 ** sum(epoch >= m for m in milestones)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(seed * 1_000_003 + epoch)
        loaders.train.generator.manual_seed(seed + epoch)
        model.train()
        for x, y in loaders.train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            pruner.regularize(model)
            optimizer.step()
        val = evaluate(model, loaders.val)["acc"]
        history.append(round(val, 4))
        if val > best_val:  # TP keeps the best-accuracy epoch of sparsity learning
            best_val, best_epoch = val, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(best_state, path)
    info = {"seconds": seconds, "best_epoch": best_epoch, "best_val_acc": best_val, "val_history": history}
    _write_json(meta_path, info)
    say(f"{arch} seed {seed}: SL reg {reg:g} done in {seconds:.0f} s, best epoch {best_epoch}, "
        f"val {best_val:.4f} (per epoch {history})")
    return model.eval(), seconds, info
