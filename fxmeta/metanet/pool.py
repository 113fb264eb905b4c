"""Large CPU buffers kept between metanetwork passes.

A ResNet50 forward + backward of the metanetwork writes gigabytes of freshly allocated
memory (the edge states of every layer, their gradients and the decoded edges).
Allocations that large come straight from the kernel, so every step pays a page fault
(and the kernel's zeroing) per 4 KiB the first time it writes them. The pool keeps those buffers and hands one out again once nothing
else references it, the way torch's caching allocators do.

A buffer is free when its storage has no users besides the pool: autograd releases saved
tensors during ``backward``, so a step's buffers come back by the next step, and a graph
that is still alive (two forwards before one backward) simply gets fresh memory.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _storage_users(t: Tensor) -> int | None:
    """References to ``t``'s storage besides ``t`` itself; None where torch cannot tell."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)  # as inductor's cudagraph trees use it
    if use_count is None:
        return None
    return use_count(t.untyped_storage()._cdata) - 2  # minus t and the storage handle made here


class TensorPool:
    """Uninitialised tensors that reuse large buffers no longer referenced elsewhere."""

    def __init__(self, enabled: bool = True, min_numel: int = 1 << 20) -> None:
        self.enabled = enabled and _storage_users(torch.empty(1)) == 0
        self.min_numel = min_numel  # smaller allocations are cheap and come from the heap anyway
        self.buffers: list[Tensor] = []
        self.taken: set[int] = set()  # indices handed out since the last ``trim``

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> Tensor:
        n = math.prod(shape)
        if not self.enabled or n < self.min_numel:
            return torch.empty(shape, dtype=dtype)
        for index, buf in enumerate(self.buffers):
            if buf.numel() == n and buf.dtype == dtype and _storage_users(buf) == 0:
                self.taken.add(index)
                return buf.view(shape)
        self.taken.add(len(self.buffers))
        self.buffers.append(torch.empty(n, dtype=dtype))
        return self.buffers[-1].view(shape)

    def trim(self) -> None:
        """Drop the free buffers not handed out since the last trim (sizes a new graph no longer uses)."""
        self.buffers = [buf for index, buf in enumerate(self.buffers)
                        if index in self.taken or _storage_users(buf) != 0]
        self.taken = set()

    def clear(self) -> None:
        self.buffers, self.taken = [], set()

    @property
    def nbytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for buf in self.buffers)
