"""The sizes a module stores besides its tensors, and a model's tensors resized by name.

This file imports torch only: ``fxmeta.io.hf_folder`` copies its source into every Hugging Face
folder whose widths differ per layer (as ``modeling_fxmeta.py``, which
``from_pretrained(..., trust_remote_code=True)`` runs), and fxmeta's own loader and
``fxmeta.pruning.module_slimming`` use it from here: a folder is resized exactly as the pruned
model was slimmed.
"""
from __future__ import annotations

import torch
from torch import nn

# per module type: attribute -> (parameter, dim) whose size it records
SIZES: dict[type, dict[str, tuple[str, int]]] = {
    nn.Linear: {"out_features": ("weight", 0), "in_features": ("weight", 1)},
    nn.Embedding: {"num_embeddings": ("weight", 0), "embedding_dim": ("weight", 1)},
    nn.Conv1d: {"out_channels": ("weight", 0)},
    nn.Conv2d: {"out_channels": ("weight", 0)},
    nn.Conv3d: {"out_channels": ("weight", 0)},
}
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm")
                                                                      else ()))


def update_sizes(module: nn.Module) -> None:
    """Set the size attributes of ``module`` (``in_features``, ``normalized_shape`` ...) from its tensors."""
    for kind, sizes in SIZES.items():
        if isinstance(module, kind):
            for attr, (param, dim) in sizes.items():
                setattr(module, attr, getattr(module, param).shape[dim])
    conv = getattr(module, "weight", None)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and conv is not None:
        module.in_channels = conv.shape[1] * module.groups
    if isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
        n = module.weight.shape[0]
        if isinstance(module, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm)):
            module.normalized_shape = (n, *tuple(module.normalized_shape)[1:])
        elif isinstance(module, nn.GroupNorm):
            module.num_channels = n
        else:
            module.num_features = n
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 layer: weight (in, out)
        module.nf = module.weight.shape[1]
    attn = getattr(module, "c_attn", None)
    if hasattr(module, "split_size") and type(attn).__name__ == "Conv1D" and not getattr(module, "is_cross_attention",
                                                                                          False):
        module.split_size = attn.weight.shape[1] // 3  # GPT-2 attention splits c_attn's q | k | v by this width


def resize(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give the named parameters and buffers of ``model`` these (smaller) shapes and update the size
    attributes of every module. Each new tensor is the leading block of the old one (same dtype, device
    and initialisation, for weights loaded afterwards or a model used as built); tied names stay one tensor."""
    new: dict[int, torch.Tensor] = {}  # old tensor id -> its replacement
    old_tensors = []  # kept alive, so that no new tensor takes an old one's id
    for name, shape in shapes.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        old = getattr(owner, attr)
        old_tensors.append(old)
        if id(old) not in new:
            tensor = old.detach()[tuple(slice(0, n) for n in shape)].clone()
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: cannot resize {tuple(old.shape)} to {tuple(shape)}, which is not smaller")
            new[id(old)] = nn.Parameter(tensor, requires_grad=old.requires_grad) if isinstance(
                old, nn.Parameter) else tensor
        if attr in owner._buffers:
            owner._buffers[attr] = new[id(old)]
        else:
            setattr(owner, attr, new[id(old)])
    for module in model.modules():
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None and id(tensor) in new:  # another name of a resized tensor (tied)
                (module._parameters if attr in module._parameters else module._buffers)[attr] = new[id(tensor)]
        update_sizes(module)


def resizing(base: type) -> type:
    """``base`` (a transformers model class) whose ``__init__`` ends by resizing the tensors that
    ``config.fxmeta_shapes`` lists, so that ``from_pretrained`` loads a pruned folder's weights."""

    class Resized(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            resize(self, getattr(config, "fxmeta_shapes", None) or {})

    Resized.__name__ = Resized.__qualname__ = f"Fxmeta{base.__name__}"
    Resized.fxmeta_base = base
    return Resized
