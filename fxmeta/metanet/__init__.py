"""The graph metanetwork: the model, its block kernels, scatter backends, buffer pool, files,
and ``apply(metanet, model, x)`` (lower, rewrite, raise)."""
from .files import load_metanet, load_metanet_file, save_metanet
from .model import FORMAT, Metanet, MetanetConfig, kinds_of, learned_columns
from .rewriting import apply, rewrite
from .scatter import has_torch_scatter, scatter_stats

__all__ = ["FORMAT", "Metanet", "MetanetConfig", "apply", "has_torch_scatter", "kinds_of", "learned_columns",
           "load_metanet", "load_metanet_file", "rewrite", "save_metanet", "scatter_stats"]
