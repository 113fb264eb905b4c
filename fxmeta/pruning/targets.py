"""What a least-squares refit reads: rows of a layer's input and of its original output.

A consumer layer's refit (``fxmeta.pruning.compensation``) fits its kept weights to reproduce
its original output. A row is one sample at one position (a token, a pixel of a feature map);
a layer with more rows than its fit needs reads a fixed, seeded draw of them: the seed is the
layer's name, so the same rows are drawn whenever and wherever the layer is met, and the
original outputs at those rows can be recorded in one pass and read in another.

:class:`TargetRecorder` keeps the original outputs at the drawn rows. The activation importance
pass runs the original network over the calibration batches anyway; it records them on the
way, so the compensation does not run the original network a second time. Past a memory
budget the recorder gives up and the compensation runs the original network itself.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROWS_PER_FEATURE = 16  # rows a refit reads per feature it fits (convolutions: channel x kernel position)
MIN_ROWS = 16384
MAX_ROWS = 32768
RECORD_BYTES = 1 << 30  # the recorder's memory budget


def row_cap(module: nn.Module) -> int:
    """How many rows a refit of ``module`` reads at most: ROWS_PER_FEATURE per input feature of
    one output (a conv's group), within [MIN_ROWS, MAX_ROWS]."""
    features = module.weight[0].numel() + 1
    return min(MAX_ROWS, max(MIN_ROWS, ROWS_PER_FEATURE * features))


def row_pick(name: str, total: int, cap: int) -> Tensor | None:
    """The rows (sorted indices into all ``total`` rows) a refit of the layer ``name`` reads; None: all."""
    if total <= cap:
        return None
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randperm(total, generator=gen)[:cap].sort().values


def _conv_geometry(module: nn.Module, x: Tensor) -> tuple[Tensor, tuple, tuple, tuple, tuple]:
    """``x`` as a 4-D map (Conv1d: height 1) and the conv's kernel, dilation, padding, stride in 2-D."""
    if isinstance(module, nn.Conv1d):
        return (x.unsqueeze(2), (1, module.kernel_size[0]), (1, module.dilation[0]), (0, module.padding[0]),
                (1, module.stride[0]))
    return x, module.kernel_size, module.dilation, module.padding, module.stride


def input_rows(module: nn.Module, x: Tensor, rows: Tensor | None = None, channels: Tensor | None = None) -> Tensor:
    """A Linear / Conv layer's input as a (rows, features) matrix, convolutions unfolded
    (channel-major, kernel-minor, as the weight flattens): all rows, or those at ``rows`` (indices
    into samples x positions; gathered patch by patch, without unfolding the whole input);
    only the input ``channels`` given (indices), or all."""
    if isinstance(module, nn.Linear):
        a = x.reshape(-1, x.shape[-1])
        a = a if rows is None else a[rows]
        return a if channels is None else a[:, channels]
    x, kernel, dilation, padding, stride = _conv_geometry(module, x)
    if kernel == (1, 1) and padding == (0, 0) and rows is None:  # a pointwise conv: no patches to unfold
        x = x[:, :, ::stride[0], ::stride[1]]
        x = x if channels is None else x.index_select(1, channels)
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    if rows is None:
        if channels is not None:
            x = x.index_select(1, channels)
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C*k, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    n, pos = rows // (out_h * out_w), rows % (out_h * out_w)
    top, left = (pos // out_w) * sh, (pos % out_w) * sw
    x = F.pad(x, (pw, pw, ph, ph))
    if channels is not None:
        x = x.index_select(1, channels)
    patches = [x[n, :, top + i * dh, left + j * dw] for i in range(kh) for j in range(kw)]  # each (rows, C)
    return torch.stack(patches, 2).reshape(len(rows), -1)


def output_rows(module: nn.Module, y: Tensor, rows: Tensor | None = None) -> Tensor:
    """A Linear / Conv layer's output as a (rows, channels) matrix: all rows, or those at ``rows``."""
    if isinstance(module, nn.Linear):
        a = y.reshape(-1, y.shape[-1])
        return a if rows is None else a[rows]
    flat = y.flatten(2)  # (N, C, positions)
    if rows is None:
        return flat.transpose(1, 2).reshape(-1, flat.shape[1])
    return flat[rows // flat.shape[2], :, rows % flat.shape[2]]


def channel_dim(module: nn.Module, x: Tensor) -> int:
    """The dim of a Linear / Conv layer's input or output that holds its channels."""
    return x.dim() - 1 if isinstance(module, nn.Linear) else 1


def row_count(module: nn.Module, y: Tensor) -> int:
    return y.numel() // y.shape[channel_dim(module, y)]


@dataclass
class Targets:
    """One consumer's original outputs: at the drawn rows, and their mean over all rows."""

    total: int  # rows over all pieces
    pick: Tensor | None  # the drawn rows over all pieces in order (None: all)
    counts: list[int] = field(default_factory=list)  # rows per calibration piece
    parts: list[Tensor] = field(default_factory=list)  # per piece, (drawn rows of that piece, channels)
    means: bool = False  # whether the per-channel sums below are kept
    sums: Tensor | None = None  # per channel, float64

    @classmethod
    def start(cls, name: str, module: nn.Module, total: int, means: bool) -> "Targets":
        return cls(total, row_pick(name, total, row_cap(module)), means=means)

    @classmethod
    def of(cls, name: str, module: nn.Module, ys: list[Tensor], means: bool) -> "Targets":
        """From the layer's outputs on all pieces at once."""
        t = cls.start(name, module, sum(row_count(module, y) for y in ys), means)
        for y in ys:
            t.add(module, y)
        return t

    def add(self, module: nn.Module, y: Tensor) -> int:
        """Records the next piece's output; returns the bytes kept."""
        self.counts.append(row_count(module, y))
        y = y.detach()
        part = output_rows(module, y, self.piece_rows(len(self.counts) - 1)).float()
        self.parts.append(part)
        if self.means:
            d = channel_dim(module, y)
            s = y.sum([i for i in range(y.dim()) if i != d], dtype=torch.float64)
            self.sums = s if self.sums is None else self.sums + s
        return part.numel() * part.element_size()

    def piece_rows(self, i: int) -> Tensor | None:
        """Piece ``i``'s drawn rows, as indices into that piece's rows (None: all)."""
        if self.pick is None:
            return None
        start = sum(self.counts[:i])
        inside = self.pick[(self.pick >= start) & (self.pick < start + self.counts[i])]
        return inside - start

    def restricted(self, channels: Tensor) -> "Targets":
        """The same rows, only the output ``channels`` (indices)."""
        return Targets(self.total, self.pick, list(self.counts),
                       [p.index_select(1, channels.to(p.device)) for p in self.parts], self.means,
                       None if self.sums is None else self.sums[channels.to(self.sums.device)])

    @property
    def mean(self) -> Tensor:
        return self.sums / max(self.total, 1)


class TargetRecorder:
    """Records consumer layers' original outputs (:class:`Targets`; their ``means`` too if asked),
    piece by piece, over the ``samples`` calibration samples. It gives up, and forgets what it
    kept, past ``budget`` bytes or on pieces whose shapes do not let the rows be drawn in advance."""

    def __init__(self, samples: int, means: bool = False, budget: int = RECORD_BYTES) -> None:
        self.samples, self.means, self.budget = samples, means, budget
        self.targets: dict[str, Targets] = {}
        self.bytes = 0
        self.finished = False  # a whole pass over the calibration pieces was recorded
        self.gave_up = False

    def add(self, name: str, module: nn.Module, y: Tensor, samples: int | None = None) -> None:
        """The next piece's output ``y`` of the layer ``name``; ``samples``: the piece's samples (default:
        ``y``'s first dim; a layer that reads its input flattened, a captured addmm, has more rows)."""
        if self.gave_up:
            return
        t = self.targets.get(name)
        if t is None:  # every sample has as many rows as this piece's
            per_sample = row_count(module, y) // max(int(samples or y.shape[0]), 1)
            t = self.targets[name] = Targets.start(name, module, per_sample * self.samples, self.means)
        if sum(t.counts) + row_count(module, y) > t.total:
            return self._give_up()
        self.bytes += t.add(module, y)
        if self.bytes > self.budget:
            self._give_up()

    def finish(self) -> None:
        """The pass is over: every layer must have all its rows."""
        self.finished = True
        if any(sum(t.counts) != t.total for t in self.targets.values()):
            self._give_up()

    def _give_up(self) -> None:
        self.gave_up = True
        self.targets.clear()

    def get(self, name: str) -> Targets | None:
        return self.targets.get(name) if self.usable else None

    @property
    def usable(self) -> bool:
        return self.finished and not self.gave_up
