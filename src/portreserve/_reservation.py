"""The high-level API: reserve(), Reservation and bind() (API.md section 1)."""

from __future__ import annotations

import socket

from . import _args
from ._engine import engine
from ._errors import InvalidParameter
from ._records import Protocol


class Reservation:
    """A runtime reservation of ``count`` consecutive ports, owned by this process."""

    def __init__(self, block) -> None:
        self._block = block

    start = property(lambda self: self._block.start)
    count = property(lambda self: self._block.count)
    token = property(lambda self: self._block.token)
    closed = property(lambda self: self._block.closed)

    @property
    def protocol(self) -> Protocol:
        return self._block.protocol

    @property
    def ports(self) -> range:
        return range(self.start, self.start + self.count)

    def bind(self, sock: socket.socket, host: str = "") -> int:
        """Bind ``sock`` to a free port of the block on ``host``; return the port."""
        _args.sock("Reservation.bind", sock)
        _args.sock_matches("Reservation.bind", sock, self.protocol)
        return self._block.take(sock, _args.host("Reservation.bind", host))

    def socket(self, family: int = socket.AF_INET, host: str = "") -> socket.socket:
        """A new socket of the reservation's protocol, bound to a port of the block."""
        sock = socket.socket(family, self.protocol.socket_type)
        try:
            self.bind(sock, host)
        except BaseException:
            sock.close()
            raise
        return sock

    def release(self) -> None:
        """Give the block back; sockets already bound from it are left alone."""
        if self.closed:
            raise InvalidParameter(f"release: reservation {self.token} was already released")
        self._block.close()

    def close(self) -> None:
        self._block.close()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def popen(self, args, *, listen_fds: bool = False, **kwargs):
        """Start ``args`` (as ``subprocess.Popen``) with the block's ports (API.md 1b).

        ``{port}``, ``{port0}``, ``{port1}``... in ``args`` become the ports;
        the child's environment gets ``PORT`` and ``PORTRESERVE_PORTS``
        (``START-END``).  With ``listen_fds`` it gets the ports as bound
        sockets (TCP listening), descriptors 3, 4, ... with ``LISTEN_FDS``,
        ``LISTEN_PID`` and ``LISTEN_FDNAMES`` (the port numbers); otherwise
        it binds them by number (README, "Giving the port to the code that
        needs it", says where that has a window).  The ports come back to the
        block when ``wait()`` or ``poll()`` sees the child exit.  Returns a
        ``subprocess.Popen``; raises InvalidParameter for a placeholder past
        the block or a released reservation, and what Popen raises.
        """
        from . import _child
        if self.closed:
            raise InvalidParameter(f"popen: reservation {self.token} was released")
        return _child.popen(self, args, listen_fds=listen_fds, **kwargs)

    def handoff(self):
        """A context manager: while it is active, ``socket.socket.bind((host, p))``
        anywhere in this process, for ``p`` a port of the block, is served from
        the reservation (the socket gets ``p`` as ``Reservation.bind`` gives it).
        Other binds are untouched.  Re-entrant and thread-safe; ``__enter__``
        returns the Reservation.
        """
        from ._handoff import Handoff
        return Handoff(self)

    def __repr__(self) -> str:
        state = "released" if self.closed else "held"
        return (f"<Reservation {self.protocol.value} {self.start}-"
                f"{self.start + self.count - 1} token={self.token:#x} {state}>")


def reserve(count: int = 1, *, start: int = 0, protocol: str | Protocol = "tcp") -> Reservation:
    """Reserve ``count`` consecutive ports (any free block when ``start`` is 0)."""
    proto = _args.protocol("reserve", protocol)
    start, count = _args.block("reserve", start, count, wildcard=True)
    return Reservation(engine.reserve(proto, start, count))


def bind(sock: socket.socket, token: int, host: str = "") -> int:
    """Bind ``sock`` to a port of the runtime or persistent reservation ``token``."""
    _args.sock("bind", sock)
    _args.sock_protocol("bind", sock)
    token = _args.token("bind", token)
    return engine.bind_token(sock, token, _args.host("bind", host))
