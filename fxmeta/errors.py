"""One exception type per kind of user mistake; messages say what to do next."""
from __future__ import annotations


class FxmetaError(Exception):
    """Base class of every error fxmeta raises on purpose."""


class UnsupportedModelError(FxmetaError):
    """The model cannot be traced, lowered or pruned as asked."""


class InputShapeError(FxmetaError):
    """The example input does not fit the model."""


class SpecError(FxmetaError):
    """A model / data spec names nothing that can be loaded."""


class UnsafeFileError(FxmetaError):
    """Loading the file would run code (unpickling) and --trust was not given."""


class OutputExistsError(FxmetaError):
    """The output file exists and --force was not given."""


class PruningError(FxmetaError):
    """Pruning cannot reach the target, or its self-check failed."""


class DamagedFileError(SpecError):
    """A file fxmeta wrote was changed or truncated: it does not match the file format."""


class TrainingDivergedError(FxmetaError):
    """Training produced a non-finite loss or non-finite weights."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
