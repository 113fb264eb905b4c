"""``--out DIR/`` and ``--uniform`` of ``fxmeta prune`` and ``fxmeta transform``: a pruned transformers
model written as a Hugging Face ``save_pretrained`` folder (``fxmeta.io.hf_folder``).

``--out`` names a folder when it ends with a path separator or is a folder, or when the model is an
``hf:`` model and the path has no ``.pt`` / ``.pth`` / ``.pt2`` suffix. The path is checked with the
other outputs, before anything is loaded; a model that is not a transformers model, and ``--uniform``'s
plan, are checked right after loading, before the prune.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from ..errors import SpecError


def add_hf_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Hugging Face folder output (--out DIR/)")
    g.add_argument("--uniform", action="store_true",
                   help="prune one width per layer kind (allocation uniform-tied), keeping whole the widths the "
                        "model's config cannot express (GPT-2 / BERT: hidden width and heads; Llama: hidden "
                        "width), so that the folder loads with plain from_pretrained(DIR); without it, "
                        "per-layer widths load with from_pretrained(DIR, trust_remote_code=True)")


def writes_folder(args: argparse.Namespace) -> bool:
    from ..io.hf_folder import wants_folder

    return wants_folder(args.out, args.model)


def check_folder_output(args: argparse.Namespace, inputs: Sequence[str]) -> None:
    """Before any work: the folder ``--out`` names, and ``--uniform`` against ``--allocation``."""
    if getattr(args, "uniform", False) and getattr(args, "allocation", None) not in (None, "uniform", "uniform-tied"):
        raise SpecError(f"--uniform prunes with allocation uniform-tied; drop --allocation {args.allocation}")
    if writes_folder(args):
        from ..io.hf_folder import check_folder_output as check

        check(args.out, inputs=inputs, force=args.force)


def prune_spec(args: argparse.Namespace, module: Any, x: Any, spec: Any) -> Any:
    """After loading, before the prune: a folder output needs a transformers model; ``--uniform`` makes
    ``spec`` a uniform prune that keeps whole what the config cannot express."""
    from ..io.hf_folder import check_hf_model, uniform_ignore

    if writes_folder(args):
        check_hf_model(module, args.model)
    if not getattr(args, "uniform", False):
        return spec
    if not hasattr(getattr(module, "config", None), "to_dict"):
        raise SpecError(f"--uniform keeps the widths a transformers config expresses; {args.model} is not a "
                        "transformers model (prune it without --uniform)")
    return spec.with_(allocation="uniform-tied", ignore=uniform_ignore(module, x, spec.ignore))


def source_folder(model_spec: str) -> str | None:
    """The folder an ``hf:FOLDER`` model came from (its tokenizer files are copied)."""
    path = model_spec[3:].split("@", 1)[0] if model_spec.startswith("hf:") else ""  # hf:FOLDER@weights.pt too
    return path if path and os.path.isdir(path) else None


def save_folder(args: argparse.Namespace, module: Any) -> list[str]:
    """Write the folder; returns notes for the report."""
    from ..io.hf_folder import save_hf_folder

    written = save_hf_folder(module, args.out, source=source_folder(args.model), force=args.force,
                             uniform=getattr(args, "uniform", False))
    load = f"{written.auto_classes[0]}.from_pretrained({args.out!r}"
    if not written.remote_code:
        return [f"the folder loads with {load})"]
    return [f"the widths differ per layer: load the folder with {load}, trust_remote_code=True) (its "
            f"modeling_fxmeta.py resizes the model's own class) or fxmeta's hf:{args.out}; --uniform prunes "
            "to widths that plain from_pretrained loads"]
