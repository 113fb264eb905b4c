"""torch.export of modules: the program capture starts from, and the one a pruned module is shipped as.

``export_static`` exports at the example input's shapes (what the channel analysis works
on); ``export_program`` exports with a dynamic batch dimension where the model allows it
(else fixed shapes) and checks the program against the module. Both run the module in
eval mode and give every submodule's train/eval flag back as it was.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from ..errors import UnsupportedModelError, first_line
from ..tracing import as_tuple, eval_mode


def _export(module: nn.Module, args: tuple, hint: str, **kwargs: Any) -> ExportedProgram:
    # A failed attempt prints the partial graph to stderr; it is reported in one line instead.
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return torch.export.export(module, args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one line for the user, the chain for --debug
            raise UnsupportedModelError(f"torch.export cannot export {type(module).__name__}: "
                                        f"{type(exc).__name__}: {first_line(exc)}{hint}") from exc


def export_static(module: nn.Module, example_input: Any) -> ExportedProgram:
    """``torch.export`` ``module`` in eval mode at the shapes of ``example_input``."""
    if example_input is None:
        raise UnsupportedModelError("capturing a module with torch.export needs an example input")
    with eval_mode(module):
        return _export(module, as_tuple(example_input), "")


def _dynamic_batch(module: nn.Module, args: tuple) -> ExportedProgram | None:
    """Export with dim 0 of every tensor input as one symbolic batch size, or None if the
    model fixes it. Traced at batch 2: torch specialises sizes 0 and 1."""
    if not args or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in args):
        return None
    if len({a.shape[0] for a in args}) != 1:
        return None
    batch = Dim("batch", min=1)
    doubled = tuple(a[:1].expand(2, *a.shape[1:]).contiguous() for a in args)
    try:
        return _export(module, doubled, "", dynamic_shapes=tuple({0: batch} for _ in args))
    except UnsupportedModelError:  # e.g. a reshape with the batch size baked in
        return None


def export_program(module: nn.Module, example_input: Any, *, check: bool = True,
                   atol: float = 1e-5) -> ExportedProgram:
    """``torch.export`` ``module`` (in eval mode); with ``check``, its output must match the module's."""
    args = as_tuple(example_input)
    with eval_mode(module), torch.no_grad():
        program = _dynamic_batch(module, args)
        if program is None:
            program = _export(module, args, "; save without --export (the .pt file needs no export)")
        if check:
            _check_same(module, program, args, atol)
    return program


def _check_same(module: nn.Module, program: ExportedProgram, args: tuple, atol: float) -> None:
    want, got = module(*args), program.module()(*args)
    flat_want, flat_got = torch.utils._pytree.tree_leaves(want), torch.utils._pytree.tree_leaves(got)
    same = len(flat_want) == len(flat_got) and all(
        torch.allclose(a, b, atol=atol, rtol=1e-4) for a, b in zip(flat_want, flat_got)
        if isinstance(a, torch.Tensor))
    if not same:
        raise UnsupportedModelError(
            f"the torch.export program of {type(module).__name__} does not reproduce the module's output; "
            "save without --export")
