"""FLOPs and parameter counting with ``torch.utils.flop_counter.FlopCounterMode``.

Two gaps of FlopCounterMode are closed here, both of which make attention models look
much cheaper than they are (vision transformers most of all):

* ``nn.MultiheadAttention`` in eval mode takes a fused "fast path" that the counter does
  not see at all; the fast path is switched off while counting.
* the CPU flash kernel of ``scaled_dot_product_attention``
  (``aten._scaled_dot_product_flash_attention_for_cpu``) has no formula; the standard
  SDPA formula is registered for it.

Counting runs in eval mode under ``no_grad`` and restores every submodule's mode
afterwards, so BatchNorm statistics and other state are left untouched.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..capture import is_program
from ..tracing import as_tuple, eval_mode

aten = torch.ops.aten


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Any]:
    """Formulas for kernels the stock registry misses (looked up by name: builds differ)."""
    extra = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None:
            extra[op] = _sdpa_formula
    return extra


def count_flops(model: nn.Module, example_input: Any) -> int:
    """FLOPs of one forward pass of ``model`` on ``example_input`` (a multiply-add is 2 FLOPs).

    Runs in eval mode without gradients and restores every submodule's train/eval flag.
    ``model`` may be a torch.export program.
    """
    if is_program(model):
        model = model.module()
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
        with torch.no_grad(), eval_mode(model), counter:
            model(*as_tuple(example_input))
        return int(counter.get_total_flops())
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    if is_program(model):
        model = model.module()
    return sum(p.numel() for p in model.parameters())


class FlopModel:
    """Analytic FLOPs of a graph as a sum of terms ``coef * prod(live entries of each factor)``.

    A factor is a vector of unit ids (one per entry of a channel dim); an entry is live
    while its unit is not removed. Evaluating a removal costs one gather and one
    segment sum, so pruning can search over thousands of candidate removals without
    re-running the model. ``constant`` covers FLOPs no term describes.
    """

    def __init__(self, terms: list[tuple[float, list[torch.Tensor]]], constant: float = 0.0) -> None:
        factors = [f for _, fs in terms for f in fs]
        self.ids = torch.cat(factors) if factors else torch.zeros(0, dtype=torch.long)
        self.segment = torch.cat([torch.full((len(f),), i) for i, f in enumerate(factors)]) if factors else self.ids
        width = max((len(fs) for _, fs in terms), default=0)
        pad = len(factors)  # index of a segment whose count is always 1
        index, k = [], 0
        for _, fs in terms:
            index.append(list(range(k, k + len(fs))) + [pad] * (width - len(fs)))
            k += len(fs)
        self.index = torch.tensor(index, dtype=torch.long).view(len(terms), width)
        self.coef = torch.tensor([float(c) for c, _ in terms], dtype=torch.float64)
        self.n_segments = len(factors)
        self.constant = float(constant)

    def evaluate(self, removed: torch.Tensor | None = None) -> float:
        """FLOPs with the units flagged in ``removed`` (bool, indexed by unit id) taken out."""
        live = torch.ones(len(self.ids), dtype=torch.float64)
        if removed is not None and len(self.ids):
            live = (~removed[self.ids]).double()
        counts = torch.zeros(self.n_segments + 1, dtype=torch.float64).index_add_(0, self.segment, live)
        counts[-1] = 1.0
        return float((self.coef * counts[self.index].prod(1)).sum()) + self.constant
