"""Real TCP/UDP port reservations.

On Windows: the TCP/IP stack's runtime and persistent port reservations.
On Linux: the same guarantees built from holder sockets and
ip_local_reserved_ports.  See README.md and docs/API.md.
"""

from types import ModuleType
from typing import TYPE_CHECKING

from ._backend import name as backend
from ._errors import (
    AccessDenied,
    InvalidParameter,
    NotSupported,
    OperationAborted,
    PortReservationError,
    ReservationConflict,
    ReservationExhausted,
    ReservationNotFound,
)
from ._overlapped import Completion, CompletionPort
from ._persistent import create_persistent, delete_persistent, list_persistent, lookup_persistent
from ._records import PersistentReservation, PortReservationInstance, Protocol
from ._reservation import Reservation, bind, reserve

# The one place the version is written: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), and so does tests/windows/pack_wheel.py.
__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Completion",
    "CompletionPort",
    "InvalidParameter",
    "NotSupported",
    "OperationAborted",
    "PersistentReservation",
    "PortReservationError",
    "PortReservationInstance",
    "Protocol",
    "Reservation",
    "ReservationConflict",
    "ReservationExhausted",
    "ReservationNotFound",
    "backend",
    "bind",
    "create_persistent",
    "delete_persistent",
    "list_persistent",
    "lookup_persistent",
    "reserve",
]


if TYPE_CHECKING:
    # Type checkers see aio as a plain submodule and no __getattr__, so a
    # misspelt name (portreserve.reserv) is an error for them too.
    from . import aio as aio
else:
    def __getattr__(name: str) -> ModuleType:
        # portreserve.aio without importing asyncio for everyone who does not use it.
        if name == "aio":
            import importlib
            return importlib.import_module("portreserve.aio")
        raise AttributeError(f"module 'portreserve' has no attribute {name!r}")
