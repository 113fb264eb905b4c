"""Example inputs: built from a shape and dtype, or read from a tensor file.

Token models take integer ids, which must index their embedding: integer inputs are drawn
from [0, vocab) when the model names its vocabulary size (transformers' ``config.vocab_size``),
else from [0, 2), which every embedding accepts. Pruned files record the dtype, so the
model is traced with the same kind of input when it is loaded again.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import torch

from ..errors import InputShapeError, SpecError
from ..tracing import example_from_shape

# names --input-dtype accepts, and the names files record
DTYPES = {"float": torch.float32, "float32": torch.float32, "half": torch.float16, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "long": torch.int64, "int64": torch.int64, "int": torch.int32,
          "int32": torch.int32, "bool": torch.bool}


def parse_dtype(text: str) -> torch.dtype:
    """``long`` -> torch.int64 ...; an unknown name is an InputShapeError listing the known ones."""
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise InputShapeError(f"unknown input dtype {text!r}; use one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The name a file records for ``dtype`` (``int64``, ``float32`` ...)."""
    return str(dtype).removeprefix("torch.")


def vocab_size(module: Any) -> int | None:
    """The vocabulary size a model declares (transformers' config), or None."""
    size = getattr(getattr(module, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


MAX_EXAMPLE_BYTES = 2 * 2**30  # an example input is one sample: anything this large is a mistyped shape


def example_input(shape: Sequence[int], dtype: torch.dtype = torch.float32, module: Any = None,
                  seed: int = 0) -> torch.Tensor:
    """A reproducible example input: random normal floats, or random ids the model can embed."""
    numel = 1
    for n in shape:
        numel *= int(n)
    if numel * torch.empty((), dtype=dtype).element_size() > MAX_EXAMPLE_BYTES:
        raise InputShapeError(f"an example input of shape {','.join(map(str, shape))} would take "
                              f"{numel * torch.empty((), dtype=dtype).element_size() / 2**30:.1f} GiB; "
                              "give a smaller --input-shape (batch 1 is enough: the prune works on any batch)")
    if dtype.is_floating_point:
        return example_from_shape(shape, dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    high = 2 if dtype == torch.bool else (vocab_size(module) or 2)
    return torch.randint(0, high, tuple(shape), generator=gen).to(dtype)


def load_example_input(path: str) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A tensor or a tuple / list of tensors saved with ``torch.save`` (read with weights_only=True)."""
    if not os.path.isfile(path):
        raise SpecError(f"--example-input: no such file: {path}")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: whatever the reader raises
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise SpecError(f"--example-input {path} holds more than tensors (reading it would run code from the "
                            "file); save a tensor or a tuple of tensors with torch.save") from None
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"--example-input {path} is not a tensor file torch.load can read: {text}") from None
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return tuple(obj)
    raise SpecError(f"--example-input {path} holds a {type(obj).__name__}; save a tensor or a tuple of tensors "
                    "(the model's positional inputs)")


def first_tensor(x: Any) -> torch.Tensor:
    """The example input's first tensor (the one whose shape and dtype files record)."""
    return x if isinstance(x, torch.Tensor) else x[0]


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse a CLI shape such as ``1,3,224,224`` (also ``1x3x224x224`` or ``(1, 3, 224, 224)``)."""
    body = text.strip().strip("()[]").strip()
    parts = re.split(r"\s*[,x]\s*|\s+", body) if body else []
    if not parts or not all(re.fullmatch(r"[0-9]+", p) and int(p) > 0 for p in parts):
        raise InputShapeError(
            f"bad input shape {text!r}: expected positive integers separated by commas, e.g. 1,3,224,224"
        )
    return tuple(int(p) for p in parts)
