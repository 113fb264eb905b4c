"""Writing results safely: fxmeta model files and atomic writes.

``save`` writes an fxmeta model file (format, spec, plan, state dict, metrics and a checksum;
it loads with ``torch.load(weights_only=True)`` and ``fxmeta.load``). Every write goes
through ``atomic_save``: a temp file beside the output (``fxmeta.io.paths.temp_path``), then
``os.replace``; it never replaces an existing file without ``force``, nor leaves a partial one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import numbers
import os
from typing import Any, BinaryIO, Sequence

import torch
from torch import nn

from ..errors import FxmetaError, OutputExistsError
from .inputs import dtype_name, first_tensor
from .paths import check_output, remove_stale_temps, temp_path
from .schema import digest

FORMAT = "fxmeta.model"
VERSION = 1


def save(
    path: str | os.PathLike,
    module: nn.Module,
    *,
    spec: str,
    spec_kwargs: dict[str, Any] | None = None,
    plan: Any = None,
    metrics: Any = None,
    input_shape: Sequence[int] | None = None,
    force: bool = False,
    plans_before: Sequence[Any] = (),
    embedded: dict | None = None,
    example_input: Any = None,
) -> None:
    """Write ``module`` as an fxmeta model file, loadable with ``torch.load(weights_only=True)``.

    ``spec`` / ``spec_kwargs`` rebuild the architecture before pruning; ``plan`` (a pruned
    model) is stored as plain data and handed to ``fxmeta.pruning.apply_plan`` on load.
    ``plans_before`` are the plans that made the pruned model the module was pruned from
    (applied first, in order), ``embedded`` the architecture itself when it is code (see
    ``LoadedModel.embedded``): with both the file stands alone, wherever it is copied.
    ``example_input`` (what the model was pruned with) gives ``input_shape`` and records
    its dtype (token ids are int64); a tuple of inputs is stored whole, to trace with on load.
    The file stores a checksum of its content: a damaged copy fails to load, never loads wrong.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("save() needs the architecture spec the module was built from, e.g. spec='torchvision:resnet18'")
    if example_input is not None and input_shape is None:
        input_shape = tuple(first_tensor(example_input).shape)
    if plan is not None and input_shape is None:
        raise ValueError("save() of a pruned model (plan given) needs input_shape to trace it again on load")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec,
        "spec_kwargs": plain_data(spec_kwargs or {}),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()},
    }
    if plan is not None:
        payload["plan"] = plain_data(plan)
        if plans_before:
            payload["plans_before"] = plain_data(list(plans_before))
    elif plans_before:
        raise ValueError("save(): plans_before without a plan")
    if embedded is not None:
        payload["embedded"] = {k: (v if isinstance(v, torch.Tensor) else plain_data(v)) for k, v in embedded.items()}
    if metrics is not None:
        payload["metrics"] = plain_data(metrics)
    if input_shape is not None:
        payload["input_shape"] = [int(d) for d in input_shape]
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            payload["example_input"] = [t.detach().to("cpu", copy=True) for t in example_input]
        elif example_input.dtype != torch.float32:
            payload["input_dtype"] = dtype_name(example_input.dtype)
    payload["checksum"] = digest(payload)
    atomic_save(payload, path, force=force)


def plain_data(obj: Any) -> Any:
    """``obj`` as dicts, lists, numbers, strings and CPU tensors, which weights_only loading accepts.

    Dataclasses become dicts, tuples become lists, objects with ``to_dict()`` use it.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return plain_data(obj.value)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return plain_data(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {_plain_key(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [plain_data(v) for v in items]
    raise TypeError(f"cannot store a {type(obj).__name__} in an fxmeta file; give it a to_dict() or use plain data")


def _plain_key(key: Any) -> Any:
    key = plain_data(key) if isinstance(key, (enum.Enum, numbers.Number)) else key
    return key if key is None or isinstance(key, (str, int, float, bool)) else str(key)


def atomic_save(obj: Any, path: str | os.PathLike, *, force: bool = False) -> None:
    """``torch.save`` (``torch.export.save`` for an ExportedProgram) that never leaves a partial file.

    Writes a temp file next to ``path`` and renames it over ``path``; on any failure the
    temp file is removed and ``path`` is untouched. An existing ``path`` needs ``force``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputExistsError(f"{path} is a directory; give a file path for the output")
    if os.path.exists(path) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it, or choose another output path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FxmetaError(f"output folder {folder} does not exist; create it first")
    remove_stale_temps(path)  # a dead run's half-written temp file of this output
    tmp = temp_path(path)
    # os.open with 0o666 gives the file the usual umask permissions (mkstemp would give 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like ``atomic_save``."""
    atomic_save(_Text(text), path, force=force)


class _Text(str):
    """Marks a string to be written as UTF-8 text rather than pickled."""


def _write(obj: Any, f: BinaryIO) -> None:
    if isinstance(obj, _Text):
        f.write(obj.encode("utf-8"))
    elif isinstance(obj, torch.export.ExportedProgram):
        torch.export.save(obj, f)
    else:
        torch.save(obj, f)


def check_output_path(out: str | os.PathLike, inputs: Sequence[str], force: bool = False) -> None:
    """Refuse an output path that is one of the inputs (even with ``force``), exists (without), is a
    directory or cannot be written (``fxmeta.io.paths.check_output``)."""
    check_output(out, inputs=inputs, force=force)
