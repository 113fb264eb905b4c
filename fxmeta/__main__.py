"""``python -m fxmeta``: the ``fxmeta`` command, also as ``torchrun ... -m fxmeta transform ...``."""
import sys

from .cli import main

sys.exit(main())
