"""Writing a (pruned) module as a ``.pt2`` torch.export program that runs without fxmeta.

The program comes from ``fxmeta.capture.export.export_program`` (eval mode, a dynamic
batch dimension where the model allows it, checked against the module) and is written
atomically. Load it with plain ``torch.export.load(path).module()``.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn
from torch.export import ExportedProgram

from ..capture.export import export_program
from .saving import atomic_save

__all__ = ["export_program", "save_program"]


def save_program(module: nn.Module, example_input: Any, path: str | os.PathLike, *,
                 force: bool = False) -> ExportedProgram:
    """Export ``module`` (see ``export_program``) and write it to ``path`` atomically."""
    program = export_program(module, example_input)
    atomic_save(program, path, force=force)
    return program
