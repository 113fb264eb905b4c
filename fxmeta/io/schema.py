"""What an fxmeta model file must hold, checked on load: one clear "damaged file" error per problem.

A file fxmeta wrote and nobody touched always passes; a truncated, bit-flipped or edited
one fails here with what is wrong (a missing key, a wrong type, a value out of range, a
non-finite or wrongly typed tensor, a duplicated index, a checksum that does not match)
instead of deep inside model building. ``digest`` is the checksum ``save`` stores: any
change to the stored content makes it differ, so a damaged file never loads silently.
"""
from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import torch

from ..errors import DamagedFileError

PLAN_FORMAT = "fxmeta.plan/1"
_PLAIN = (type(None), bool, int, float, str)
_MAX_PROBLEMS = 3
# the input dtypes files record (``fxmeta.io.inputs.dtype_name``)
_INPUT_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")


def digest(obj: Any) -> str:
    """SHA-256 over a canonical walk of plain data and tensors (dtype, shape and bytes)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, k)
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


class _Problems:
    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_any(self) -> None:
        if self.items:
            shown = "; ".join(self.items[:_MAX_PROBLEMS])
            more = f" (and {len(self.items) - _MAX_PROBLEMS} more)" if len(self.items) > _MAX_PROBLEMS else ""
            raise DamagedFileError(f"damaged file: {self.path}: {shown}{more}")


def _type_name(v: Any) -> str:
    return f"the {type(v).__name__} {v!r}" if isinstance(v, _PLAIN) else f"a {type(v).__name__}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_state_dict(state: Any, where: str, p: _Problems) -> None:
    if not isinstance(state, dict):
        p.add(f"{where} is {_type_name(state)}, expected a dict of tensors")
        return
    for k, v in state.items():
        if not isinstance(k, str):
            p.add(f"{where} has a key {_type_name(k)}, expected names")
        elif not isinstance(v, torch.Tensor):
            p.add(f"{where}[{k!r}] is {_type_name(v)}, expected a tensor")
        elif v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            p.add(f"{where}[{k!r}] holds NaN or infinite values")


def _check_plan(plan: Any, where: str, p: _Problems) -> None:
    if not isinstance(plan, dict):
        p.add(f"{where} is {_type_name(plan)}, expected a pruning plan (a dict)")
        return
    if plan.get("format") != PLAN_FORMAT:
        return  # not fxmeta's own plan format: the plan's applier judges it (and names what is wrong)
    ignore = plan.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(n, str) for n in ignore):
        p.add(f"{where}.ignore is {_type_name(ignore)}, expected a list of module names")
    groups = plan.get("groups")
    if not isinstance(groups, list):
        p.add(f"{where}.groups is {'missing' if groups is None else _type_name(groups)}, expected a list")
        return
    keys = set()
    for i, g in enumerate(groups):
        at = f"{where}.groups[{i}]"
        if not isinstance(g, dict):
            p.add(f"{at} is {_type_name(g)}, expected a dict")
            continue
        key, units, removed = g.get("key"), g.get("units"), g.get("removed")
        if not isinstance(key, str) or not key:
            p.add(f"{at}.key is {_type_name(key)}, expected a group name")
        elif key in keys:
            p.add(f"{at}.key {key!r} appears twice")
        keys.add(key)
        if not _is_int(units) or units < 1:
            p.add(f"{at}.units is {_type_name(units)}, expected an integer >= 1")
            continue
        if not isinstance(removed, list) or not all(_is_int(r) for r in removed):
            p.add(f"{at}.removed is {_type_name(removed)}, expected a list of integers")
            continue
        if len(set(removed)) != len(removed):
            dup = sorted({r for r in removed if removed.count(r) > 1})
            p.add(f"{at}.removed lists unit {dup[0]} more than once")
        bad = [r for r in removed if not 0 <= r < units]
        if bad:
            p.add(f"{at}.removed holds unit {bad[0]}, outside 0..{units - 1}")
        elif len(set(removed)) >= units:
            p.add(f"{at}.removed removes all {units} units")


def _check_embedded(emb: Any, p: _Problems) -> None:
    if not isinstance(emb, dict) or emb.get("kind") not in ("source", "pickle", "export"):
        p.add(f"embedded is {_type_name(emb)}, expected an embedded architecture (kind source, pickle or export)")
        return
    if emb["kind"] == "source":
        for key in ("file", "factory", "source"):
            if not isinstance(emb.get(key), str) or not emb.get(key):
                p.add(f"embedded.{key} is {_type_name(emb.get(key))}, expected a string")
    else:
        data = emb.get("data")
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
            p.add(f"embedded.data is {_type_name(data)}, expected a 1-D uint8 tensor")


def check_model_payload(obj: dict, path: str, fmt: str, version: int) -> None:
    """Raise DamagedFileError (or SpecError for a newer version) unless ``obj`` is a sound model file."""
    from ..errors import SpecError

    p = _Problems(path)
    v = obj.get("version")
    if not _is_int(v):
        p.add(f"version is {'missing' if v is None else _type_name(v)}, expected an integer")
    elif v > version:
        raise SpecError(f"{path} is {fmt} version {v}; this fxmeta reads up to {version}: update fxmeta")
    elif v < 1:
        p.add(f"version is {v}, expected 1..{version}")
    spec = obj.get("spec")
    if not isinstance(spec, str) or not spec.strip():
        p.add(f"spec is {'missing' if spec is None else _type_name(spec)}, expected an architecture spec")
    kwargs = obj.get("spec_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        p.add(f"spec_kwargs is {_type_name(kwargs)}, expected a dict of keyword arguments")
    elif any(isinstance(x, float) and not math.isfinite(x) for x in kwargs.values()):
        p.add("spec_kwargs holds a non-finite number")
    if "state_dict" not in obj:
        p.add("state_dict is missing")
    else:
        check_state_dict(obj["state_dict"], "state_dict", p)
    shape = obj.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not shape
                              or not all(_is_int(d) and d > 0 for d in shape)):
        p.add(f"input_shape is {_type_name(shape)}, expected a list of positive integers")
    dtype = obj.get("input_dtype")
    if dtype is not None and dtype not in _INPUT_DTYPES:
        p.add(f"input_dtype is {_type_name(dtype)}, expected one of {', '.join(_INPUT_DTYPES)}")
    example = obj.get("example_input")
    if example is not None and (not isinstance(example, list) or not example
                                or not all(isinstance(t, torch.Tensor) for t in example)):
        p.add(f"example_input is {_type_name(example)}, expected a list of tensors")
    plans = obj.get("plans_before", [])
    if not isinstance(plans, list):
        p.add(f"plans_before is {_type_name(plans)}, expected a list of pruning plans")
        plans = []
    for i, plan in enumerate(plans):
        _check_plan(plan, f"plans_before[{i}]", p)
    if obj.get("plan") is not None:
        _check_plan(obj["plan"], "plan", p)
        if shape is None:
            p.add("plan is given but input_shape is missing")
    elif plans:
        p.add("plans_before is given without a plan")
    if "embedded" in obj:
        _check_embedded(obj["embedded"], p)
    if "metrics" in obj and not isinstance(obj["metrics"], dict):
        p.add(f"metrics is {_type_name(obj['metrics'])}, expected a dict")
    _check_checksum(obj, p)
    p.raise_any()


def _check_checksum(obj: dict, p: _Problems) -> None:
    """A stored checksum must match the rest of the file (checked once the structure is sound)."""
    checksum = obj.get("checksum")
    if checksum is not None and not p.items:
        if not isinstance(checksum, str) or checksum != digest({k: v for k, v in obj.items() if k != "checksum"}):
            p.add("its content does not match its checksum (changed or corrupted after it was written)")


def check_dtypes(own: dict, state: dict, path: str) -> None:
    """A stored tensor must have the dtype of the model's own (int64 weights are a damaged file);
    floating weights of another precision (a float16 / bfloat16 export) are the user's to convert."""
    floats = [k for k, v in own.items() if k in state and isinstance(state[k], torch.Tensor)
              and state[k].dtype != v.dtype and state[k].is_floating_point() and v.is_floating_point()]
    if floats and len(floats) == sum(1 for k in own if k in state and own[k].is_floating_point()):
        from ..errors import SpecError

        have, want = state[floats[0]].dtype, own[floats[0]].dtype
        raise SpecError(f"{path} holds {str(have).replace('torch.', '')} weights and the model is "
                        f"{str(want).replace('torch.', '')}: convert them first, e.g. torch.save({{k: v.float() for k, "
                        f"v in torch.load(path).items()}}, 'weights_fp32.pt')")
    p = _Problems(path)
    for k, v in own.items():
        if k in state and isinstance(state[k], torch.Tensor) and state[k].dtype != v.dtype:
            p.add(f"state_dict[{k!r}] is {state[k].dtype}, the model's is {v.dtype}")
    p.raise_any()


def check_metanet_payload(obj: dict, path: str) -> None:
    """A metanetwork file: a config dict and finite tensors (the config is then built and must fit them)."""
    p = _Problems(path)
    if not isinstance(obj.get("config"), dict):
        p.add(f"config is {_type_name(obj.get('config'))}, expected a dict")
    check_state_dict(obj.get("state_dict"), "state_dict", p)
    if "extra" in obj and not isinstance(obj["extra"], dict):
        p.add(f"extra is {_type_name(obj['extra'])}, expected a dict")
    _check_checksum(obj, p)
    p.raise_any()
