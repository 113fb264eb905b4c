"""The graph metanetwork: the model, its block kernels, scatter backends, buffer pool and files."""
from .model import FORMAT, Metanet, MetanetConfig, kinds_of, load_metanet, save_metanet

__all__ = ["FORMAT", "Metanet", "MetanetConfig", "kinds_of", "load_metanet", "save_metanet"]
