"""The trust gate: nothing that a file names is imported, run or unpickled without ``trust``.

Every path that can import or unpickle goes through ``require_trust``: model specs stored
in model files, data specs and model specs in zoo manifests, pickled modules, torch.export
programs and architectures embedded in pruned files. A spec typed on the command line is
the user's own choice and runs without ``--trust``; the same spec read from a file does not.
"""
from __future__ import annotations

import re

from ..errors import UnsafeFileError

TRUST_HINT = "Re-run with --trust (trust=True) if you trust its source"

# specs that build an installed library's architecture (``fxmeta.io.libraries``): no code from a file
LIBRARY_PREFIXES = ("torchvision", "fxmeta", "hf", "timm")

_BUILTIN_DATA = re.compile(r"(digits|mnist5k|(cifar10|cifar100|imagefolder):.*)", re.S)


def require_trust(trust: bool, source: str, what: str, alternative: str = "") -> None:
    """Raise UnsafeFileError unless ``trust``: ``source`` (a file) asks to ``what`` (run code ...)."""
    if trust:
        return
    tail = f", or {alternative}" if alternative else ""
    raise UnsafeFileError(f"{source} {what}. {TRUST_HINT}{tail}.")


def spec_runs_code(spec: str) -> bool:
    """True for model specs that import user code (``module:factory``, ``file.py:factory``)."""
    spec = spec.strip()
    arch = spec.rsplit("@", 1)[0] if "@" in spec else spec
    prefix = arch.partition(":")[0]
    if prefix in LIBRARY_PREFIXES or ":" not in arch:
        return False
    target, _, attr = arch.rpartition(":")
    return bool(target and attr)


def data_spec_runs_code(spec: str) -> bool:
    """True for data specs that import user code (``module.path:function``)."""
    return not _BUILTIN_DATA.fullmatch(spec.strip())


def check_model_spec(spec: str, *, trust: bool, source: str) -> None:
    """The gate for a model spec read from ``source`` (a file)."""
    if spec_runs_code(spec):
        require_trust(trust, source, f"builds its architecture with {spec}, which imports and runs that code")


def check_data_spec(spec: str, *, trust: bool, source: str) -> None:
    """The gate for a data spec read from ``source`` (a file)."""
    if data_spec_runs_code(spec):
        require_trust(trust, source, f"names the data function {spec}, which imports and runs that code")
