"""Registry of the ``fxmeta`` subcommands beyond ``dump`` (one module per command family)."""
from __future__ import annotations

import argparse
from typing import Callable

from .transform import register_all

REGISTER: list[Callable[[argparse._SubParsersAction], None]] = [*register_all]
