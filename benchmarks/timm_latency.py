"""timm ViT and ConvNeXt at their own 224x224 resolution: pruned to 2x FLOPs, CPU latency against the original.

Random weights, eval mode. Pruned with ``fxmeta.prune(model, x, speedup=2.0, importance="l2",
min_keep=0.5, round_to=8)`` (every group keeps at least half, so the embedding width and the
heads go as well as the MLP; channel counts in multiples of 8), self-check on. Latency:
``fxmeta.pipeline.latency.compare_latency`` at batch 8, one thread, original and pruned timed in
alternation (median of the rounds). Target: latency ratio / FLOPs ratio >= 0.9.

    python -m benchmarks.timm_latency [--repeats 30] [--models vit_tiny_patch16_224,convnext_atto]
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "timm_latency.md"
MODELS = ["vit_tiny_patch16_224", "deit_small_patch16_224", "convnext_atto", "convnext_nano"]
SETTINGS = dict(speedup=2.0, importance="l2", min_keep=0.5, round_to=8)


def _widths(module) -> str:
    """Embedding / stage width, attention (qkv rows) and MLP width, summed over blocks."""
    params = dict(module.named_parameters())

    def total(rx: str) -> int:
        return sum(p.shape[0] for n, p in params.items() if re.search(rx, n))
    parts = {"width": total(r"(patch_embed\.proj|conv_dw)\.weight$"), "qkv": total(r"attn\.qkv\.weight$"),
             "mlp": total(r"mlp\.fc1\.weight$")}
    return ", ".join(f"{k} {v}" for k, v in parts.items() if v)


def run(name: str, repeats: int) -> str:
    import timm

    import fxmeta
    from fxmeta.pipeline.latency import compare_latency

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    result = fxmeta.prune(model, x, **SETTINGS)
    seconds = time.perf_counter() - t0
    before, after = compare_latency([model, result.module], x, batch=8, threads=1, warmup=3, repeats=repeats,
                                    max_seconds=120.0)
    ratio = before.median_ms / after.median_ms
    return (f"| {name} | {seconds:.1f} | {result.speedup:.2f}x | {_widths(model)} | {_widths(result.module)} | "
            f"{before.median_ms:.0f} | {after.median_ms:.0f} | {ratio:.2f}x | {ratio / result.speedup:.2f} |")


def main() -> None:
    from benchmarks._env import header

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import timm

    rows = []
    for name in args.models.split(","):
        rows.append(run(name, args.repeats))
        print(rows[-1], flush=True)
    lines = [
        "# timm ViT / ConvNeXt at 2x fewer FLOPs: CPU latency",
        "",
        header(f"python -m benchmarks.timm_latency --repeats {args.repeats} --models {args.models}", 1,
               "model init torch.manual_seed(0), input seed 0").rstrip(),
        f"- timm {timm.__version__}; random weights, eval, 224x224; pruned on one image, timed at batch 8, "
        f"1 thread, original and pruned in alternation, median of {args.repeats} rounds after 3 warm-up rounds",
        f"- `fxmeta.prune(model, x, {', '.join(f'{k}={v!r}' for k, v in SETTINGS.items())})`, self-check on",
        "",
        "| model | prune (s) | FLOPs ratio | widths before | widths after | original (ms) | pruned (ms) "
        "| latency ratio | latency / FLOPs |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
        *rows,
    ]
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
