"""The ``fxmeta`` command line: one module per command, shared helpers in ``common``."""
from .app import build_parser, main

__all__ = ["build_parser", "main"]
