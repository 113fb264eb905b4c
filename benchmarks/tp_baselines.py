"""Torch-Pruning run as real code, as the benchmarks compare with it: its importance criteria with the
gradients they read, its magnitude and group-norm pruners, stepping a pruner to one FLOPs target or to
several on the way, and group-sparsity learning as a training objective of fxmeta's loop. Shared by
benchmarks; not a benchmark itself."""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F


class ConvFlops:
    """2 x multiply-adds of the conv and linear layers from their current widths (FlopCounterMode's count),
    cheap enough to call after every Torch-Pruning step; confirmed by fxmeta's counter at each target."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        self.model, self.spatial = model, {}
        hooks = [m.register_forward_hook(self._record(n)) for n, m in model.named_modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        with torch.no_grad():
            model.eval()(example)
        for h in hooks:
            h.remove()

    def _record(self, name: str):
        def hook(module, inputs, output):
            self.spatial[name] = math.prod(output.shape[2:]) * output.shape[0]
        return hook

    def __call__(self) -> int:
        total = 0
        for name, m in self.model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                total += 2 * m.out_channels * (m.in_channels // m.groups) * math.prod(m.kernel_size) \
                    * self.spatial[name]
            elif isinstance(m, torch.nn.Linear):
                total += 2 * m.in_features * m.out_features * self.spatial[name]
        return total


def tp_importance(method: str, model: torch.nn.Module, calibration: list, hessian_samples: int = 256) -> object:
    """Torch-Pruning's importance object, with the gradients it reads already on the model."""
    import torch_pruning as tp

    if method == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    model.eval()
    model.zero_grad()
    if method == "taylor":  # TP's recipe: loss.backward() on calibration data, then prune
        for x, y in calibration:
            F.cross_entropy(model(x), y).backward()
        return tp.importance.GroupTaylorImportance()
    imp = tp.importance.GroupHessianImportance()
    # TP 1.6.1's accumulate_grad tests `name not in` a dict keyed by parameters, so it keeps only the
    # last sample's squared gradient; its scoring code is used as is, with the accumulator filled here
    # with the sum over the samples.
    xs = torch.cat([x for x, _ in calibration])[:hessian_samples]
    ys = torch.cat([y for _, y in calibration])[:hessian_samples]
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    for i in range(len(xs)):
        grads = torch.autograd.grad(F.cross_entropy(model(xs[i:i + 1]), ys[i:i + 1]), params)
        for acc, g in zip(sums, grads):
            acc += g.pow(2)
    for p, acc in zip(params, sums):
        imp._accu_grad[p] = acc
        imp._counter[p] = len(xs)
        p.grad = acc.clone() / len(xs)
    return imp


def _outputs(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The classifier layers Torch-Pruning is told to leave alone (fxmeta never prunes outputs)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 10]


def tp_pruner(model: torch.nn.Module, example: torch.Tensor, importance: object, steps: int) -> object:
    """Torch-Pruning's ``MetaPruner``: global pruning in ``steps`` iterative steps, any ratio allowed."""
    import torch_pruning as tp

    return tp.pruner.MetaPruner(model, example, importance=importance, global_pruning=True, iterative_steps=steps,
                                pruning_ratio=1.0, max_pruning_ratio=1.0, ignored_layers=_outputs(model))


def tp_group_pruner(model: torch.nn.Module, example: torch.Tensor, reg: float | None, steps: int) -> object:
    """Torch-Pruning's ``MagnitudePruner`` (``reg`` None) or its group-norm pruner of sparsity learning
    (``GroupNormPruner`` at strength ``reg``): global, ``steps`` iterative steps, any ratio allowed."""
    import torch_pruning as tp

    common = dict(global_pruning=True, iterative_steps=steps, pruning_ratio=1.0, max_pruning_ratio=1.0,
                  ignored_layers=_outputs(model))
    if reg is None:
        return tp.pruner.MagnitudePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                         **common)
    return tp.pruner.GroupNormPruner(model, example, reg=reg,
                                     importance=tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
                                     **common)


class SparsityLearning:
    """Torch-Pruning's group-norm sparsity learning (DepGraph+SL) as a training objective of fxmeta's
    loop: plain cross-entropy, then ``pruner.regularize`` on the gradients between backward and step;
    ``pruner`` then prunes the sparsified network."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor, reg: float, steps: int) -> None:
        import torch_pruning as tp

        self.model = model
        self.pruner = tp.pruner.GroupNormPruner(
            model, example, reg=reg, importance=tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
            global_pruning=True, iterative_steps=steps, pruning_ratio=1.0, max_pruning_ratio=1.0,
            ignored_layers=_outputs(model))

    def wrap(self, model):
        return model

    def begin_epoch(self, epoch: int) -> None:
        pass

    def before_step(self, step: int) -> None:
        pass

    def loss(self, out, y, criterion):
        return criterion(out.float(), y), out

    def after_backward(self) -> None:
        self.pruner.regularize(self.model)


def tp_to_target(pruner, model: torch.nn.Module, example: torch.Tensor, target: float):
    """Step a Torch-Pruning pruner until FLOPs drop by ``target`` (fxmeta's counter confirms it)."""
    from fxmeta.pruning.flops import count_flops

    base_flops = count_flops(model, example)
    quick = ConvFlops(model, example)
    while pruner.current_step < pruner.iterative_steps:
        pruner.step()
        if base_flops / max(quick(), 1) >= target and base_flops / max(count_flops(model, example), 1) >= target:
            return copy.deepcopy(model).eval()
    return None


def tp_progressive(model: torch.nn.Module, example: torch.Tensor, reg: float | None, targets: list[float],
                   steps: int) -> dict[float, dict]:
    """Step a Torch-Pruning pruner until each FLOPs target is met, keeping a copy at each target
    on the way: the same states separate runs per target would reach (the steps are the same)."""
    from fxmeta.pruning.flops import count_flops

    t0 = time.perf_counter()
    pruner = tp_group_pruner(model, example, reg, steps)
    model.eval()
    base_flops = count_flops(model, example)
    quick = ConvFlops(model, example)
    exact = quick() == base_flops  # else every step is counted with count_flops
    out: dict[float, dict] = {}
    pending = sorted(targets)
    speedup = 1.0
    while pending:
        if pending and speedup >= pending[0]:
            speedup = base_flops / max(count_flops(model, example), 1)  # confirm with fxmeta's counter
        while pending and speedup >= pending[0]:
            out[pending.pop(0)] = {"module": copy.deepcopy(model), "seconds": time.perf_counter() - t0,
                                   "steps": pruner.current_step}
        if not pending or pruner.current_step >= pruner.iterative_steps:
            break
        pruner.step()
        speedup = base_flops / max(quick() if exact else count_flops(model, example), 1)
    for t in pending:
        out[t] = {"error": f"Torch-Pruning stopped at {speedup:.2f}x after all {steps} iterative steps "
                           f"(pruning_ratio=1.0, max_pruning_ratio=1.0): {t:g}x is out of its reach"}
    return out
