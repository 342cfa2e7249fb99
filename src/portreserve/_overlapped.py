"""Overlapped (asynchronous) reservation calls and completion ports.

The public calls check their arguments and hand them to this system's
overlapped engine, chosen once here (the model and the engines are described
in _overlapped_types.py): _overlapped_iocp.py on Windows, worker threads
(_overlapped_threads.py) elsewhere; both keep ``OverlappedEngine`` of
_interfaces.py.  ``CompletionPort`` is that engine's class.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Callable

from . import _args, _overlapped_threads
from ._interfaces import OverlappedEngine
from ._overlapped_types import Completion, Overlapped, T
from ._records import PortReservationInstance

if sys.platform == "win32":
    from . import _overlapped_iocp as _impl
else:
    from . import _overlapped_threads as _impl

# A module as a Protocol instance: mypy checks every member's signature here.
overlapped_engine: OverlappedEngine = _impl
CompletionPort = _impl.CompletionPort

__all__ = ["Completion", "CompletionPort", "Overlapped", "acquire_port_reservation_overlapped",
           "release_port_reservation_overlapped", "associate_port_reservation_overlapped",
           "call_in_thread"]


def _sock_args(call: str, sock: socket.socket) -> None:
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)


def acquire_port_reservation_overlapped(
        sock: socket.socket, start_port: int, number_of_ports: int, *,
        port: CompletionPort | None = None, key: Any = 0) -> Overlapped[PortReservationInstance]:
    """SIO_ACQUIRE_PORT_RESERVATION, overlapped; the result is a PortReservationInstance."""
    call = "acquire_port_reservation_overlapped"
    _sock_args(call, sock)
    start_port, number_of_ports = _args.block(call, start_port, number_of_ports, wildcard=True)
    return overlapped_engine.acquire(call, sock, start_port, number_of_ports, port, key)


def release_port_reservation_overlapped(
        sock: socket.socket, token: int, *,
        port: CompletionPort | None = None, key: Any = 0) -> Overlapped[None]:
    """SIO_RELEASE_PORT_RESERVATION, overlapped; the result is None."""
    call = "release_port_reservation_overlapped"
    _sock_args(call, sock)
    return overlapped_engine.release(call, sock, _args.token(call, token), port, key)


def associate_port_reservation_overlapped(
        sock: socket.socket, token: int, *,
        port: CompletionPort | None = None, key: Any = 0) -> Overlapped[None]:
    """SIO_ASSOCIATE_PORT_RESERVATION, overlapped; the result is None."""
    call = "associate_port_reservation_overlapped"
    _sock_args(call, sock)
    return overlapped_engine.associate(call, sock, _args.token(call, token), port, key)


def call_in_thread(call: str, fn: Callable[[], T], port: CompletionPort | None,
                   key: Any) -> Overlapped[T]:
    """Run a Python callable as an overlapped operation on a worker thread (aio.reserve)."""
    if sys.platform == "win32":
        # An IOCP carries completions of I/O only: the Future tells the outcome.
        if port is not None:
            raise TypeError(f"{call}: a Python callable cannot complete on an IOCP")
        return _overlapped_threads.submit(call, None, fn, None, key)
    return _overlapped_threads.submit(call, None, fn, port, key)
