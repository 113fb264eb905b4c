"""Prune a torchvision model from a spec, save it, export it, and check both files.

    python examples/prune_torchvision.py                       # resnet18, random weights
    python examples/prune_torchvision.py --model torchvision:mobilenet_v3_small --speedup 1.5
    python examples/prune_torchvision.py --model torchvision:resnet50@resnet50.pth --out r50_pruned.pt

Your trained weights come in as SPEC@weights.pt (a state_dict; nothing is downloaded).
The same from the command line: ``fxmeta prune torchvision:resnet18 --speedup 2 --out pruned.pt
--export pruned.pt2``. Finetune afterwards (``fxmeta transform ... --data imagefolder:PATH``):
pruning without finetuning costs accuracy.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import fxmeta
from fxmeta.io import resolve_model, save
from fxmeta.io.export import save_program
from fxmeta.pipeline.latency import measure_latency
from fxmeta.pruning.flops import count_flops, count_params
from fxmeta.pruning.pruner import prune
from fxmeta.tracing import example_from_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet18", help="model spec (default: torchvision:resnet18)")
    parser.add_argument("--speedup", type=float, default=2.0, help="FLOPs target (default: 2)")
    parser.add_argument("--round-to", type=int, default=8, help="channel counts stay multiples of this (default: 8)")
    parser.add_argument("--out", help="pruned model file (default: a temporary folder); the .pt2 goes next to it")
    args = parser.parse_args()

    torch.manual_seed(0)
    loaded = resolve_model(args.model)  # eval mode, random init unless SPEC@weights.pt
    x = example_from_shape(loaded.default_input_shape or (1, 3, 224, 224))
    print(f"{loaded.source}: {count_flops(loaded.module, x) / 1e9:.3f} GFLOPs, "
          f"{count_params(loaded.module) / 1e6:.2f} M params")

    result = prune(loaded.module, x, speedup=args.speedup, round_to=args.round_to)
    before, after = measure_latency(loaded.module, x, repeats=20), measure_latency(result.module, x, repeats=20)
    print(f"pruned: {result.speedup:.2f}x fewer FLOPs, {result.params_ratio:.0%} of the params, "
          f"latency {before.median_ms:.1f} -> {after.median_ms:.1f} ms ({before.describe()})")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "pruned.pt"
    save(out, result.module, spec=loaded.spec, spec_kwargs=loaded.spec_kwargs, plan=result.plan,
         input_shape=tuple(x.shape), metrics={"flops_speedup": result.speedup})
    program_path = out.with_suffix(".pt2")
    save_program(result.module, x, program_path)

    # Two ways back: fxmeta rebuilds the module from spec + plan + weights; plain
    # torch.export.load runs the exported program without fxmeta.
    rebuilt = fxmeta.load(out)
    program = torch.export.load(str(program_path)).module()
    with torch.no_grad():
        want = result.module.eval()(x)
        ok = torch.allclose(rebuilt(x), want, atol=1e-5) and torch.allclose(program(x), want, atol=1e-4)
    print(f"wrote {out} and {program_path}; both reproduce the pruned model: {ok}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
