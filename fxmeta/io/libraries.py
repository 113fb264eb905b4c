"""Model specs that name another library's architectures: ``torchvision:``, ``hf:`` and ``timm:``.

All three are library code the user installed, so a spec read from a file builds without
``--trust``; none of them downloads anything (no pretrained weights, no model hub):

    torchvision:NAME          torchvision.models.get_model(NAME, weights=None)
    hf:CONFIG_OR_FOLDER       a transformers model from a local config.json (random weights), or
                              from a folder with config.json (and its weights, if it has any)
    timm:NAME                 timm.create_model(NAME, pretrained=False)

An ``hf:`` model stores its whole config in ``spec_kwargs["config_json"]``: a pruned file
then rebuilds the architecture from itself, wherever it is copied, and reading a JSON
config runs no code (``trust_remote_code`` is never set).
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any

import torch

from ..errors import SpecError

HF_INSTALL = "pip install 'fxmeta[hf]'"
TIMM_INSTALL = "pip install 'fxmeta[timm]'"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# the example length of token models when no --input-shape is given
_DEFAULT_TOKENS = 128


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------ torchvision


def torchvision_model(name: str, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """The torchvision architecture ``name`` with random weights, and its usual input shape."""
    import torchvision

    if "in_channels" in kwargs:
        raise SpecError(f"torchvision:{name} takes 3 input channels; drop in_channels (--in-channels)")
    for key in ("weights", "weights_backbone"):
        if key in kwargs:
            raise SpecError(f"torchvision:{name}: {key} is not accepted (nothing is downloaded); use SPEC@weights.pt")
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as exc:
        raise SpecError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from exc
    extra: dict[str, Any] = {"weights": None}
    # Detection models default to a pretrained backbone, which would download.
    if "weights_backbone" in inspect.signature(builder).parameters:
        extra["weights_backbone"] = None
    try:
        module = torchvision.models.get_model(name, **extra, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"torchvision:{name} does not accept {kwargs}: {_first_line(exc)}") from exc
    return module, _torchvision_shape(name, builder)


def _torchvision_shape(name: str, builder: Any) -> tuple[int, ...] | None:
    family = builder.__module__
    if any(f".{kind}" in family for kind in ("video", "optical_flow", "detection")):
        return None  # no single image-batch shape fits these
    if "inception_v3" in name:
        return (1, 3, 299, 299)
    return (1, 3, 224, 224)


# ------------------------------------------------------------------------------- timm


def timm_model(name: str, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """``timm.create_model(name, pretrained=False)`` and the input shape of its default config."""
    try:
        import timm
    except ModuleNotFoundError as exc:
        raise SpecError(f"timm:{name} needs timm, which is not installed: {TIMM_INSTALL}") from exc
    args = dict(kwargs)
    if "in_channels" in args:
        args["in_chans"] = args.pop("in_channels")
    if not timm.is_model(name):
        raise SpecError(f"unknown timm model {name!r}; see timm.list_models()")
    try:
        module = timm.create_model(name, pretrained=False, **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise SpecError(f"timm:{name} does not accept {kwargs}: {_first_line(exc)}") from exc
    size = tuple(getattr(module, "pretrained_cfg", {}).get("input_size") or (3, 224, 224))
    return module, (1, int(args.get("in_chans", size[0])), *size[1:])


# -------------------------------------------------------------------------- transformers


def _transformers() -> Any:
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise SpecError(f"hf: specs need transformers, which is not installed: {HF_INSTALL}") from exc
    return transformers


def hf_model(target: str, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, tuple[int, ...], torch.dtype, dict]:
    """The transformers model ``target`` (a config.json, or a folder with one) describes.

    The class is the config's first ``architectures`` entry (``AutoModel`` without one), with
    ``use_cache=False``. A folder's weights are loaded from its own files (a folder without any is
    an error); a config.json alone gives random weights. Returns the module, its example input shape and dtype, and the spec kwargs that
    rebuild it (the config itself, see the module docstring)."""
    tf = _transformers()
    args = dict(kwargs)
    config_json = args.pop("config_json", None)
    num_classes = args.pop("num_classes", None)
    if args:
        raise SpecError(f"hf:{target} does not accept {', '.join(args)}; the config.json sets the architecture")
    folder = None
    if config_json is not None:  # rebuilt from a saved file: its own config, its weights come from the file
        config = _config_from_json(tf, config_json, target)
    else:
        folder = target if os.path.isdir(target) else None
        path = os.path.join(target, "config.json") if folder else target
        if not os.path.isfile(path):
            raise SpecError(f"hf:{target}: no such config file {path}; give a config.json or a folder holding one")
        with open(path, encoding="utf-8") as f:
            try:
                config = _config_from_json(tf, f.read(), path)
            except json.JSONDecodeError as exc:
                raise SpecError(f"hf:{target}: {path} is not JSON: {exc}") from None
        if num_classes is not None:
            config.num_labels = num_classes
    config.use_cache = False  # a KV cache is state torch.export cannot return as a plain output
    cls = _model_class(tf, config, target)
    if getattr(config, "fxmeta_shapes", None) and cls is not tf.AutoModel:
        # a folder fxmeta wrote with per-layer widths (fxmeta.io.hf_folder): resized the way its
        # modeling_fxmeta.py resizes it, without running that file
        from ..pruning.module_sizes import resizing

        cls = resizing(cls)
    weights = folder is not None and any(os.path.isfile(os.path.join(folder, f)) for f in _WEIGHT_FILES)
    if folder is not None and not weights:
        raise SpecError(f"hf:{target} is a folder without weights (none of {', '.join(_WEIGHT_FILES)}); for random "
                        f"weights name its config file: hf:{os.path.join(target, 'config.json')}")
    try:
        if weights:
            module = cls.from_pretrained(folder, config=config, local_files_only=True)
        else:
            module = cls.from_config(config) if cls is tf.AutoModel else cls(config)
    except Exception as exc:  # noqa: BLE001 - any failure of the library on this config is a bad spec
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise SpecError(f"hf:{target}: its weights file needs a full unpickle, which can run code from it; "
                            "convert the folder to safetensors where you trust it (model.save_pretrained(folder))"
                            ) from None
        raise SpecError(f"hf:{target}: building {cls.__name__} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    shape, dtype = hf_input(config)
    return module, shape, dtype, {"config_json": config.to_json_string(use_diff=False)}


def _config_from_json(tf: Any, text: str, where: str) -> Any:
    data = json.loads(text)
    if not isinstance(data, dict) or "model_type" not in data:
        raise SpecError(f"{where} has no model_type; is it a transformers config.json?")
    try:
        config_class = tf.CONFIG_MAPPING[data["model_type"]]
    except KeyError:
        raise SpecError(f"{where}: model_type {data['model_type']!r} is not known to transformers "
                        f"{tf.__version__} (custom code is never run)") from None
    return config_class.from_dict(data)


def _model_class(tf: Any, config: Any, target: str) -> Any:
    names = getattr(config, "architectures", None) or []
    if not names:
        return tf.AutoModel
    cls = getattr(tf, names[0], None)
    if cls is None:
        raise SpecError(f"hf:{target}: transformers {tf.__version__} has no class {names[0]!r} (the config's "
                        "architectures entry)")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and hasattr(cls, "from_pretrained")):
        raise SpecError(f"hf:{target}: the config's architectures entry {names[0]!r} is not a transformers model "
                        "class; name one such as LlamaForCausalLM")
    return cls


def hf_input(config: Any) -> tuple[tuple[int, ...], torch.dtype]:
    """Images for vision configs, else token ids of the usual length."""
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None)
    if isinstance(size, int) and getattr(vision, "num_channels", None):
        return (1, int(vision.num_channels), size, size), torch.float32
    length = min(_DEFAULT_TOKENS, getattr(config, "max_position_embeddings", None) or _DEFAULT_TOKENS)
    return (1, int(length)), torch.int64
