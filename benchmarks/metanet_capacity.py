"""Can the metanetwork fit the prunability objective on one network? A capacity check.

Meta-training on a zoo asks the metanetwork to learn one rewrite that makes every member
prunable. Before asking it to generalise, this asks whether it can do the job for a
single network it sees every step: the same prunability objective (cross-entropy of the
generated network + cross-entropy of it with the channels a 4x prune removes masked out,
BatchNorm on batch statistics), the same batches, the same number of AdamW steps, for

- ``metanet``: a fresh metanetwork (ratio 1, zero-initialised decoders: it starts as the
  identity), trained on this one network;
- ``direct``: the network's own weights as free parameters (what ``fxmeta.prepare`` does,
  with AdamW instead of SGD here so the optimisers match);
- ``direct, norms only``: only the norm scales / shifts and biases free.

Reported: the masked cross-entropy along the way and, at the end, validation accuracy after
a real 4x prune + BatchNorm recalibration. One zoo member (``benchmarks.prunability``'s
zoo, member 0), validation split only.

    python -m benchmarks.metanet_capacity
Results: ``benchmarks/results/metanet_capacity.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._env import versions
from benchmarks.common import say

RESULTS = Path(__file__).resolve().parent / "results"


def forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def fit(kind: str, zoo_dir: Path, steps: int, lr: float, batches_per_step: int, speedup: float, seed: int) -> dict:
    from fxmeta.ir.raising import raise_graph, raise_params
    from fxmeta.metatrain.loop import MetaTrainConfig, load_data_model, make_metanet
    from fxmeta.metatrain.zoo import load_zoo
    from fxmeta.tracing import example_from_shape
    from fxmeta.training.curve import prunability_curve
    from fxmeta.training.data import calibration_set, load_data, make_loaders

    zoo = load_zoo(zoo_dir, trust=True)
    example = example_from_shape(zoo.input_shape)
    config = MetaTrainConfig(ratio=1.0, zero_init=True, objective="prunable", mask_speedups=(speedup,), reg=0.0,
                             batches_per_step=batches_per_step, seed=seed, progress=False)
    data_model = load_data_model(zoo.path(zoo.members[0]), example, config, trust=True)
    loaders = make_loaders(load_data(zoo.data, seed=0), config.batch_size, seed=seed)
    batches = forever(loaders.train)
    if kind == "metanet":
        net = make_metanet([data_model.graph], config)
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr,
                                      weight_decay=config.weight_decay)

        def generate() -> dict:
            return raise_params(net(data_model.graph))
    else:
        only_norms = kind == "direct, norms only"
        free = {}
        for name, value in raise_params(data_model.graph).items():
            learned = value.is_floating_point() and "running" not in name
            if only_norms:
                learned = learned and value.dim() == 1  # norm scales / shifts and biases
            free[name] = torch.nn.Parameter(value.detach().clone()) if learned else value
        optimizer = torch.optim.AdamW([p for p in free.values() if isinstance(p, torch.nn.Parameter)], lr=lr,
                                      weight_decay=0.0)

        def generate() -> dict:
            return free
    trace, t0 = [], time.perf_counter()
    masking = data_model.masking
    for step in range(steps):
        params = generate()
        masking.network.set_removed(masking.removed(params, 0))
        ce = masked = 0.0
        for _ in range(batches_per_step):
            x, y = next(batches)
            ce = ce + F.cross_entropy(torch.func.functional_call(data_model.graph.module, params, (x,)), y)
            masked = masked + F.cross_entropy(torch.func.functional_call(masking.network.gm, params, (x,),
                                                                         strict=False), y)
        loss = (ce + masked) / batches_per_step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trace.append({"step": step + 1, "ce": ce.item() / batches_per_step,
                      "masked_ce": masked.item() / batches_per_step})
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        params = {k: v.detach() for k, v in generate().items()}
    module = raise_graph(data_model.graph).eval()
    module.load_state_dict({k: v for k, v in params.items() if k in module.state_dict()}, strict=False)
    calibration = calibration_set(loaders.train.dataset, 20, config.batch_size, seed=seed)
    curve = prunability_curve(module, example, loaders.val, [speedup], calibration=calibration, split="val")
    point = curve.points[0]
    if trace:
        say(f"{kind}: masked ce {trace[0]['masked_ce']:.3f} -> {trace[-1]['masked_ce']:.3f}, "
            f"{speedup:g}x + recal val {point.recalibrated_accuracy:.4f}, {seconds:.0f} s")
    return {"kind": kind, "trace": trace, "seconds": seconds, "val_acc": curve.unpruned,
            "recal_val_acc": point.recalibrated_accuracy, "pruned_val_acc": point.accuracy}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.zoo import Settings, build_zoo_once

    p = argparse.ArgumentParser(prog="python -m benchmarks.metanet_capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/fxmeta-bench/prepare"))
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = "/".join(f"{x:.2f}" for x in os.getloadavg())
    zoo, _ = build_zoo_once(Settings(), Path(args.cache) / "full")
    runs = [fit("metanet", zoo, args.steps, 1e-3, 4, 4.0, 0), fit("direct", zoo, args.steps, 1e-3, 4, 4.0, 0),
            fit("direct, norms only", zoo, args.steps, 1e-2, 4, 4.0, 0)]
    baseline = fit("direct", zoo, 0, 1e-3, 4, 4.0, 0) if args.steps else None
    lines = ["# Metanetwork capacity: the prunability objective fitted on one network", "",
             "- command: `python -m benchmarks.metanet_capacity" + (f" --steps {args.steps}" if args.steps != 60
                                                                      else "") + "`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads = "
             f"{args.threads}; load average at start {load_start}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
             f"- network: zoo member 0 of `benchmarks.prunability` (ResNet20, digits 16x16); {args.steps} AdamW steps "
             "of 4 batches of 128; target 4x; validation split; seed 0", "",
             "| what is trained | lr | masked CE at step 1 / 10 / 30 / last | val acc unpruned | val acc after 4x prune "
             "+ recal | s |", "|---|---|---|---|---|---|"]
    if baseline:
        lines.append(f"| nothing (the network as trained) | - | - | {100 * baseline['val_acc']:.1f} | "
                     f"{100 * baseline['recal_val_acc']:.1f} | - |")
    for run, lr in zip(runs, (1e-3, 1e-3, 1e-2)):
        t = run["trace"]
        picks = " / ".join(f"{t[i]['masked_ce']:.2f}" for i in (0, 9, 29, len(t) - 1) if i < len(t))
        lines.append(f"| {run['kind']} | {lr:g} | {picks} | {100 * run['val_acc']:.1f} | "
                     f"{100 * run['recal_val_acc']:.1f} | {run['seconds']:.0f} |")
    lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "metanet_capacity.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "metanet_capacity.json").write_text(json.dumps({"runs": runs, "baseline": baseline}, indent=1))
    say(f"wrote {RESULTS / 'metanet_capacity.md'}")


if __name__ == "__main__":
    main()
