"""PreparePass: train a module's own weights on the prunability objective before pruning."""
from __future__ import annotations

from typing import Any, Sequence

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.errors import SpecError
from fxmeta.training.loop import TrainConfig
from fxmeta.training.prepare import prepare

from .base import FxmetaPass, example_input_of


class PreparePass(FxmetaPass):
    """``config.epochs`` epochs of ``fxmeta.prepare`` on ``data`` at the FLOPs ``speedups``.

    Put it right before RemoveChannelsPass at the same target: the weights are trained in
    place (the module keeps its graph and shapes; ``modified`` True) so that the channels
    the prune removes carry little. ``data`` is a ``DataSplits`` or ``Loaders``; requires an
    example input (``example_input=`` or ``graph_module.meta["fxmeta.example_input"]``).
    The pass leaves the module in eval mode, ready for pruning.
    """

    def __init__(self, data: Any, speedups: Sequence[float], config: TrainConfig | None = None, *,
                 example_input: Any = None, weight: float = 1.0, mask_every: int = 0) -> None:
        super().__init__()
        if not speedups:
            raise SpecError("PreparePass needs at least one speed-up target")
        self.data = data
        self.speedups = [float(s) for s in speedups]
        self.config = config or TrainConfig(epochs=5, lr=0.01, progress=False)
        self.example_input = example_input
        self.weight = weight
        self.mask_every = mask_every

    def requires(self, graph_module: fx.GraphModule) -> None:
        example_input_of(graph_module, self.example_input)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        x = example_input_of(graph_module, self.example_input)
        result = prepare(graph_module, x, self.data, self.config, self.speedups, weight=self.weight,
                         mask_every=self.mask_every)
        module = result.model.cpu().eval()
        return PassResult(module, self.config.epochs > 0)
