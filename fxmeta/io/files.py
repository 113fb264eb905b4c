"""Loading user models from specs and files, and writing results safely.

A model spec is one of::

    torchvision:resnet50          a torchvision architecture, random init (never downloads)
    hf:config.json / hf:FOLDER    a transformers model from a local config (+ the folder's weights)
    timm:vit_tiny_patch16_224     a timm architecture, random init (see ``libraries``)
    fxmeta:resnet56               an architecture from fxmeta.models
    my_pkg.module:factory         import a module, call factory(**kwargs)
    path/to/file.py:factory       the same for a Python file
    SPEC@weights.pt               an architecture spec plus a state_dict file
    model.pt / model.pth          an fxmeta model file (see ``save``); a fully pickled
                                  module only with trust=True
    model.pt2                     a torch.export program, only with trust=True

Loading never runs code from a file unless ``trust=True``: files are read with
``torch.load(weights_only=True)``, and an architecture spec stored inside a file may only
name torchvision / fxmeta architectures or other files unless the file is trusted.

Writes are atomic (temp file in the same directory, then ``os.replace``) and never
replace an existing file without ``force``, nor an input file at all.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import importlib
import importlib.util
import numbers
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Sequence

import torch
from torch import nn

from ..errors import FxmetaError, InputShapeError, OutputExistsError, SpecError
from .embed import embedded_program as _embedded_program
from .embed import file_bytes as _file_bytes
from .embed import from_embedded as _from_embedded
from .embed import is_torchscript as _is_torchscript
from .inputs import DTYPES, dtype_name, example_input
from .inputs import first_tensor as _first_tensor
from .libraries import hf_model, timm_model, torchvision_model
from .paths import check_output, remove_stale_temps, temp_path
from .schema import check_dtypes, check_model_payload, digest
from .trust import TRUST_HINT, check_model_spec, require_trust

FORMAT = "fxmeta.model"
VERSION = 1
MODEL_SUFFIXES = (".pt", ".pth", ".pt2")
# A saved file's spec may name another file; this bounds such chains (and self-loops).
_MAX_DEPTH = 4
_TRUST_HINT = TRUST_HINT


@dataclass
class LoadedModel:
    """A model built from a spec, with what is needed to rebuild it.

    ``spec`` and ``spec_kwargs`` rebuild the architecture (for a saved pruned model: the
    architecture before pruning, with ``plan`` the pruning plan applied on top).
    """

    module: nn.Module
    spec: str
    source: str
    default_input_shape: tuple[int, ...] | None = None
    spec_kwargs: dict[str, Any] = field(default_factory=dict)
    plan: Any = None
    # every plan from the architecture to this model, in order (``plan`` is the last)
    plans: list = field(default_factory=list)
    # the architecture itself when it is code (Python source, a pickled module, a
    # torch.export program): stored in pruned files so that they load wherever they are copied
    embedded: dict | None = None
    # a torch.export program the module came from (a .pt2 file, or one embedded in a pruned file)
    program: Any = None
    # what the example input is made of: token models take int64 ids
    default_input_dtype: torch.dtype = torch.float32
    # how the stages capture it when asked for "auto" (transformers models: "export")
    capture: str = "auto"

    def save_args(self) -> dict[str, Any]:
        """What ``save`` needs besides the module and its new plan to rebuild this model's architecture."""
        return {"spec": self.spec, "spec_kwargs": dict(self.spec_kwargs), "plans_before": list(self.plans),
                "embedded": self.embedded}


# ---------------------------------------------------------------------------- loading


def resolve_model(
    spec: str,
    *,
    trust: bool = False,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> LoadedModel:
    """Build the model ``spec`` names (see the module docstring), in eval mode.

    A ``module:factory`` or ``file.py:factory`` spec imports that Python code and runs
    it: that is the point of such a spec, so only type specs whose code you trust.
    """
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
    loaded = _resolve(os.fspath(spec).strip(), kwargs, trust=trust, from_file=None, depth=0)
    _set_eval(loaded.module)
    return loaded


def load(path: str | os.PathLike, *, trust: bool = False) -> nn.Module:
    """Rebuild the module saved in ``path`` (an fxmeta model file, see ``save``)."""
    return resolve_model(os.fspath(path), trust=trust).module


def _resolve(spec: str, kwargs: dict[str, Any], *, trust: bool, from_file: str | None, depth: int) -> LoadedModel:
    if depth > _MAX_DEPTH:
        raise SpecError(f"{from_file}: architecture specs refer to files {_MAX_DEPTH} levels deep (a loop?)")
    if not spec:
        raise SpecError("empty model spec; pass e.g. torchvision:resnet18, fxmeta:resnet56 or model.pt")
    if os.path.isdir(spec):
        raise SpecError(f"{spec} is a directory; give a model file or an architecture spec")
    if os.path.isfile(spec) and not spec.endswith(".py"):
        if kwargs:
            flags = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            raise SpecError(f"{spec} is a saved model with its architecture fixed; drop {flags}")
        return _load_file(spec, trust=trust, depth=depth)
    if "@" in spec:
        arch, weights = spec.rsplit("@", 1)
        return _with_weights(arch, weights, kwargs, trust=trust, from_file=from_file, depth=depth)
    prefix, _, name = spec.partition(":")
    if prefix == "torchvision":
        return _torchvision(name, kwargs)
    if prefix == "fxmeta":
        return _fxmeta(name, kwargs)
    if prefix == "hf":
        return _hf(name, kwargs)
    if prefix == "timm":
        return _timm(name, kwargs)
    if spec.endswith(MODEL_SUFFIXES):
        raise SpecError(f"no such file: {spec}")
    target, sep, attr = spec.rpartition(":")
    if sep and target and attr:
        if from_file is not None:
            check_model_spec(spec, trust=trust, source=from_file)
        return _factory(target, attr, kwargs)
    if spec.endswith(".py"):
        raise SpecError(f"{spec} is Python source; name the function that builds the model: {spec}:factory")
    raise SpecError(
        f"unknown model spec {spec!r}; use torchvision:NAME, fxmeta:NAME, module.path:factory, "
        "file.py:factory, SPEC@weights.pt, or a saved .pt / .pt2 file"
    )


def _torchvision(name: str, kwargs: dict[str, Any]) -> LoadedModel:
    module, shape = torchvision_model(name, kwargs)
    return LoadedModel(module, f"torchvision:{name}", f"torchvision:{name}", shape, dict(kwargs))


def _timm(name: str, kwargs: dict[str, Any]) -> LoadedModel:
    module, shape = timm_model(name, kwargs)
    return LoadedModel(module, f"timm:{name}", f"timm:{name}", shape, dict(kwargs))


def _hf(target: str, kwargs: dict[str, Any]) -> LoadedModel:
    if not target:
        raise SpecError("hf: needs a config.json or a folder holding one, e.g. hf:path/to/config.json")
    # a spec read from a saved file keeps the path it was made from; its config travels in the kwargs
    spec = f"hf:{target if 'config_json' in kwargs else os.path.abspath(target)}"
    module, shape, dtype, rebuild = hf_model(target, kwargs)
    saved = {k: v for k, v in kwargs.items() if k != "config_json"} | rebuild
    # transformers models run Python control flow on shapes, which fx cannot trace
    return LoadedModel(module, spec, spec, shape, saved, default_input_dtype=dtype, capture="export")


def _fxmeta(name: str, kwargs: dict[str, Any]) -> LoadedModel:
    from ..models import get_model

    try:
        module = get_model(name, **kwargs)  # raises SpecError for unknown names
    except TypeError as exc:
        raise SpecError(f"fxmeta:{name} does not accept {kwargs}: {_first_line(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise SpecError(f"fxmeta:{name} built a {type(module).__name__}, not a torch.nn.Module")
    shape = (1, int(kwargs.get("in_channels", 3)), 32, 32)
    return LoadedModel(module, f"fxmeta:{name}", f"fxmeta:{name}", shape, dict(kwargs))


def _factory(target: str, attr: str, kwargs: dict[str, Any]) -> LoadedModel:
    embedded = None
    if target.endswith(".py"):
        owner = _import_file(target)
        spec = f"{os.path.abspath(target)}:{attr}"
        with open(target, encoding="utf-8") as f:
            embedded = {"kind": "source", "file": os.path.basename(target), "factory": attr, "source": f.read()}
    else:
        try:
            owner = importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is a bad spec
            raise SpecError(f"cannot import {target}: {type(exc).__name__}: {_first_line(exc)}") from exc
        spec = f"{target}:{attr}"
    factory: Any = owner
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise SpecError(f"{target} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise SpecError(f"{spec} is a {type(factory).__name__}, not a function that builds a model")
    try:
        module = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - report the user's factory failure in one line
        raise SpecError(f"{spec}({_kwargs_text(kwargs)}) failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise SpecError(f"{spec} returned a {type(module).__name__}, not a torch.nn.Module")
    return LoadedModel(module, spec, spec, None, dict(kwargs), embedded=embedded)


def _import_file(path: str) -> Any:
    """Import a Python file by path (this runs it), registered in sys.modules."""
    if not os.path.isfile(path):
        raise SpecError(f"no such file: {path}")
    full = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(full))[0])
    # Registered so dataclasses and pickling inside the file work; unique per path.
    name = f"_fxmeta_file_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, full)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"cannot import {path} as Python source")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    # Like `python file.py`: the file may import modules that sit next to it.
    folder = os.path.dirname(full)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's file is a bad spec
        sys.modules.pop(name, None)
        raise SpecError(f"importing {path} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        sys.path.remove(folder)
    return module


def _with_weights(
    arch: str, weights: str, kwargs: dict[str, Any], *, trust: bool, from_file: str | None, depth: int
) -> LoadedModel:
    if not os.path.isfile(weights):
        raise SpecError(f"no such weights file: {weights}")
    base = _resolve(arch, kwargs, trust=trust, from_file=from_file, depth=depth + 1)
    obj = _torch_load(weights, trust=trust)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("plan") is not None:
            raise SpecError(f"{weights} holds a pruned fxmeta model; load it alone, without {arch}@")
        obj = obj.get("state_dict")
    elif isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, dict) and not _is_state_dict(obj):
        # Common checkpoint layouts keep the weights under one key.
        obj = next((obj[k] for k in ("state_dict", "model") if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        raise SpecError(f"{weights} holds no state_dict (a dict of tensors) to load into {arch}")
    _load_state(base.module, obj, weights, base.spec)
    source = f"{base.source} with weights from {weights}"
    return dataclasses.replace(base, source=source)


def _load_file(path: str, *, trust: bool, depth: int) -> LoadedModel:
    if path.endswith(".pt2"):
        return _load_export(path, trust=trust)
    obj = _torch_load(path, trust=trust)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, os.path.abspath(path), f"pickled module {path}", None,
                           embedded={"kind": "pickle", "data": _file_bytes(path)})
    if isinstance(obj, dict) and "format" in obj:
        return _from_saved(obj, path, trust=trust, depth=depth)
    if _is_state_dict(obj):
        raise SpecError(
            f"{path} holds only weights (a state_dict); name the architecture too: SPEC@{path}, "
            f"e.g. torchvision:resnet18@{path}"
        )
    raise SpecError(f"{path} holds a {type(obj).__name__}, not a model, an fxmeta model file or a state_dict")


def _what_instead(path: str) -> str:
    """What to do with a file fxmeta's safe loader refuses (torch's own advice, to turn
    weights_only off, is not something the CLI can or should do)."""
    if path.endswith(".json"):
        return "; a transformers config.json is given as hf:" + path
    if path.endswith((".bin", ".pth", ".pt", ".ckpt")):
        return ("; a file that needs a full unpickle can run code: pass --trust if you made it, or save a "
                "state_dict / safetensors and give it with an architecture spec (SPEC@weights.pt)")
    return "; give an fxmeta model file, SPEC@weights.pt, hf:FOLDER or a .pt2 program"


def _torch_load(path: str, *, trust: bool) -> Any:
    """torch.load without running code from the file; with ``trust`` a full unpickle."""
    if _is_torchscript(path):
        raise SpecError(f"{path} is a TorchScript archive, which fxmeta does not support (it cannot be traced); "
                        "pass the architecture spec with its weights (SPEC@weights.pt) or the model as a "
                        "torch.export program (.pt2, needs --trust)")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        needs = _unsafe_globals(path, exc)
        if not needs:
            raise SpecError(f"{path} is not a file torch.load can read{_what_instead(path)}") from exc
        shown = ", ".join(needs[:3]) + (" ..." if len(needs) > 3 else "")
        require_trust(trust, path, f"is a pickled module or object (it needs {shown}); loading it runs code "
                      "from the file", "save a state_dict with an architecture spec instead")
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: whatever the reader raises
        raise SpecError(f"{path} is not a file torch.load can read: {type(exc).__name__}: {_first_line(exc)}") from None
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - e.g. the pickled classes cannot be imported here
        raise SpecError(
            f"cannot unpickle {path}: {type(exc).__name__}: {_first_line(exc)}; "
            "the classes it was saved with must be importable (same module path as when saved)"
        ) from exc


def _unsafe_globals(path: str, exc: Exception) -> list[str]:
    """Names of the Python globals the file's pickle needs beyond plain data."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: read the loader's message instead
        return re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))


def _from_saved(obj: dict, path: str, *, trust: bool, depth: int) -> LoadedModel:
    if obj.get("format") != FORMAT:
        raise SpecError(f"{path} has format {obj.get('format')!r}, not {FORMAT!r}")
    check_model_payload(obj, path, FORMAT, VERSION)
    spec, kwargs, state = obj["spec"], obj.get("spec_kwargs") or {}, obj["state_dict"]
    embedded = obj.get("embedded")
    if embedded is not None and embedded.get("kind") == "export":
        program = _embedded_program(embedded, path, trust=trust)
        base = LoadedModel(program.module(), spec, spec, None, dict(kwargs), embedded=embedded, program=program)
    elif embedded is not None:
        base = LoadedModel(_from_embedded(embedded, spec, dict(kwargs), path, trust=trust), spec, spec, None,
                           dict(kwargs), embedded=embedded)
    else:
        base = _resolve(spec, dict(kwargs), trust=trust, from_file=path, depth=depth + 1)
    shape = tuple(obj["input_shape"]) if obj.get("input_shape") else base.default_input_shape
    dtype = DTYPES[obj["input_dtype"]] if obj.get("input_dtype") else base.default_input_dtype
    module, plan = base.module, obj.get("plan")
    plans = [*obj.get("plans_before", []), plan] if plan is not None else []
    if plans and shape is None:
        raise SpecError(f"{path} holds a pruning plan but no input_shape to trace the model with; save it again")
    if plans:  # the ids of token models must index the embedding: the example comes from the unpruned model
        x = tuple(obj["example_input"]) if obj.get("example_input") else example_input(shape, dtype, base.module)
    for i, step in enumerate(plans):
        # a plan made on the captured program is replayed on the program itself
        start = base.program if i == 0 and base.program is not None and _captured(step) else module
        module = _apply_plan(start, step, x, path if i == len(plans) - 1 else f"{path} (earlier plan {i + 1})")
    _load_state(module, state, path, spec)
    return LoadedModel(module, spec, f"fxmeta model file {path}", shape, dict(kwargs), plan, plans,
                       embedded or base.embedded, default_input_dtype=dtype, capture=base.capture)


def _captured(plan: Any) -> bool:
    return isinstance(plan, dict) and plan.get("capture") == "export"


def _apply_plan(module: Any, plan: Any, x: Any, path: str) -> nn.Module:
    from ..pruning.plan import apply_plan

    _set_eval(module)
    pruned = apply_plan(module, plan, x)
    return pruned if isinstance(pruned, nn.Module) else module


@contextlib.contextmanager
def _quiet_export_log():
    import logging

    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_export(path: str, *, trust: bool) -> LoadedModel:
    # torch.export.load unpickles parts of the archive (its own docs: never load
    # untrusted files), so a .pt2 gets the same treatment as a pickled module.
    require_trust(trust, path, "is a torch.export program; torch.export.load unpickles parts of it, which can run "
                  "code from the file", "save a state_dict with an architecture spec instead")
    try:
        with _quiet_export_log():  # torch logs a traceback of its own before raising on a damaged archive
            program = torch.export.load(path)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable program
        raise SpecError(f"{path} is not a torch.export program: {type(exc).__name__}: {_first_line(exc)}") from exc
    shape = None
    args = (program.example_inputs or ((), {}))[0]
    if len(args) == 1 and isinstance(args[0], torch.Tensor):
        shape = tuple(args[0].shape)
    return LoadedModel(program.module(), os.path.abspath(path), f"torch.export program {path}", shape,
                       embedded={"kind": "export", "data": _file_bytes(path)}, program=program)


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str, spec: str) -> None:
    """Strict load_state_dict with an error that names the mismatching keys."""
    own = module.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DDP wrapper
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{len(keys)} {what} ({_few(keys)})"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("size mismatches, file vs model", resized)) if keys]
    if problems:
        raise SpecError(
            f"{path} does not fit {spec}: {'; '.join(problems)}. Check the architecture spec and --num-classes."
        )
    check_dtypes(own, state, path)
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()
           and not bool(torch.isfinite(v).all())]
    if bad:  # no prune or self-check can make sense of them: say so before any work
        raise SpecError(f"{path} holds NaN or infinite values ({_few(bad)}); the weights are damaged or come from a "
                        "diverged training run")
    module.load_state_dict(state, strict=True)


def _set_eval(module: Any) -> None:
    if not isinstance(module, nn.Module):
        return  # a torch.export program: its mode was fixed when it was exported
    try:
        module.eval()
    except NotImplementedError:
        pass  # torch.export modules fix train/eval behaviour when exported


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _few(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# ---------------------------------------------------------------------------- saving


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
        input_shape = tuple(_first_tensor(example_input).shape)
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


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse a CLI shape such as ``1,3,224,224`` (also ``1x3x224x224`` or ``(1, 3, 224, 224)``)."""
    body = text.strip().strip("()[]").strip()
    parts = re.split(r"\s*[,x]\s*|\s+", body) if body else []
    if not parts or not all(re.fullmatch(r"[0-9]+", p) and int(p) > 0 for p in parts):
        raise InputShapeError(
            f"bad input shape {text!r}: expected positive integers separated by commas, e.g. 1,3,224,224"
        )
    return tuple(int(p) for p in parts)
