"""``python -m fxmeta.cli``: the same command as ``python -m fxmeta``."""
import sys

from .app import main

sys.exit(main())
