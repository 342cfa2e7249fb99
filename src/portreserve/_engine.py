"""The per-OS engine, chosen once (see /work notes: same interface on every OS)."""

import sys

if sys.platform == "win32":
    from . import _windows as engine
else:
    from . import _linux as engine

__all__ = ["engine"]
