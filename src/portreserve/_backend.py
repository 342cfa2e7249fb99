"""Chooses, once, the layer that makes the system calls.

``cffi`` is our compiled shim (csrc/ through CFFI); ``ctypes`` does the same
calls with no compiled code of ours.  Both expose the same functions for the
platform (``PosixCalls``/``WindowsCalls`` of _interfaces.py): all above this
module is shared.  PORTRESERVE_BACKEND picks one; without it we take cffi and
fall back to ctypes, with a warning, when the compiled module is missing.

A value that names no backend does not break ``import portreserve``: as for
any bad input (docs/API.md section 3), every call then raises InvalidParameter
naming the value, and the command line says so in one line (exit status 2).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from ._errors import ERROR_INVALID_PARAMETER, InvalidParameter
from ._interfaces import PosixCalls, WindowsCalls

_OS = "windows" if sys.platform == "win32" else "posix"


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"portreserve._{_OS}_{name}")


class _Refusal:
    """Stands in for the layer, and for the engine, when no backend is usable."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, call: str) -> Any:
        def refuse(*args: object, **kwargs: object) -> Any:
            raise InvalidParameter(f"{call}: {self.message}", winerror=ERROR_INVALID_PARAMETER)
        return refuse


def _choose() -> tuple[str, ModuleType | _Refusal]:
    raw = os.environ.get("PORTRESERVE_BACKEND", "")
    wanted = raw.strip().lower()
    if wanted not in ("", "cffi", "ctypes"):
        return "", _Refusal(f"PORTRESERVE_BACKEND={raw!r} names no backend "
                            f"(use 'cffi' or 'ctypes')")
    if wanted:
        return wanted, _load(wanted)
    try:
        return "cffi", _load("cffi")
    except ImportError as exc:
        warnings.warn(f"portreserve: compiled module unavailable ({exc}); using ctypes",
                      RuntimeWarning, stacklevel=3)
        return "ctypes", _load("ctypes")


name, _module = _choose()
# The message when PORTRESERVE_BACKEND names no backend, else None.
refused: str | None = _module.message if isinstance(_module, _Refusal) else None
# The module is picked by name, so mypy cannot follow it: the cast says which
# interface it has, and the TYPE_CHECKING block below checks both layers of
# the platform against that interface.
if sys.platform == "win32":
    calls = cast(WindowsCalls, _module)
else:
    calls = cast(PosixCalls, _module)

if TYPE_CHECKING:
    if sys.platform == "win32":
        from . import _windows_cffi, _windows_ctypes
        _layers: tuple[WindowsCalls, ...] = (_windows_cffi, _windows_ctypes)
    else:
        from . import _posix_cffi, _posix_ctypes
        _layers: tuple[PosixCalls, ...] = (_posix_cffi, _posix_ctypes)
