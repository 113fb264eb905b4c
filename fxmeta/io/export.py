"""torch.export of a (pruned) module to a ``.pt2`` program that runs without fxmeta.

The program is exported in eval mode with a dynamic batch dimension where the model
allows it (else with the example input's fixed shape), checked against the module
before it is written, and written atomically. Load it with plain
``torch.export.load(path).module()``.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from ..errors import UnsupportedModelError
from ..tracing import _as_tuple, eval_mode
from .files import _first_line, atomic_save


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
        return torch.export.export(module, doubled, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception:  # noqa: BLE001 - e.g. a reshape with the batch size baked in
        return None


def export_program(module: nn.Module, example_input: Any, *, check: bool = True,
                   atol: float = 1e-5) -> ExportedProgram:
    """``torch.export`` ``module`` (in eval mode); with ``check``, its output must match the module's."""
    args = _as_tuple(example_input)
    with eval_mode(module):
        # A failed attempt prints the partial graph to stderr; it is retried or reported in one line.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            program = _dynamic_batch(module, args)
            if program is None:
                try:
                    program = torch.export.export(module, args)
                except Exception as exc:  # noqa: BLE001 - one line for the user, the chain for --debug
                    raise UnsupportedModelError(
                        f"torch.export cannot export {type(module).__name__}: {type(exc).__name__}: "
                        f"{_first_line(exc)}; save without --export (the .pt file needs no export)"
                    ) from exc
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


def save_program(module: nn.Module, example_input: Any, path: str | os.PathLike, *,
                 force: bool = False) -> ExportedProgram:
    """Export ``module`` (see ``export_program``) and write it to ``path`` atomically."""
    program = export_program(module, example_input)
    atomic_save(program, path, force=force)
    return program
