"""fxmeta's stages as torch.fx passes (PassBase subclasses returning PassResult).

State travels in ``graph_module.meta``: ``"fxmeta.example_input"`` (set it, or pass
``example_input=`` to LowerPass), ``"fxmeta.ir"`` (the WeightGraph, set by LowerPass,
rewritten by MetanetPass, consumed by RaisePass) and ``"fxmeta.plan"`` (set by
RemoveChannelsPass). Compose them with ``torch.fx.passes.infra.pass_manager.PassManager``
and run them before ``torch.compile``: compile backends take parameters as graph inputs
and cannot change their shapes.
"""
from .lower import LowerPass, RaisePass

__all__ = ["LowerPass", "RaisePass"]

try:  # stages that live in their own modules
    from .metanet import MetanetPass  # noqa: F401

    __all__.append("MetanetPass")
except ImportError:  # pragma: no cover - optional while a stage is absent
    pass
try:
    from .remove_channels import RemoveChannelsPass  # noqa: F401

    __all__.append("RemoveChannelsPass")
except ImportError:  # pragma: no cover
    pass
