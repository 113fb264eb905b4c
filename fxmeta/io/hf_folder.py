"""Hugging Face folders out: a pruned transformers model as a ``save_pretrained`` folder.

A prune gives a transformers model its own class back with smaller tensors
(``fxmeta.pruning.module_slimming``), but its config still describes the original widths.
:func:`save_hf_folder` writes a folder that transformers loads as the pruned model, in one of
two ways:

- **standard config**: when the widths are one per layer kind (every MLP as wide, every layer
  with the same head counts, the hidden width changed everywhere), the config's own fields
  (``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``;
  GPT-2's ``n_embd``, ``n_inner``, ``n_head`` ...) are set to them. Which field sets which
  tensor dimension is not written down per family: it is read off models built from perturbed
  configs on the meta device (:func:`field_dims`). Loads with ``AutoModelFor*.from_pretrained(DIR)``.
- **per-layer widths**, which no standard config of these families expresses: the config keeps
  its fields and gains ``fxmeta_shapes`` (every tensor whose shape differs) and an ``auto_map``
  to ``modeling_fxmeta.py``, written into the folder: the model's class, whose ``__init__`` ends by
  resizing those tensors (``fxmeta.pruning.module_sizes``, copied in whole) before the weights
  load. Loads with ``from_pretrained(DIR, trust_remote_code=True)``; fxmeta's own ``hf:DIR``
  applies the same resize itself and never runs the folder's code.

Every folder is written to a temp folder beside the output, loaded back the way a user loads it
and compared with the pruned model before it is renamed into place: a folder that would load
wrong is never left behind. :func:`uniform_ignore` is what ``--uniform`` prunes with: the
modules a uniform prune must keep whole so that a standard config expresses the result.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import FxmetaError, OutputExistsError, UnsupportedModelError
from ..pruning import module_sizes
from ..tracing import eval_mode
from .paths import Created, check_output, temp_path

# config fields that may hold a width fxmeta prunes (the names a config stores, see ``to_dict``)
WIDTH_FIELDS = ("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "ffn_dim", "d_ff",
                "num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "head_dim", "d_kv")
HIDDEN_FIELDS = ("hidden_size", "n_embd", "d_model")
HEAD_FIELDS = ("num_attention_heads", "n_head", "num_heads", "num_key_value_heads")
# fxmeta removes whole attention heads: the head size never changes
HEAD_SIZE_FIELDS = ("head_dim", "d_kv")
# what a folder that an hf: model came from holds besides the model (copied when save_pretrained wrote none)
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                "merges.txt", "vocab.*", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                "chat_template.jinja", "generation_config.json", "preprocessor_config.json")
MODULE_FILE = "modeling_fxmeta.py"

Dim = tuple[str, int]  # (tensor name, dim)


@dataclass
class HFFolder:
    """What :func:`save_hf_folder` wrote: ``remote_code`` tells whether loading it needs
    ``trust_remote_code=True`` (per-layer widths), ``auto_classes`` the classes that load it."""

    path: str
    remote_code: bool
    auto_classes: list[str]


# ------------------------------------------------------------------------ output paths


def wants_folder(out: str, model_spec: str) -> bool:
    """Whether ``--out`` names a Hugging Face folder: it ends with a path separator, or has no fxmeta /
    torch.export file suffix and is a folder or the model is an ``hf:`` model (a folder named like a
    file, ``dir.pt/``, is refused as a directory by the file output's own check)."""
    if out.endswith((os.sep, os.altsep or os.sep)):
        return True
    if out.endswith((".pt", ".pth", ".pt2")):
        return False
    return os.path.isdir(out) or model_spec.startswith("hf:")


def check_folder_output(folder: str, *, inputs: Sequence[str] = (), force: bool = False,
                        what: str = "--out") -> str:
    """Refuse a folder output before any work: one of the inputs, a file, a folder that holds files
    (without ``force``, which replaces it), or a place that cannot be written."""
    inputs = [*inputs, *(spec[3:] for spec in inputs if spec.startswith("hf:"))]
    check_output(folder, inputs=inputs, force=force, kind="dir", what=what)
    if os.path.isdir(folder) and os.listdir(folder) and not force:
        raise OutputExistsError(f"{what} {folder} is a folder that holds files; pass --force to replace it (its "
                                "files are deleted), or give a new or empty folder")
    return folder


def check_hf_model(model: Any, what: str = "the pruned model") -> None:
    """A Hugging Face folder holds a transformers model of its own class, nothing else."""
    if not (isinstance(model, nn.Module) and hasattr(model, "save_pretrained") and hasattr(model, "config")
            and hasattr(model.config, "to_dict")):
        raise UnsupportedModelError(
            f"{what} ({type(model).__name__}) is not a transformers model, so it cannot be written as a Hugging "
            "Face folder; give --out a .pt file (an fxmeta model file) instead")


# ------------------------------------------------------------------- config fields


def _meta_model(cls: type, config: Any) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    named = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    return {name: tuple(t.shape) for name, t in named.items()}


def _fields(config: Any) -> dict[str, int | None]:
    data = config.to_dict()
    return {f: data[f] for f in WIDTH_FIELDS if f in data and (data[f] is None or type(data[f]) is int)}


def _with(config: Any, **values: Any) -> Any:
    new = copy.deepcopy(config)
    for name, value in values.items():
        setattr(new, name, value)
    return new


def plain(model: nn.Module) -> tuple[type, Any]:
    """The transformers class and config of ``model`` without the per-layer widths of a folder fxmeta
    wrote earlier (a model loaded from one is that class resized: ``module_sizes.resizing``)."""
    config = copy.deepcopy(model.config)
    for key in ("fxmeta_shapes", "auto_map"):
        if hasattr(config, key):
            delattr(config, key)
    cls = getattr(type(model), "fxmeta_base", type(model))
    return cls, _pinned(cls, config)


def _pinned(cls: type, config: Any) -> Any:
    """``config`` with the widths it derives written out where its model reads them: a width field left
    None (GPT-2's ``n_inner``, 4 x ``n_embd``) set to the width it builds, and ``head_dim`` (hidden /
    heads) where the config has none but the model reads one (Qwen2): the hidden width, the MLP width
    and the head count then change independently."""
    base = _shapes(_meta_model(cls, config))
    for name, value in _fields(config).items():
        if value is None:
            with contextlib.suppress(Exception):  # a family that refuses the probe values: left as it is
                lo, hi = (_shapes(_meta_model(cls, _with(config, **{name: v}))) for v in (16, 32))
                widths = {16 + 16 * (base[t][d] - lo[t][d]) / (hi[t][d] - lo[t][d])
                          for t in base for d in range(len(base[t])) if lo[t][d] != hi[t][d]}
                if len(widths) == 1 and (width := widths.pop()) == int(width) and width >= 1:
                    candidate = _with(config, **{name: int(width)})
                    config = candidate if _shapes(_meta_model(cls, candidate)) == base else config
    fields = _fields(config)
    hidden = next((f for f in HIDDEN_FIELDS if fields.get(f)), None)
    heads = next((f for f in HEAD_FIELDS if fields.get(f)), None)
    if "head_dim" in fields or not (hidden and heads) or fields[hidden] % fields[heads]:
        return config
    pinned = _with(config, head_dim=fields[hidden] // fields[heads])
    wider = {hidden: 2 * fields[hidden]}
    try:
        reads = _shapes(_meta_model(cls, _with(pinned, **wider))) != _shapes(_meta_model(cls, _with(config, **wider)))
    except Exception:  # noqa: BLE001 - the family refuses the doubled width: leave the config alone
        return config
    return pinned if reads else config


def field_dims(cls: type, config: Any) -> dict[str, dict[Dim, tuple[float, float]]]:
    """For each width field of ``config``: the tensor dims of ``cls(config)`` it sets, each as ``(a, b)``
    with size = a * field + b, read off two models built on the meta device with the field at two values."""
    base = _shapes(_meta_model(cls, config))
    out: dict[str, dict[Dim, tuple[float, float]]] = {}
    for name, value in _fields(config).items():
        probes = (value, 2 * value) if value else (16, 32)
        try:
            built = [base if v == value else _shapes(_meta_model(cls, _with(config, **{name: v}))) for v in probes]
        except Exception:  # noqa: BLE001 - a value the family refuses: the field is left alone
            continue
        if any(set(b) != set(base) for b in built):
            continue
        dims: dict[Dim, tuple[float, float]] = {}
        for tensor, shape in base.items():
            (s1, s2) = (built[0][tensor], built[1][tensor])
            for d in range(len(shape)):
                if s1[d] != s2[d]:
                    a = (s2[d] - s1[d]) / (probes[1] - probes[0])
                    dims[(tensor, d)] = (a, s1[d] - a * probes[0])
        out[name] = dims
    return out


def _solve(cls: type, config: Any, dims: dict[str, dict[Dim, tuple[float, float]]],
           shapes: dict[str, tuple[int, ...]]) -> Any:
    """A copy of ``config`` whose width fields build exactly ``shapes`` (and that the config class accepts),
    or None. Each field is read off the dims only it sets; the head size stays (whole heads are removed),
    and a head count that sets no shape (the head size is hidden / heads) keeps the head size."""
    fields = _fields(config)
    values: dict[str, int] = {}
    for name, sets in dims.items():
        if name in HEAD_SIZE_FIELDS:
            continue
        others = {d for other, od in dims.items() if other != name and other not in HEAD_SIZE_FIELDS for d in od}
        solved = {(shapes[t][d] - b) / a for (t, d), (a, b) in sets.items() if (t, d) not in others}
        if len(solved) > 1 or any(v != int(v) or v < 1 for v in solved):
            return None
        if solved:
            values[name] = int(solved.pop())
    hidden = next((f for f in HIDDEN_FIELDS if fields.get(f)), None)
    for name in HEAD_FIELDS:
        if fields.get(name) and not dims.get(name) and hidden in values:
            heads = values[hidden] * fields[name] / fields[hidden]
            if heads != int(heads):
                return None
            values[name] = int(heads)
    new = _with(config, **{k: v for k, v in values.items() if v != fields.get(k)})
    try:
        if hasattr(new, "validate"):
            new.validate()  # e.g. LlamaConfig: hidden_size a multiple of num_attention_heads
        built = _shapes(_meta_model(cls, new))
    except Exception:  # noqa: BLE001 - the family refuses these values together
        return None
    return new if built == shapes else None


def standard_config(model: nn.Module) -> Any:
    """A config of ``model``'s class whose width fields build exactly its tensors' shapes, or None when
    none does (widths that differ per layer, or that the family ties together)."""
    cls, config = plain(model)
    return _standard(cls, config, _shapes(model))


def _standard(cls: type, config: Any, shapes: dict[str, tuple[int, ...]]) -> Any:
    if _shapes(_meta_model(cls, config)) == shapes:
        return config
    return _solve(cls, config, field_dims(cls, config), shapes)


# --------------------------------------------------------------------------- uniform


def _kind(group: Any) -> tuple:
    """Groups of one kind: the same slices in different layers (layer numbers left out)."""
    return group.units, tuple(sorted({(re.sub(r"\.\d+(?=\.)", ".#", n), d) for n, d, _ in group.slices}))


def uniform_ignore(model: nn.Module, example_input: Any, ignore: Sequence[str] = ()) -> tuple[str, ...]:
    """The modules a uniform prune (``allocation="uniform-tied"``) of ``model`` must keep whole for a standard
    config to express the result (see :func:`save_hf_folder`), after ``ignore``, the user's own.

    Each kind of group (the MLP of every layer, the heads of every layer, the hidden width ...) is
    tried on the config, most units first, together with the kinds kept so far: one unit and half of
    the units removed from every group of the kind must give shapes a valid config builds. GPT-2's and
    BERT's head size is hidden / heads, so their hidden width and heads stay; LlamaConfig wants the
    hidden size a multiple of the head count, so Llama's hidden width stays. Raises
    UnsupportedModelError when no width can be pruned that way."""
    from ..analysis.channels import analyze

    check_hf_model(model, "the model")
    cls, config = plain(model)
    dims = field_dims(cls, config)
    base = _shapes(model)
    aliases: dict[int, list[str]] = {}  # tied names: a prune cuts every name of a tensor
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(tensor), []).append(name)
    alias = {name: names for names in aliases.values() for name in names}
    groups = [g for g in analyze(model, example_input, ignore=tuple(ignore)).groups if g.prunable]
    kinds: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        kinds.setdefault(_kind(g), []).append(i)

    def expressible(members: list[int], half: bool) -> bool:
        shapes = {name: list(shape) for name, shape in base.items()}
        for i in members:
            n = max(1, groups[i].units // 2) if half else 1
            for name, d, index in (*groups[i].slices, *groups[i].buffer_slices):
                for other in alias.get(name, [name]):
                    shapes[other][d] -= n * index.shape[1]
        return _solve(cls, config, dims, {k: tuple(v) for k, v in shapes.items()}) is not None

    kept: list[int] = []
    for key in sorted(kinds, key=lambda k: (-sum(groups[i].units for i in kinds[k]), repr(k))):
        trial = kept + kinds[key]
        if expressible(trial, half=False) and expressible(trial, half=True):
            kept = trial
    frozen = set(range(len(groups))) - set(kept)
    if not kept:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no width of it can be pruned so that its config expresses the result (one "
            "width per layer kind); prune without --uniform, which writes per-layer widths")
    slices = [{(n, d) for n, d, _ in (*g.slices, *g.buffer_slices)} for g in groups]
    return tuple(ignore) + _modules_freezing(groups, slices, frozen)


def _modules_freezing(groups: list, slices: list[set[Dim]], frozen: set[int]) -> tuple[str, ...]:
    """Modules whose tensors only frozen groups touch, enough of them to freeze every frozen group."""
    touched: dict[str, set[int]] = {}
    for i, s in enumerate(slices):
        for tensor, _ in s:
            touched.setdefault(tensor.rpartition(".")[0], set()).add(i)
    usable = {m: gs for m, gs in touched.items() if m and gs <= frozen}
    chosen: list[str] = []
    todo = set(frozen)
    while todo:
        best = max(sorted(usable), key=lambda m: len(usable[m] & todo), default=None)
        if best is None or not usable[best] & todo:
            names = ", ".join(groups[i].describe() for i in sorted(todo)[:2])
            raise UnsupportedModelError(f"--uniform cannot keep {names} whole without keeping other widths too; "
                                        "prune without --uniform")
        chosen.append(best)
        todo -= usable[best]
    return tuple(chosen)


# ---------------------------------------------------------------------------- saving


def save_hf_folder(model: nn.Module, folder: str | os.PathLike, *, source: str | None = None, force: bool = False,
                   uniform: bool = False) -> HFFolder:
    """Write the pruned transformers ``model`` as a ``save_pretrained`` folder (safetensors) that
    ``from_pretrained`` loads with ``model``'s logits; see the module docstring for the two kinds.

    ``source``: the folder the model came from, whose tokenizer and generation files are copied.
    ``uniform``: the widths must be one per layer kind (a standard config), else FxmetaError.
    The folder is verified by loading it back before it is moved into place; an existing folder
    that holds files is replaced only with ``force``."""
    check_hf_model(model)
    folder = check_folder_output(os.fspath(folder), inputs=[source] if source else (), force=force)
    cls, own = plain(model)
    autos = auto_classes(model)
    if not autos:
        raise UnsupportedModelError(f"no transformers Auto class loads {cls.__name__}; write a .pt file instead")
    config = _standard(cls, own, _shapes(model))
    if config is None and uniform:
        raise FxmetaError(f"the widths of the pruned {cls.__name__} differ per layer (or in a way its config does "
                          "not express), so no standard config describes them: prune it uniformly "
                          "(allocation='uniform-tied', ignore=uniform_ignore(model, x); --uniform), or write per-layer "
                          "widths")
    if config is None:
        fresh = _shapes(_meta_model(cls, own))
        config = _with(own, fxmeta_shapes={name: list(shape) for name, shape in _shapes(model).items()
                                           if fresh.get(name) != shape},
                       auto_map={auto: f"{MODULE_FILE[:-3]}.Fxmeta{cls.__name__}" for auto in autos})
    _restore_use_cache(config, source)
    remote = hasattr(config, "fxmeta_shapes")
    final = os.path.abspath(folder)
    created = Created()
    created.folder(os.path.dirname(final))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = temp_path(final)
    os.mkdir(tmp)
    try:
        _write(model, cls, config, tmp, source)
        _verify(model, tmp, autos[0], remote)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        created.remove()
        raise
    return HFFolder(folder, remote, autos)


def auto_classes(model: nn.Module) -> list[str]:
    """The transformers Auto classes that build ``type(model)`` for its config, most specific first."""
    import transformers as tf

    cls, config = plain(model)
    found = []
    for name in sorted((n for n in dir(tf) if n.startswith("AutoModel")), key=lambda n: (n == "AutoModel", n)):
        with contextlib.suppress(Exception):
            mapping = getattr(tf, name)._model_mapping
            if type(config) in mapping and mapping[type(config)] is cls:
                found.append(name)
    return found


def _restore_use_cache(config: Any, source: str | None) -> None:
    """fxmeta builds hf: models without a KV cache (torch.export cannot return one); the folder gets
    the source's setting back, else the config class's default, so that generate() uses the cache."""
    if not hasattr(config, "use_cache"):
        return
    path = os.path.join(source, "config.json") if source and os.path.isdir(source) else None
    with contextlib.suppress(OSError, ValueError, KeyError):
        if path:
            with open(path, encoding="utf-8") as f:
                config.use_cache = json.load(f)["use_cache"]
            return
    with contextlib.suppress(Exception):
        config.use_cache = type(config)().use_cache


def _write(model: nn.Module, cls: type, config: Any, tmp: str, source: str | None) -> None:
    own = model.config
    model.config = config
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        model.config = own
    if hasattr(config, "fxmeta_shapes"):
        with open(os.path.join(tmp, MODULE_FILE), "w", encoding="utf-8") as f:
            f.write(module_source(cls))
    if source and os.path.isdir(source):
        for pattern in COPIED_FILES:
            for path in sorted(glob.glob(os.path.join(glob.escape(source), pattern))):
                target = os.path.join(tmp, os.path.basename(path))
                if os.path.isfile(path) and not os.path.exists(target):
                    shutil.copyfile(path, target)


def module_source(cls: type) -> str:
    """``modeling_fxmeta.py``: ``fxmeta.pruning.module_sizes`` (it imports torch only) and the resizing class."""
    return (f'# Written by fxmeta: {cls.__name__} with the per-layer widths of config.fxmeta_shapes.\n'
            + inspect.getsource(module_sizes)
            + f"\n\nfrom transformers import {cls.__name__}  # noqa: E402\n\n"
            + f"Fxmeta{cls.__name__} = resizing({cls.__name__})\n")


def _verify(model: nn.Module, folder: str, auto: str, remote: bool) -> None:
    """Load ``folder`` the way a user does and compare its logits with ``model``'s."""
    import transformers as tf

    x = _check_input(model)
    like = next(model.parameters())
    try:
        loaded = getattr(tf, auto).from_pretrained(folder, local_files_only=True, trust_remote_code=remote)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises: the folder does not load
        raise FxmetaError(f"the Hugging Face folder fxmeta wrote does not load ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); nothing was written"
                          ) from exc
    loaded.to(like.device, like.dtype)
    with eval_mode(model, loaded), torch.no_grad():
        want, got = _logits(model(x)), _logits(loaded(x))
    if want.shape != got.shape or not torch.allclose(want.float(), got.float(), atol=1e-5, rtol=1e-4):
        diff = (want.float() - got.float()).abs().max().item() if want.shape == got.shape else float("nan")
        raise FxmetaError(f"the Hugging Face folder fxmeta wrote loads as a different model (logits differ by up to "
                          f"{diff:.3g}); nothing was written")


def _check_input(model: nn.Module) -> torch.Tensor:
    """Two short token sequences (or two images) on the model's device."""
    from .inputs import example_input
    from .libraries import hf_input

    like = next(model.parameters())
    shape, dtype = hf_input(model.config)
    shape = (2, *shape[1:]) if dtype.is_floating_point else (2, min(shape[1], 8))
    x = example_input(shape, dtype, model)
    return x.to(like.device, like.dtype if dtype.is_floating_point else dtype)


def _logits(out: Any) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, torch.Tensor):
        return out
    return next(t for t in (out.values() if hasattr(out, "values") else out) if isinstance(t, torch.Tensor))


def _move_into_place(tmp: str, final: str) -> None:
    if os.path.isdir(final) and not os.listdir(final):
        os.rmdir(final)
    if not os.path.exists(final):
        os.replace(tmp, final)
        return
    old = temp_path(final)  # --force: the old folder goes aside, the new one in, then the old one away
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
