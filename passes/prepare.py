"""PreparePass: train a module's own weights on the prunability objective before pruning."""
from __future__ import annotations

from typing import Any, Sequence

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxmeta.errors import SpecError
from fxmeta.pipeline.stages import Prepare, State
from fxmeta.pruning.spec import DATA_IMPORTANCE, PruneSpec
from fxmeta.training.loop import TrainConfig
from fxmeta.training.prepare import PrepareConfig

from .base import FxmetaPass, example_input_of


class PreparePass(FxmetaPass):
    """``config.epochs`` epochs of ``fxmeta.prepare`` on ``data`` for the prune ``spec`` (at its
    speed-up, or at the FLOPs ``speedups``); ``weight``, ``mask_every`` and ``sparsity`` as
    :class:`fxmeta.training.prepare.PrepareConfig`'s.

    Put it right before RemoveChannelsPass with the same spec: the weights are trained in
    place (the module keeps its graph and shapes; ``modified`` True) so that the channels
    the prune removes carry little. ``data`` is a ``DataSplits`` or ``Loaders``; requires an
    example input (``example_input=`` or ``graph_module.meta["fxmeta.example_input"]``).
    The pass leaves the module in eval mode, ready for pruning.
    """

    def __init__(self, data: Any, speedups: Sequence[float] = (), config: TrainConfig | None = None, *,
                 spec: PruneSpec | None = None, example_input: Any = None, weight: float = 1.0,
                 mask_every: int = 0, sparsity: float = 0.0) -> None:
        super().__init__()
        spec = spec or PruneSpec()
        if not speedups and spec.speedup is None:
            raise SpecError("PreparePass needs at least one speed-up target")
        if isinstance(spec.importance, str) and spec.importance in DATA_IMPORTANCE:
            raise SpecError(f"PreparePass trains for a prune by weight importance, not {spec.importance!r}")
        self.data = data
        self.spec = spec
        self.speedups = [float(s) for s in speedups] or [float(spec.speedup)]
        self.config = config or TrainConfig(epochs=5, lr=0.01, progress=False)
        self.example_input = example_input
        self.settings = PrepareConfig(epochs=self.config.epochs, speedups=tuple(self.speedups), weight=weight,
                                      mask_every=mask_every, sparsity=sparsity)

    def requires(self, graph_module: fx.GraphModule) -> None:
        example_input_of(graph_module, self.example_input)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        x = example_input_of(graph_module, self.example_input)
        spec = self.spec.resolved(with_data=False)  # the weight importance it prepares for
        state = State.of(graph_module, spec, x)
        state = Prepare(self.data, self.config, self.settings)(state)
        return PassResult(state.into(state.module), self.config.epochs > 0)
