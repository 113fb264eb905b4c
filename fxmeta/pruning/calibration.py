"""Calibration batches: the data a prune reads (data importance, weight compensation).

A :class:`Calibration` holds a fixed list of batches, each an input (a tensor or a tuple of
tensors) or an ``(input, target)`` pair as a ``DataLoader`` over a labelled dataset yields it,
and the loss the Taylor importance differentiates. The default loss is the cross-entropy
against the targets; without targets, a model whose output holds ``logits`` of shape
``(batch, tokens, vocab)`` for token-id inputs gets the next-token loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PruningError

Loss = Callable[[Any, Any, tuple], Tensor]  # (model output, target or None, inputs) -> scalar


def logits_of(output: Any) -> Tensor:
    """The logits tensor of a model output: the tensor itself, ``.logits`` / ``["logits"]``, or the first leaf."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    if not isinstance(logits, Tensor):
        raise PruningError(f"cannot find the logits in a model output of type {type(output).__name__}; "
                           "pass Calibration(batches, loss=...) with your own loss")
    return logits


def default_loss(output: Any, target: Any, inputs: tuple) -> Tensor:
    """Cross-entropy against ``target``; without one, the next-token loss of a language model."""
    logits = logits_of(output).float()
    if target is not None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    ids = inputs[0] if inputs else None
    if (isinstance(ids, Tensor) and not ids.is_floating_point() and logits.dim() == 3
            and ids.shape == logits.shape[:2] and ids.shape[1] > 1):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    raise PruningError("calibration batches carry no targets and the model is not a language model on token "
                       "ids: pass (input, target) batches or Calibration(batches, loss=...)")


def split_batch(batch: Any) -> tuple[tuple, Any]:
    """(inputs as a tuple, target or None) of one batch."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor) \
            and not batch[1].is_floating_point() and isinstance(batch[0], (Tensor, tuple, list)):
        x, y = batch
        return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), y
    if isinstance(batch, Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) for t in batch):
        return tuple(batch), None
    raise PruningError(f"a calibration batch must be a tensor, a tuple of tensors or an (input, target) pair, "
                       f"got {type(batch).__name__}")


@dataclass
class Calibration:
    """A fixed list of batches (see the module docstring) and the loss over them."""

    batches: Sequence[Any]
    loss: Loss | None = None

    def __post_init__(self) -> None:
        self.batches = list(self.batches)
        if not self.batches:
            raise PruningError("calibration needs at least one batch")
        for b in self.batches:
            split_batch(b)  # refuses malformed batches now, not in the middle of a prune

    def __iter__(self):
        for b in self.batches:
            yield split_batch(b)

    def loss_of(self, output: Any, target: Any, inputs: tuple) -> Tensor:
        return (self.loss or default_loss)(output, target, inputs)

    def chunks(self, size: int | None = None) -> list[tuple[tuple, Any]]:
        """The batches, each cut into pieces of ``size`` samples (None: as they are). A graph that
        torch.export captured is specialised to its example's batch size and runs on such pieces."""
        if size is None:
            return list(self)
        out = []
        for inputs, target in self:
            n = int(inputs[0].shape[0])
            if n % size:
                raise PruningError(f"calibration batches of {n} samples cannot be cut into the model's fixed batch "
                                   f"size {size}: use a batch size that is a multiple of {size}")
            for i in range(0, n, size):
                out.append((tuple(t[i:i + size] for t in inputs), None if target is None else target[i:i + size]))
        return out

    def stacked(self, size: int | None = None) -> list[tuple]:
        """The inputs of all batches, concatenated along the batch dim (one piece), or cut into pieces
        of ``size`` samples (:meth:`chunks`)."""
        if size is not None:
            return [x for x, _ in self.chunks(size)]
        parts = [x for x, _ in self]
        out = []
        for i in range(len(parts[0])):
            column = [p[i] for p in parts]
            if not all(isinstance(t, Tensor) and t.shape[1:] == column[0].shape[1:] for t in column):
                raise PruningError("calibration batches must have the same shape except for the batch size")
            out.append(torch.cat(column))
        return [tuple(out)]

    @property
    def samples(self) -> int:
        return sum(int(x[0].shape[0]) for x, _ in self)


def fixed_batch(gm: Any, example_input: Any) -> int | None:
    """The batch size a captured graph is specialised to (torch.export captures), else None."""
    from ..keys import CAPTURE

    if getattr(gm, "meta", {}).get(CAPTURE) != "export":
        return None
    first = example_input[0] if isinstance(example_input, (tuple, list)) else example_input
    return int(first.shape[0]) if isinstance(first, Tensor) and first.dim() else None
