"""fxmeta's stages as torch.fx passes in a PassManager, then torch.compile on the result.

    python examples/compile_pipeline.py [--metanet metanet.pt] [--speedup 2]

The documented pipeline::

    PassManager([LowerPass(x), MetanetPass(metanet, speedup=2, batches=batches), RaisePass(),
                 RemoveChannelsPass(speedup=2)])

(``speedup`` and ``batches`` are for a metanetwork conditioned on the prune, as the committed
one is: it takes the masked-loss gradient on two training batches, here of the digits data,
and RemoveChannelsPass then removes exactly the channels it was told.)

Prune before compiling: compile backends receive parameters as graph inputs and cannot
change their shapes, so channel removal has to happen on the fx graph first. Without
--metanet the committed digits metanetwork is used when present, else the metanetwork
stage is left out (channels are then chosen by importance alone).
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_manager import PassManager

from fxmeta.io import resolve_model
from fxmeta.pipeline.latency import measure_latency
from fxmeta.pruning.flops import count_flops
from fxmeta.tracing import example_from_shape, trace
from passes import LowerPass, MetanetPass, RaisePass, RemoveChannelsPass

COMMITTED = Path(__file__).resolve().parents[1] / "fxmeta" / "assets" / "metanet_digits.pt"


def compiler_missing() -> str | None:
    """Why torch.compile cannot run here, or None. Inductor on CPU needs a C++ compiler."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if cxx is None or not shutil.which(cxx.split()[0]):
        return "no C++ compiler found (install g++ or set CXX); inductor needs one to build CPU kernels"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fxmeta:resnet20", help="model spec (default: fxmeta:resnet20)")
    parser.add_argument("--in-channels", type=int, default=1, help="input channels (default: 1, as digits)")
    parser.add_argument("--input-shape", default="1,1,16,16", help="example input (default: 1,1,16,16)")
    parser.add_argument("--metanet", help="trained metanetwork (default: the committed digits one, if present)")
    parser.add_argument("--speedup", type=float, default=2.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = resolve_model(args.model, in_channels=args.in_channels).module
    x = example_from_shape(tuple(int(d) for d in args.input_shape.split(",")))

    metanet = args.metanet or (str(COMMITTED) if COMMITTED.is_file() else None)
    if metanet:
        from fxmeta.training.data import calibration_set, load_data

        digits = load_data("digits", image_size=x.shape[-1] if x.shape[-1] != 8 else None)
        batches = calibration_set(digits.train, 2, 128)
        stages = [LowerPass(x), MetanetPass(metanet, speedup=args.speedup, batches=batches), RaisePass(),
                  RemoveChannelsPass(speedup=args.speedup)]
    else:
        print("no metanetwork given or committed: pruning by importance alone")
        stages = [RemoveChannelsPass(speedup=args.speedup, example_input=x)]
    gm: fx.GraphModule = trace(model, x)
    pruned = PassManager(stages)(gm).graph_module.eval()
    print(f"pipeline: {' -> '.join(type(s).__name__ for s in stages)}")
    print(f"FLOPs {count_flops(model, x):,} -> {count_flops(pruned, x):,}; "
          f"plan stored in graph_module.meta['fxmeta.plan']: {'fxmeta.plan' in pruned.meta}")

    why_not = compiler_missing()
    if why_not:
        print(f"torch.compile skipped: {why_not}")
        return
    try:
        t0 = time.perf_counter()
        compiled = torch.compile(pruned)
        with torch.no_grad():
            out = compiled(x)
        print(f"torch.compile: first call (compilation) took {time.perf_counter() - t0:.1f} s")
    except Exception as exc:  # noqa: BLE001 - a compiler failure must not look like a pruning failure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"torch.compile failed, the pruned eager module still works: {type(exc).__name__}: {first}")
        return
    with torch.no_grad():
        ok = torch.allclose(out, pruned(x), atol=1e-4, rtol=1e-4)
    eager, fast = measure_latency(pruned, x), measure_latency(compiled, x)
    print(f"compiled output matches eager: {ok}; latency eager {eager.median_ms:.3f} ms, "
          f"compiled {fast.median_ms:.3f} ms ({eager.describe()})")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
