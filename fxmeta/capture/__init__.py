"""The front end: a model or a torch.export program -> a torch-level ``fx.GraphModule`` with shapes.

``trace(model, example_input, capture=...)`` is what every stage starts from:

* ``capture="fx"``: torch.fx symbolic tracing (``fxmeta.tracing``);
* ``capture="export"``: ``torch.export`` in eval mode, then ``from_program``;
* ``capture="auto"`` (default): fx tracing, and torch.export when fx cannot trace the
  model's forward (data-dependent control flow on shapes, ``torch.cond`` ...).

An ``ExportedProgram`` passed as the model is always captured with ``from_program``
(``fxmeta.capture.program``): its ATen ops are rewritten into modules, torch functions and
tensor methods through the one table in ``fxmeta.capture.aten``, exactly, so analysis,
lowering and slimming work on it as on a traced model.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.fx as fx
from torch import nn
from torch.export import ExportedProgram

from ..errors import UnsupportedModelError
from ..keys import CAPTURE, TRACED
from ..tracing import propagate_shapes
from ..tracing import trace as fx_trace
from .export import export_program, export_static
from .program import from_program

__all__ = ["CAPTURES", "export_program", "export_static", "from_program", "is_program", "trace"]

CAPTURES = ("auto", "fx", "export")


def is_program(model: Any) -> bool:
    return isinstance(model, ExportedProgram)


def trace(model: Any, example_input: Any = None, *, capture: str = "auto",
          extra_leaves: Sequence[type] = ()) -> fx.GraphModule:
    """Capture ``model`` (an ``nn.Module`` or an ``ExportedProgram``) as a torch-level
    ``fx.GraphModule`` and record shapes in ``node.meta``; ``gm.meta[CAPTURE]`` says how.

    With fx tracing the module shares parameters with ``model``; captured through
    torch.export it holds the program's own parameter objects (which torch.export shares
    with the model it exported).
    """
    if capture not in CAPTURES:
        raise UnsupportedModelError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    if not isinstance(model, nn.Module) and not is_program(model):
        raise UnsupportedModelError(f"expected a torch.nn.Module or a torch.export ExportedProgram, got "
                                    f"{type(model).__name__}; pass the model object itself")
    if is_program(model):
        if capture == "fx":
            raise UnsupportedModelError("a torch.export program is captured with capture='export' (or 'auto'); "
                                        "capture='fx' traces nn.Modules")
        gm = from_program(model, example_input)
    elif isinstance(model, fx.GraphModule) and example_input is not None and TRACED in model.meta:
        gm = model  # already captured: only the shapes are propagated again
    elif capture == "export":
        gm = from_program(export_static(model, example_input), example_input)
    else:
        try:
            gm = fx_trace(model, extra_leaves=extra_leaves)
        except UnsupportedModelError as fx_error:
            if capture == "fx":
                raise UnsupportedModelError(f"{fx_error} Or capture it with torch.export (capture='export', "
                                            "--capture export).") from fx_error
            if example_input is None:
                raise
            try:
                gm = from_program(export_static(model, example_input), example_input)
            except UnsupportedModelError as export_error:
                raise UnsupportedModelError(f"{fx_error} torch.export failed too: {export_error}") from export_error
    gm.meta.setdefault(CAPTURE, "fx")
    gm.meta[TRACED] = True
    if example_input is not None:
        propagate_shapes(gm, example_input)
    return gm
