"""The per-OS engine, chosen once (its interface: ``Engine`` in _interfaces.py).

_posix.py serves Linux and macOS, _windows.py Windows; the public modules
call ``engine.*`` after checking arguments.
"""

from __future__ import annotations

import sys
from typing import cast

from ._backend import calls, refused
from ._interfaces import Engine

if sys.platform == "win32":
    from . import _windows as _impl
else:
    from . import _posix as _impl

# A module as a Protocol instance: mypy checks every member's signature here.
engine: Engine = _impl
if refused is not None:  # PORTRESERVE_BACKEND names no backend: every call refuses
    engine = cast(Engine, calls)

__all__ = ["engine"]
