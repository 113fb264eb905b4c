"""torch.export -> fxmeta prune -> pruned ExportedProgram -> AOTInductor (or torch.compile).

    python examples/export_pipeline.py [--speedup 2] [--backend aoti|compile|none]

fxmeta takes the torch.export program itself: its ATen ops are mapped back to modules and
torch calls (exactly: the captured graph reproduces the program bit for bit), channels
are removed to the FLOPs target and self-checked, and the slimmed network comes back as
a new ExportedProgram (dynamic batch) that any torch.export consumer can take. Here it is
saved and loaded with plain torch.export, then compiled ahead of time with AOTInductor
(``--backend compile`` uses torch.compile instead), and every output is compared.

Measured on one CPU core (torch 2.14, ResNet18 at 1x3x64x64): export 0.8 s, prune 1.4 s,
AOTInductor 19-27 s, torch.compile about 25 s, 27 s in all; inductor needs a C++ compiler.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from compile_pipeline import compiler_missing

import fxmeta


def _timed(what: str, fn):
    t0 = time.perf_counter()
    value = fn()
    print(f"{what}: {time.perf_counter() - t0:.1f} s")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--backend", choices=["aoti", "compile", "none"], default="aoti")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    program = _timed("torch.export", lambda: torch.export.export(model, (x,)))
    result = _timed("fxmeta.prune (self-checked)", lambda: fxmeta.prune(program, x, speedup=args.speedup))
    print(f"FLOPs {result.flops_before:,} -> {result.flops_after:,} ({result.speedup:.2f}x), "
          f"params {result.params_before:,} -> {result.params_after:,}")

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "pruned.pt2"
        torch.export.save(result.program, str(path))
        deployed = torch.export.load(str(path))  # plain torch from here on
        want = result.module(x)
        batch = torch.randn(4, 3, 64, 64)  # the batch dimension of the pruned program is dynamic
        print(f"saved program vs pruned module: max |diff| {(deployed.module()(x) - want).abs().max():.2e}; "
              f"batch 4 gives {tuple(deployed.module()(batch).shape)}")
        if args.backend == "none":
            return
        why_not = compiler_missing()
        if why_not:
            print(f"{args.backend} skipped: {why_not}")
            return
        if args.backend == "aoti":
            package = _timed("AOTInductor compile", lambda: torch._inductor.aoti_compile_and_package(
                deployed, package_path=str(Path(tmp) / "pruned_aoti.pt2")))
            run = torch._inductor.aoti_load_package(package)
        else:
            run = torch.compile(deployed.module())
        got = _timed(f"{args.backend}: first call", lambda: run(x))
        print(f"{args.backend} vs pruned module: max |diff| {(got - want).abs().max():.2e}")


if __name__ == "__main__":
    main()
