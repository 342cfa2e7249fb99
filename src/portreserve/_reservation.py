"""The high-level API: reserve(), Reservation and bind() (docs/API.md section 1).

Windows: a runtime reservation is SIO_ACQUIRE_PORT_RESERVATION on an internal
socket and a bind from it is SIO_ASSOCIATE_PORT_RESERVATION plus a bind to
port 0.  Linux and macOS: one holder socket per port, handed to the user's
socket at bind (docs/linux.md; README's "What is enforced" gives each case).
"""

from __future__ import annotations

import socket
import subprocess
from typing import TYPE_CHECKING, Any

from . import _args
from ._engine import engine
from ._errors import InvalidParameter
from ._records import Protocol

if TYPE_CHECKING:
    from ._handoff import Handoff
    from ._interfaces import Block


class Reservation:
    """A runtime reservation of ``count`` consecutive ports, owned by this process.

    Made by ``reserve()``.  While it is held no other process can bind a port
    of the block and the kernel never picks one as an automatic port; a
    port given to a socket comes back when that socket is closed.  It ends
    at ``release()``/``close()``, at the end of a ``with`` block, or when the
    process exits or crashes.
    """

    def __init__(self, block: Block) -> None:
        self._block = block

    @property
    def start(self) -> int:
        """First port of the block, host byte order."""
        return self._block.start

    @property
    def count(self) -> int:
        """Number of ports in the block, 1..65535."""
        return self._block.count

    @property
    def token(self) -> int:
        """The opaque non-zero 64-bit token; ``portreserve.bind`` takes it."""
        return self._block.token

    @property
    def closed(self) -> bool:
        """True once the reservation was released or closed."""
        return self._block.closed

    @property
    def protocol(self) -> Protocol:
        """``Protocol.TCP`` or ``Protocol.UDP``."""
        return self._block.protocol

    @property
    def ports(self) -> range:
        """``range(start, start + count)``: the block as granted."""
        return range(self.start, self.start + self.count)

    def bind(self, sock: socket.socket, host: str = "") -> int:
        """Bind ``sock`` to ``(host, p)`` for a port ``p`` of the block; return ``p``.

        ``p`` is a port no other open socket of this reservation holds.
        ``sock`` is an unbound AF_INET or AF_INET6 socket of the
        reservation's type; ``host`` an address of its family ("" is the
        wildcard).

        A ``SO_REUSEADDR`` set on ``sock`` is held back, because on a bound
        socket that does not listen it would let anyone who sets it too bind
        the port: on Linux and macOS ``sock`` comes back with it off; a TCP
        socket gets it again as it listens (through ``sock.listen()``; the
        TIME_WAIT of a restart needs it), a UDP socket never (set it after
        the bind to share the port).  README, "What is enforced".

        Raises:
            TypeError: ``sock`` not a socket.socket, ``host`` not a str.
            InvalidParameter: ``sock`` closed, already bound or of the other
                protocol; the reservation was released; ``host`` is not an
                address of the socket's family.
            NotSupported: ``sock`` is not a TCP or UDP socket.
            ReservationExhausted: every port of the block is held by an
                open socket.
            PortReservationError: the bind failed otherwise, with its errno.
        Mirrors:
            SIO_ASSOCIATE_PORT_RESERVATION control code, then bind() to port 0.
        """
        _args.sock("Reservation.bind", sock)
        _args.sock_matches("Reservation.bind", sock, self.protocol)
        return self._block.take(sock, _args.host("Reservation.bind", host))

    def socket(self, family: int | None = None, host: str = "") -> socket.socket:
        """A new socket of the reservation's protocol bound to a free port of the block.

        ``family=None`` gives the socket that carries the whole guarantee:
        AF_INET6 dual-stack (IPV6_V6ONLY=0) where the host has IPv6, else
        AF_INET.  On Linux and macOS that socket is the port's holder itself,
        and closing it gives the port back with no window.  Raises
        InvalidParameter (released, bad family or host) or
        ReservationExhausted (every port held by an open socket).
        """
        if family is not None or host.__class__ is not str or host:  # else nothing to check
            family = _args.family("Reservation.socket", family)
            host = _args.host("Reservation.socket", host)
        return self._block.socket(family, host)

    def release(self) -> None:
        """Give the block back; sockets already bound from it are left alone.

        InvalidParameter if it was already released (also when another
        thread released it at the same time: exactly one call succeeds).
        """
        # The engine's close() says False when another thread released it first.
        if self._block.closed or self._block.close() is False:
            raise InvalidParameter(f"release: reservation {self.token} was already released")

    def close(self) -> None:
        """Give the block back, like ``release()``; does nothing if already released."""
        self._block.close()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def popen(self, args: Any, *, listen_fds: bool = False,
              **kwargs: Any) -> subprocess.Popen:  # type: ignore[type-arg]
        """Start ``args`` (as ``subprocess.Popen``) with the block's ports (docs/API.md 1b).

        ``{port}``, ``{port0}``, ``{port1}``... in ``args`` become the ports
        (decimal indexes without leading zeros: ``{port01}`` stays as it is,
        as all other text); the child's environment gets ``PORT`` and ``PORTRESERVE_PORTS``
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

    def handoff(self) -> Handoff:
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
    """Reserve ``count`` consecutive ports for this process.

    ``start`` 0 asks for any free block (the ephemeral range is searched
    first); otherwise exactly ``start .. start+count-1``.  ``protocol`` is
    "tcp" or "udp" in any case, or a ``Protocol``.  Ports are ints in host
    byte order.

    Returns:
        A held ``Reservation``.
    Raises:
        TypeError: ``count`` or ``start`` not an int, ``protocol`` not a str.
        InvalidParameter: ``count`` outside 1..65535, ``start`` outside
            0..65535, a block past 65535, an unknown protocol.
        ReservationConflict: a port of the requested block is in use or
            reserved (a persistent reservation included), or no free block
            of ``count`` ports exists.
        NotSupported: the system lacks the call (Wine).
        PortReservationError: any other system failure (e.g. out of
            descriptors), with its errno.
    Mirrors:
        SIO_ACQUIRE_PORT_RESERVATION control code; on Linux and macOS one
        holder socket per port (docs/linux.md).
    """
    # The usual call is checked inline, as _args would (that took a tenth of
    # reserve(1)); anything else goes through _args for its error.
    if (count.__class__ is int and start.__class__ is int and 0 < count <= 65535
            and (start == 0 or 0 < start <= 65536 - count)
            and protocol.__class__ in _PROTOCOL_TYPES and protocol in _PROTOCOLS):
        proto = _PROTOCOLS[protocol]
    else:
        proto = _args.protocol("reserve", protocol)
        start, count = _args.block("reserve", start, count, wildcard=True)
    return Reservation(engine.reserve(proto, start, count))


_PROTOCOLS = {"tcp": Protocol.TCP, "udp": Protocol.UDP}
_PROTOCOL_TYPES = (str, Protocol)


def bind(sock: socket.socket, token: int, host: str = "") -> int:
    """Bind ``sock`` to a port of the runtime or persistent reservation ``token``.

    ``sock`` is an unbound TCP or UDP socket of AF_INET or AF_INET6;
    ``host`` an address of its family ("" is the wildcard).  A runtime
    token must belong to this process; a persistent one may come from any.
    A ``SO_REUSEADDR`` set on ``sock`` is held back as ``Reservation.bind``
    says (runtime tokens).

    Returns:
        The port bound (host byte order).
    Raises:
        TypeError: ``sock`` not a socket.socket, ``token`` not an int,
            ``host`` not a str.
        InvalidParameter: ``sock`` closed, already bound or of the other
            protocol; ``token`` 0 or wider than 64 bits.
        NotSupported: ``sock`` is not a TCP or UDP socket.
        ReservationNotFound: no reservation has ``token``.
        ReservationExhausted: every port of the block is held by an open
            socket (or, persistent, bound by anyone).
    Mirrors:
        SIO_ASSOCIATE_PORT_RESERVATION control code, then bind() to port 0.
    """
    _args.sock("bind", sock)
    _args.sock_protocol("bind", sock)
    token = _args.token("bind", token)
    host = _args.host("bind", host)
    # Before the token is looked up, which on Windows is the IOCTL itself
    # (and an association there cannot be undone): the same answer everywhere.
    _args.unbound("bind", sock)
    _args.host_address("bind", sock.family, host)
    return engine.bind_token(sock, token, host)
