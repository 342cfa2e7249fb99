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
import weakref

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
_original_listen = socket.socket.listen
# TCP sockets whose SO_REUSEADDR we cleared for the hand-off: set again when
# they listen.  A bound socket that does not listen yet, with SO_REUSEADDR,
# lets anyone who sets it too bind the same port (the kernel's rule for two
# such sockets); once it listens that is over, and the option matters again
# only for TIME_WAIT when the server restarts.
_reuse_on_listen: weakref.WeakSet[socket.socket] = weakref.WeakSet()


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
        reuse = (self.type == socket.SOCK_STREAM and
                 self.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        if reuse:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        _inside.take = True
        try:
            block.take(self, _args.host("bind", address[0]), port=address[1])
            if reuse:
                _reuse_on_listen.add(self)
            return None
        except ReservationExhausted:
            pass  # already given to an open socket: bind as usual
        finally:
            _inside.take = False
            if reuse and self not in _reuse_on_listen:
                self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return _original(self, address)


def _listen(self: socket.socket, *args: int) -> None:
    _original_listen(self, *args)
    if self in _reuse_on_listen:
        _reuse_on_listen.discard(self)
        self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


class Handoff:
    """Returned by Reservation.handoff()."""

    def __init__(self, reservation: Reservation) -> None:
        self._reservation = reservation

    def __enter__(self) -> Reservation:
        block = self._reservation._block
        with _lock:
            if not _active:
                socket.socket.bind = _bind  # type: ignore[method-assign,assignment]
                socket.socket.listen = _listen  # type: ignore[method-assign,assignment]
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
                socket.socket.listen = _original_listen  # type: ignore[method-assign]
