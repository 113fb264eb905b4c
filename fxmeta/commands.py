"""Registry of the ``fxmeta`` subcommands beyond ``dump`` (one module per command family)."""
from __future__ import annotations

import argparse
from typing import Callable

REGISTER: list[Callable[[argparse._SubParsersAction], None]] = []
from .cmd_transform import register_all; REGISTER.extend(register_all)  # noqa: E402,E702
