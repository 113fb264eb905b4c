"""Metanetwork files: save and load a trained metanetwork (``torch.load(weights_only=True)``)."""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import FxmetaError, SpecError
from ..io.saving import atomic_save
from .model import FORMAT, Metanet, MetanetConfig


def save_metanet(net: Metanet, path: str, *, extra: dict[str, Any] | None = None, force: bool = False) -> None:
    """Save config + state_dict in a format ``torch.load(weights_only=True)`` reads."""
    obj = {"format": FORMAT, "config": net.config.to_dict(), "state_dict": net.state_dict()}
    if extra:
        obj["extra"] = extra
    from ..io.schema import digest

    obj["checksum"] = digest(obj)
    atomic_save(obj, path, force=force)


def load_metanet(path: str, scatter: str = "auto") -> Metanet:
    """Rebuild a Metanet saved by ``save_metanet`` (or a meta-training checkpoint)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FxmetaError(f"no metanet file at {path}; give the path of a file written by meta-training") from None
    except Exception as exc:  # a pickle the safe loader refuses, or not a torch file at all
        raise FxmetaError(f"{path} is not a metanet file ({type(exc).__name__}); "
                          "give a file written by fxmeta meta-training") from None
    if isinstance(obj, dict) and "metanet" in obj and isinstance(obj["metanet"], dict):
        obj = obj["metanet"]
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise FxmetaError(f"{path} is not a metanet file (expected format {FORMAT!r}); "
                          "give a file written by fxmeta meta-training")
    from ..errors import DamagedFileError
    from ..io.schema import check_metanet_payload

    check_metanet_payload(obj, path)
    try:
        net = Metanet(MetanetConfig.from_dict(obj["config"]), scatter=scatter)
        own = net.state_dict()
        state = obj["state_dict"]
        wrong = [k for k, v in own.items() if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)]
        if wrong or set(own) != set(state):
            raise ValueError(f"its weights do not fit its config ({', '.join(wrong[:2]) or 'different keys'})")
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise DamagedFileError(f"damaged file: {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                               ) from None
    return net


def load_metanet_file(path: str | os.PathLike) -> Metanet:
    """A trained metanetwork from ``path`` (written by ``fxmeta meta-train``), with a hint when absent."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SpecError(f"no such metanetwork file: {path}; train one with 'fxmeta meta-train' or drop --metanet")
    return load_metanet(path)
