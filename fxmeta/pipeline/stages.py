"""The pipeline's stages over one state: what ``transform`` runs, in order, and what the passes wrap.

A :class:`State` holds the network being transformed and what the stages hand on: the IR, the
importance the removal ranks units by (a conditioned metanetwork fixes it), the plan. Each
stage is a small callable ``stage(state) -> state`` with a ``name`` (the progress line and the
stage timings use it). ``transform`` builds the list with :func:`prune_stages` and runs it;
``passes`` wrap the same stages one by one, their state in ``graph_module.meta``
(:meth:`State.of` / :meth:`State.into`), so a pass pipeline and the library call cannot
disagree about the prune.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch.fx as fx
from torch import nn

from ..errors import PruningError
from ..ir.graph import WeightGraph
from ..ir.lowering import lower
from ..ir.raising import raise_graph
from ..keys import EXAMPLE_INPUT, IR, PLAN, PREPARED, PRUNE_IMPORTANCE, SPEEDUP
from ..pruning.spec import PruneSpec
from ..tracing import eval_mode
from ..training.loop import TrainConfig, train
from ..training.prepare import PrepareConfig, prepare


@dataclass
class State:
    """The network being transformed and what its stages hand on.

    ``spec`` is the resolved prune every stage works from; ``importance`` ranks the units at the
    removal (None: the spec's); ``told`` is set when a conditioned metanetwork fixed the channels
    (the adapt epochs then train for that prune); ``prepared`` when a prepare stage or a metanetwork
    trained / rewrote the weights for a weight-importance prune (the removal's unset settings are
    then the weights-only defaults, as ``PruneSpec.resolved(prepare=True)``, with data or without);
    ``exported`` when the module is the graph of a torch.export program (its removal errors say so)."""

    module: nn.Module
    example_input: Any
    spec: PruneSpec
    ir: WeightGraph | None = None
    importance: Any = None
    told: bool = False
    prepared: bool = False
    exported: bool = False
    plan: Any = None
    speedup: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def prune_importance(self) -> Any:
        return self.spec.importance if self.importance is None else self.importance

    @classmethod
    def of(cls, gm: fx.GraphModule, spec: PruneSpec, example_input: Any = None) -> State:
        """The state a pass finds in ``gm.meta``."""
        x = example_input if example_input is not None else gm.meta.get(EXAMPLE_INPUT)
        meta = gm.meta
        return cls(gm, x, spec, ir=meta.get(IR), importance=meta.get(PRUNE_IMPORTANCE), plan=meta.get(PLAN),
                   speedup=meta.get(SPEEDUP), prepared=bool(meta.get(PREPARED, False)))

    def into(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Store the state in ``gm.meta`` (the module a pass returns), keys left unset removed."""
        gm.meta[EXAMPLE_INPUT] = self.example_input
        for key, value in ((IR, self.ir), (PRUNE_IMPORTANCE, self.importance), (PLAN, self.plan),
                           (SPEEDUP, self.speedup), (PREPARED, self.prepared or None)):
            if value is None:
                gm.meta.pop(key, None)
            else:
                gm.meta[key] = value
        return gm


@dataclass
class Lower:
    """Lower the module to the weight-graph IR, with the spec's channel rules; ``own_graph``:
    lower the GraphModule's own graph as it is instead of tracing the module (the passes)."""

    own_graph: bool = False
    name = "lower"

    def __call__(self, state: State) -> State:
        gm = state.module if self.own_graph and isinstance(state.module, fx.GraphModule) else None
        state.importance = None  # what an earlier metanetwork fixed does not hold for the next rewrite
        state.ir = lower(state.module, state.example_input, gm=gm, rules=state.spec.rules)
        return state


@dataclass
class Rewrite:
    """The metanetwork's forward pass over the IR (``fxmeta.metanet.rewriting.rewrite_for_prune``).

    A conditioned metanetwork is told the spec's prune and the masked-loss gradient on
    ``batches``; it fixes the importance the removal then uses."""

    metanet: Any
    batches: Sequence[Any] = ()
    name = "metanet"

    def __call__(self, state: State) -> State:
        from ..metanet.files import load_metanet_file
        from ..metanet.rewriting import rewrite_for_prune

        if state.ir is None:
            raise PruningError("the metanetwork rewrites the IR: lower the module first")
        metanet = self.metanet
        if isinstance(metanet, (str, os.PathLike)):
            metanet = load_metanet_file(metanet)
        state.ir, importance = rewrite_for_prune(metanet, state.ir, state.example_input, state.spec, self.batches)
        state.prepared = True  # rewritten for a weight-importance prune
        if getattr(metanet, "conditioned", False):
            state.importance, state.told = importance, True
        return state


@dataclass
class Raise:
    """Build the module the IR describes; the IR, which describes the old module, is dropped."""

    name = "raise"

    def __call__(self, state: State) -> State:
        if state.ir is None:
            raise PruningError("raising needs an IR: lower the module first")
        state.module, state.ir = raise_graph(state.ir), None
        return state


@dataclass
class Prepare:
    """``fxmeta.prepare``: train the weights in place so the spec's prune (at ``speedups``, or
    at its own speed-up) removes little; the module comes back on the CPU, in eval mode."""

    data: Any
    config: TrainConfig
    settings: PrepareConfig = field(default_factory=PrepareConfig)  # its speed-ups, weight, mask schedule, decay
    name: str = "prepare for pruning"

    def __call__(self, state: State) -> State:
        spec, s = state.spec, self.settings
        speedups = list(s.speedups) or [float(spec.speedup)]  # PrepareConfig holds them as floats
        importance = state.prune_importance
        state.module = prepare(state.module, state.example_input, self.data, self.config, speedups,
                               weight=s.weight, mask_every=s.mask_every, sparsity=s.sparsity, importance=importance,
                               round_to=spec.round_to, ignore=spec.ignore, min_keep=spec.min_keep,
                               allocation=spec.allocation).model.cpu().eval()
        state.ir, state.prepared = None, True  # an IR lowered before describes the weights before training
        return state


@dataclass
class Adapt:
    """Epochs between the metanetwork and the removal: after a conditioned metanetwork they
    train for the prune it was told (as :class:`Prepare`; plain epochs would train the channels
    about to go), else plain training."""

    data: Any
    config: TrainConfig
    settings: PrepareConfig = field(default_factory=PrepareConfig)  # the prepare stage's, at the spec's speed-up
    name = "adapt finetune"

    def __call__(self, state: State) -> State:
        if state.told:
            settings = replace(self.settings, speedups=(state.spec.speedup,))
            return Prepare(self.data, self.config, settings)(state)
        state.module = train(state.module, self.data, self.config).model.cpu().eval()
        state.ir = None
        return state


@dataclass
class RemoveChannels:
    """``fxmeta.prune`` with the spec (ranked by the state's importance): the smaller module,
    its plan and the measured FLOPs ratio."""

    calibration: Any = None
    check: bool = True
    name = "remove channels"

    def __call__(self, state: State) -> State:
        from ..pruning.pruner import prune

        # after a prepare stage or a metanetwork, unset settings are the weights-only ones they trained for
        spec = state.spec.resolved(with_data=self.calibration is not None, prepare=state.prepared)
        if state.importance is not None:  # a conditioned metanetwork fixed the units
            spec = replace(spec, importance=state.importance)
        try:
            with eval_mode(state.module):  # the caller's train / eval flags come back as they were
                result = prune(state.module, state.example_input, spec=spec, calibration=self.calibration,
                               check=self.check)
        except PruningError as exc:
            if not state.exported:
                raise
            raise PruningError(f"{exc}; the module of a torch.export program is an ATen-level graph, which the "
                               "channel rules do not cover: capture the program itself (fxmeta.capture.trace, or "
                               "leave out --capture fx)") from exc
        state.module, state.plan, state.speedup = result.module, result.plan, result.speedup
        state.ir, state.importance, state.prepared = None, None, False
        return state


def prune_stages(*, metanet: Any = None, batches: Sequence[Any] = (), adapt: Adapt | None = None,
                 prepare_stage: Prepare | None = None, calibration: Any = None, check: bool = True) -> list[Any]:
    """The stages from the original network to the pruned one, in order:
    [lower → metanet → raise] → [adapt] → [prepare] → remove channels."""
    stages: list[Any] = []
    if metanet is not None:
        stages += [Lower(), Rewrite(metanet, batches), Raise()]
        if adapt is not None:
            stages.append(adapt)
    if prepare_stage is not None:
        stages.append(prepare_stage)
    stages.append(RemoveChannels(calibration, check))
    return stages


def run_stages(stages: Sequence[Any], state: State, timer: Any = None) -> State:
    """Run ``stages`` over ``state`` in order, each timed under its name by ``timer`` (a
    ``StageTimer``) when one is given."""
    for stage in stages:
        if timer is None:
            state = stage(state)
        else:
            with timer(stage.name):
                state = stage(state)
    return state
