"""Forward throughput of a language model, dense and pruned, for ``benchmarks.llm`` (which passes
itself in): tokens per second at 1 and 2 threads. A library of it, not a benchmark."""
from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import torch

from .common import table
from .llm_baselines import non_embedding_params


def tokens_per_second(model, threads: int, block: int, vocab: int, batch: int = 8, repeats: int = 7) -> float:
    """Forward throughput on ``batch`` sequences of ``block`` tokens at ``threads`` threads (median of
    ``repeats`` timed runs after one warm-up)."""
    import statistics

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randint(0, vocab, (batch, block), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    torch.set_num_threads(old)
    return batch * block / statistics.median(times)


WIDER = 8  # the scaled-up twin of the benchmark model: every width times this, the same depth


def macs_per_token(model, block: int) -> float:
    """Multiply-accumulates per token of a forward pass over one sequence of ``block`` tokens (attention
    included; fxmeta's FLOPs count / 2)."""
    from fxmeta.pruning.flops import count_flops

    return count_flops(model, torch.zeros(1, block, dtype=torch.long)) / 2 / block


def _speed_rows(dense, pruned, label: str, block: int, vocab: int) -> list[list]:
    """Dense and pruned timed in alternation at 1 and 2 threads, so both see the same machine load."""
    ratio = non_embedding_params(dense) / non_embedding_params(pruned)
    macs = f"{macs_per_token(dense, block) / 1e6:.2f}M → {macs_per_token(pruned, block) / 1e6:.2f}M"
    rows = []
    for threads in (1, 2):
        d = [tokens_per_second(m, threads, block, vocab) for m in (dense, pruned, dense, pruned)]
        speed = (d[1] + d[3]) / (d[0] + d[2])
        rows.append([label, macs, threads, f"{(d[0] + d[2]) / 2:,.0f}", f"{(d[1] + d[3]) / 2:,.0f}",
                     f"{speed:.2f}", f"{ratio:.2f}", f"{speed / ratio:.2f}"])
    return rows


def speed_section(llm: ModuleType, dense_folder: Path, data: dict) -> list[str]:
    """Tokens/s of the dense model and of fxmeta's pruned ones (the re-implemented baselines are masks: no
    faster than dense), and of the same family ``WIDER`` times as wide; ``llm``: the ``benchmarks.llm``
    module (its model, calibration and FLOPs targets)."""
    import os

    import fxmeta
    from fxmeta.pruning.spec import PruneSpec

    dense = llm.load_dense(dense_folder)
    vocab = dense.config.vocab_size
    calib = llm.calibration(data, 0)
    rows, wide_rows = [], []
    for fraction in llm.RECOVERY_TARGETS:
        spec = PruneSpec(llm.FLOPS_FOR[fraction], importance="activation", compensate="lstsq", allocation="uniform")
        pruned = fxmeta.prune(dense, calib[0][0][:1], spec=spec, calibration=calib).module.eval()
        rows += _speed_rows(dense, pruned, f"{int(100 * fraction)} %", llm.BLOCK, vocab)
    # speed depends on the shapes alone, and a uniform allocation gives the same shapes whatever the
    # scores: the wide model is random and pruned by l2 without data
    config = dict(llm.MODEL, **{k: llm.MODEL[k] * WIDER for k in ("hidden_size", "intermediate_size",
                                                                  "num_attention_heads", "num_key_value_heads")})
    torch.manual_seed(0)
    wide = llm.build_model(config).eval()
    for fraction in llm.RECOVERY_TARGETS:
        spec = PruneSpec(llm.FLOPS_FOR[fraction], importance="l2", allocation="uniform")
        pruned = fxmeta.prune(wide, calib[0][0][:1], spec=spec).module.eval()
        removed = 1 - non_embedding_params(pruned) / non_embedding_params(wide)
        wide_rows += _speed_rows(wide, pruned, f"{100 * removed:.0f} %", llm.BLOCK, vocab)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    worst = min(float(r[-1]) for r in rows if r[2] == 1)
    worst_wide = min(float(r[-1]) for r in wide_rows if r[2] == 1)
    head = ["removed", "MACs / token (dense → pruned)", "threads", "dense tokens/s", "pruned tokens/s", "speed-up", "parameter ratio",
            "speed-up / parameter ratio"]
    return [f"## Speed (forward, 8 x {llm.BLOCK} tokens, median of 7, dense and pruned in alternation; load {load})", "",
            f"MACs per token: a forward pass over one sequence of {llm.BLOCK} tokens (attention and output layer "
            "included) / its tokens.", "",
            table(head, rows), "",
            f"Target (pruned tokens/s >= 0.9 x the parameter ratio at 1 thread): {'met' if worst >= 0.9 else 'missed'} "
            f"(worst {worst:.2f}). At this size the parts no prune shrinks weigh: the byte embedding and output "
            f"layer, attention over {llm.BLOCK} positions (a uniform prune to 50 % of the parameters removes about "
            f"35 % of every width, so no GQA group of two), element-wise ops and per-op overhead.", "",
            f"The same family {WIDER}x as wide ({config['hidden_size']} hidden, {config['intermediate_size']} MLP, "
            f"{config['num_attention_heads']} / {config['num_key_value_heads']} heads, {llm.MODEL['num_hidden_layers']} "
            f"layers; random weights: tokens/s depends on the shapes alone, and the uniform allocation gives the same "
            f"shapes whatever the scores, so it is pruned by l2 without data at the same FLOPs targets):", "",
            table(head, wide_rows), "",
            f"Speed-up / parameter ratio at 1 thread at this width: worst {worst_wide:.2f} "
            f"({'>=' if worst_wide >= 0.9 else '<'} 0.9).", ""]
