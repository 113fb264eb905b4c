"""Architectures stored inside fxmeta files, so that a pruned model loads wherever it is copied.

When the architecture is code (a ``file.py:factory`` source, a pickled module, a
torch.export program), ``save`` stores it in the file (``embedded``); rebuilding it runs
that code, so it needs ``trust`` like the original input did.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from typing import Any

import torch
from torch import nn

from ..errors import DamagedFileError, SpecError
from .trust import require_trust


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_torchscript(path: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1] in ("constants.pkl", "code/__torch__.py") or "/code/__torch__" in n
                       for n in z.namelist())
    except Exception:  # noqa: BLE001 - not a zip archive
        return False


def file_bytes(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def from_embedded(emb: dict, spec: str, kwargs: dict[str, Any], path: str, *, trust: bool) -> nn.Module:
    """Rebuild an architecture stored in the file itself (it is code: only with trust)."""

    kind = emb["kind"]
    what = {"source": f"embeds its architecture as Python source ({emb.get('file')}:{emb.get('factory')}), "
                      "which building it runs",
            "pickle": "embeds its architecture as a pickled module; unpickling it runs code from the file",
            "export": "embeds its architecture as a torch.export program; loading it unpickles parts of it"}[kind]
    require_trust(trust, path, what)
    if kind == "source":
        module = _run_source(emb, kwargs, path)
    elif kind == "pickle":
        try:
            module = torch.load(io.BytesIO(emb["data"].numpy().tobytes()), weights_only=False, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - e.g. the pickled classes cannot be imported here
            raise SpecError(f"cannot rebuild the pickled module embedded in {path}: {type(exc).__name__}: "
                            f"{_first_line(exc)}; the classes it was saved with must be importable "
                            "(same module path as when saved)") from None
        if not isinstance(module, nn.Module):
            raise DamagedFileError(f"damaged file: {path}: its embedded module is a {type(module).__name__}")
    else:
        module = _load_program(emb, path).module()
    return module


def embedded_program(emb: dict, path: str, *, trust: bool) -> torch.export.ExportedProgram:
    """The torch.export program stored in the file itself (loading it unpickles: only with trust)."""
    require_trust(trust, path, "embeds its architecture as a torch.export program; loading it unpickles parts of it")
    return _load_program(emb, path)


def _load_program(emb: dict, path: str) -> torch.export.ExportedProgram:
    try:
        return torch.export.load(io.BytesIO(emb["data"].numpy().tobytes()))
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"cannot rebuild the torch.export program embedded in {path}: "
                        f"{type(exc).__name__}: {_first_line(exc)}") from None


def _run_source(emb: dict, kwargs: dict[str, Any], path: str) -> nn.Module:
    import types

    source = emb["source"]
    stem = re.sub(r"\W", "_", os.path.splitext(emb["file"])[0])
    name = f"_fxmeta_embedded_{stem}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"
    owner = sys.modules.get(name)
    if owner is None:
        owner = types.ModuleType(name)
        owner.__file__ = f"<{emb['file']} embedded in {path}>"
        sys.modules[name] = owner
        try:
            exec(compile(source, owner.__file__, "exec"), owner.__dict__)  # noqa: S102 - trusted, see require_trust
        except Exception as exc:  # noqa: BLE001 - e.g. it imports a module that sits next to the original file
            sys.modules.pop(name, None)
            raise SpecError(f"the architecture source {emb['file']} embedded in {path} fails: "
                            f"{type(exc).__name__}: {_first_line(exc)}"
                            + ("; install the module it imports" if isinstance(exc, ImportError) else "")) from None
    factory: Any = owner
    for part in emb["factory"].split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise DamagedFileError(f"damaged file: {path}: its embedded source {emb['file']} has no function "
                               f"{emb['factory']!r}")
    try:
        module = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{emb['file']}:{emb['factory']} embedded in {path} failed: {type(exc).__name__}: "
                        f"{_first_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise SpecError(f"{emb['file']}:{emb['factory']} embedded in {path} returned a {type(module).__name__}")
    return module
