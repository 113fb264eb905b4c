"""Slim the model's own modules instead of returning the captured graph.

A model that torch.export captured (Hugging Face transformers, most timm models) comes
back from slimming as a GraphModule of ATen-level calls whose view sizes were fixed at
the example input's batch and sequence length: it runs at that shape only, and it has
lost its class (no ``generate``, no ``config``, no keyword inputs). Yet the prune only
removes entries of parameters and buffers, and these models compute every view size
from the tensors themselves (``(*x.shape[:-1], -1, head_dim)``).

So :func:`slim_model` removes the same entries from a copy of the model's own modules
(weights by name, ``in_features`` / ``normalized_shape`` / ... updated by ``module_sizes``, which
Hugging Face folders with per-layer widths carry too) and keeps the
result only when it reproduces the pruned graph on the example input *and* on a batch of
a different size; otherwise the caller keeps the GraphModule. What it can miss (a size a
module stores as a plain attribute, a view size written into the forward code) fails that
check instead of being guessed (GPT-2's attention, which splits by a stored width, is the one
such size updated here).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..analysis.channels import ChannelAnalysis
from .module_sizes import update_sizes as _update_sizes
from .slimming import set_tensor


def _removed_entries(analysis: ChannelAnalysis, removed: Tensor) -> dict[tuple[str, int], Tensor]:
    """(tensor name, dim) -> bool mask of the entries the prune removes."""
    out: dict[tuple[str, int], Tensor] = {}
    tensors = dict(analysis.gm.named_parameters(remove_duplicate=False))
    tensors.update(dict(analysis.gm.named_buffers(remove_duplicate=False)))
    for group in analysis.groups:
        gone = removed[group.roots]
        if not bool(gone.any()):
            continue
        for name, dim, index in (*group.slices, *group.buffer_slices):
            mask = out.setdefault((name, dim), torch.zeros(tensors[name].shape[dim], dtype=torch.bool))
            mask[index[gone].flatten()] = True
    return out


def _same(a: Any, b: Any) -> bool:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            return False
        if isinstance(x, Tensor) and (x.shape != y.shape or not torch.allclose(x.float(), y.float(), atol=1e-5,
                                                                             rtol=1e-4)):
            return False
    return True


def _args(example_input: Any) -> tuple:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _doubled(args: tuple) -> tuple | None:
    """The example with its batch dim doubled (tensors of the same leading size), or None."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors or any(t.dim() == 0 or t.shape[0] != tensors[0].shape[0] for t in tensors):
        return None
    return tuple(torch.cat([a, a]) if isinstance(a, Tensor) else a for a in args)


def slim_model(model: nn.Module, analysis: ChannelAnalysis, removed: Tensor, pruned: nn.Module,
               example_input: Any) -> nn.Module | None:
    """A copy of ``model`` with the removed entries cut out of its own tensors, or None when that
    copy does not compute what ``pruned`` (the slimmed graph) computes, or does not run at another
    batch size."""
    masks = _removed_entries(analysis, removed)
    own = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    if not masks or any(name not in own for name, _ in masks):
        return None
    try:
        slim = copy.deepcopy(model)
        names = {**dict(slim.named_parameters(remove_duplicate=False)), **dict(slim.named_buffers(remove_duplicate=False))}
        by_name: dict[str, list[tuple[int, Tensor]]] = {}
        for (name, dim), mask in masks.items():
            by_name.setdefault(name, []).append((dim, mask))
        done: dict[int, Tensor] = {}  # old tensor id -> its replacement: tied weights stay one object
        for name, cuts in by_name.items():
            tensor = names[name]
            if id(tensor) not in done:
                new = tensor.detach()
                for dim, mask in sorted(cuts, key=lambda c: c[0]):
                    new = new.index_select(dim, torch.nonzero(~mask).flatten())
                done[id(tensor)] = set_tensor(slim, name, new.clone())
            else:
                set_tensor(slim, name, done[id(tensor)])
        for name, tensor in names.items():  # other names of a cut tensor (tied, not in the slices)
            if id(tensor) in done and name not in by_name:
                set_tensor(slim, name, done[id(tensor)])
        for module in slim.modules():
            _update_sizes(module)
        slim.eval()
        args = _args(example_input)
        with torch.no_grad():
            out = slim(*args)
            if not _same(out, pruned(*args)):
                return None
            bigger = _doubled(args)
            if bigger is not None:
                halves = pytree.tree_map(lambda t: t[: t.shape[0] // 2] if isinstance(t, Tensor) and t.dim() else t,
                                         slim(*bigger))
                if not _same(out, halves):
                    return None
    except Exception:  # noqa: BLE001 - any failure means: keep the captured graph
        return None
    return slim
