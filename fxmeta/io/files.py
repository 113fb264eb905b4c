"""Loading user models from specs and files (writing them: ``fxmeta.io.saving``).

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
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import SpecError
from .embed import embedded_program as _embedded_program
from .embed import file_bytes as _file_bytes
from .embed import from_embedded as _from_embedded
from .embed import is_torchscript as _is_torchscript
from .inputs import DTYPES, example_input
from .libraries import hf_model, timm_model, torchvision_model
from .saving import FORMAT, VERSION
from .schema import check_dtypes, check_model_payload
from .trust import TRUST_HINT, check_model_spec, require_trust

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
