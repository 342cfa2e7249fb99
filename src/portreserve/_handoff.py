"""Reservation.handoff(): code in this process that binds a reserved number
itself gets the port through the reservation (docs/API.md section 1b).

While at least one hand-off is active, ``socket.socket.bind`` is replaced by
a function that looks the port up among the active reservations: a bind of
one of their ports goes to ``Block.take`` (no window), anything else to the
original method.  Only binds made through Python's ``socket.socket`` are
seen; README lists what that leaves out.
"""

from __future__ import annotations

import socket
import threading

from typing import TYPE_CHECKING, Any

from . import _args
from ._errors import ReservationExhausted

if TYPE_CHECKING:
    from ._interfaces import Block
    from ._reservation import Reservation

_lock = threading.Lock()
_active: dict[int, list[Any]] = {}  # id(block) -> [block, times entered]
_ports: dict[tuple[int, int], Block] = {}  # (socket type, port) -> block
_original = socket.socket.bind
# A SO_REUSEADDR the socket has is the engine's business (Block.take): on
# Linux and macOS it is off from the bind until a TCP socket listens.

# Set while this thread is inside Block.take: the engine's own binds (it may
# bind helper sockets on the port) must reach the system unchanged.
_inside = threading.local()


def _bind(self: socket.socket, address: Any) -> None:
    block = None
    if getattr(_inside, "take", False):
        return _original(self, address)
    if (self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
            and len(address) >= 2 and isinstance(address[1], int) and not any(address[2:])):
        block = _ports.get((self.type, address[1]))
    if block is not None and not block.closed:
        _inside.take = True
        try:
            block.take(self, _args.host("bind", address[0]), port=address[1])
            return None
        except ReservationExhausted:
            pass  # already given to an open socket: bind as usual
        finally:
            _inside.take = False
    return _original(self, address)


class Handoff:
    """Returned by Reservation.handoff()."""

    def __init__(self, reservation: Reservation) -> None:
        self._reservation = reservation

    def __enter__(self) -> Reservation:
        block = self._reservation._block
        with _lock:
            if not _active:
                socket.socket.bind = _bind  # type: ignore[method-assign,assignment]
            entry = _active.setdefault(id(block), [block, 0])
            entry[1] += 1
            for port in range(block.start, block.start + block.count):
                _ports[(block.protocol.socket_type, port)] = block
        return self._reservation

    def __exit__(self, *exc_info: object) -> None:
        block = self._reservation._block
        with _lock:
            entry = _active.get(id(block))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _active[id(block)]
                for port in range(block.start, block.start + block.count):
                    _ports.pop((block.protocol.socket_type, port), None)
            if not _active:
                socket.socket.bind = _original  # type: ignore[method-assign]
