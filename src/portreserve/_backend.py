"""Chooses, once, the layer that makes the system calls.

``cffi`` is our compiled shim (csrc/ through CFFI); ``ctypes`` does the same
calls with no compiled code of ours.  Both expose the same functions for the
platform (see _linux_cffi.py for the Linux set), so everything above this
module is shared.  PORTRESERVE_BACKEND picks one; without it we take cffi and
fall back to ctypes, with a warning, when the compiled module is missing.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

_OS = "windows" if sys.platform == "win32" else "linux"


def _load(name: str):
    return importlib.import_module(f"portreserve._{_OS}_{name}")


def _choose():
    wanted = os.environ.get("PORTRESERVE_BACKEND", "").strip().lower()
    if wanted not in ("", "cffi", "ctypes"):
        raise ImportError(f"PORTRESERVE_BACKEND={wanted!r}: use 'cffi' or 'ctypes'")
    if wanted:
        return wanted, _load(wanted)
    try:
        return "cffi", _load("cffi")
    except ImportError as exc:
        warnings.warn(f"portreserve: compiled module unavailable ({exc}); using ctypes",
                      RuntimeWarning, stacklevel=3)
        return "ctypes", _load("ctypes")


name, calls = _choose()
