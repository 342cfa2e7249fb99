"""The per-OS engine, chosen once (see /work notes: same interface on every OS)."""

import sys

from ._backend import calls, refused

if refused is not None:
    engine = calls  # PORTRESERVE_BACKEND names no backend: every call refuses
elif sys.platform == "win32":
    from . import _windows as engine
else:
    from . import _linux as engine

__all__ = ["engine"]
