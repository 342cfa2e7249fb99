"""Real TCP/UDP port reservations.

On Windows: the TCP/IP stack's runtime and persistent port reservations.
On Linux: the same guarantees built from holder sockets and
ip_local_reserved_ports.  See README.md and API.md.
"""

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
from ._persistent_api import create_persistent, delete_persistent, list_persistent, lookup_persistent
from ._records import PersistentReservation, PortReservationInstance, Protocol
from ._reservation import Reservation, bind, reserve

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
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
