"""One function per call of the Windows reference pages (docs/API.md section 2).

Each function has the arguments of the call it mirrors, in snake_case, and
the same meaning on every system: on Windows it is that call; on Linux and
macOS the engine keeps the same promises with holder sockets and, for the
persistent calls, the kernel's reserved-ports list (docs/linux.md).

Ports are ints in host byte order (the Windows structures want network
order; the shim converts).  Tokens are non-zero unsigned 64-bit ints.
Arguments are checked before any system call, so a call that raises for its
arguments has changed nothing.  Wrong Python types raise TypeError; every
other failure is a ``portreserve.PortReservationError`` subclass with
``errno`` and ``winerror`` set (docs/API.md section 3).
"""

from __future__ import annotations

import socket
from typing import Any

from . import _args
from ._engine import engine
from ._overlapped import (
    Overlapped,
    acquire_port_reservation_overlapped,
    associate_port_reservation_overlapped,
    release_port_reservation_overlapped,
)
from ._records import PortReservationInstance, Protocol

__all__ = [
    "Overlapped",
    "PortReservationInstance",
    "acquire_port_reservation_overlapped",
    "release_port_reservation_overlapped",
    "associate_port_reservation_overlapped",
    "acquire_port_reservation",
    "release_port_reservation",
    "associate_port_reservation",
    "bind_associated",
    "create_persistent_tcp_port_reservation",
    "create_persistent_udp_port_reservation",
    "delete_persistent_tcp_port_reservation",
    "delete_persistent_udp_port_reservation",
    "lookup_persistent_tcp_port_reservation",
    "lookup_persistent_udp_port_reservation",
]


def acquire_port_reservation(sock: socket.socket, start_port: int,
                             number_of_ports: int) -> PortReservationInstance:
    """Reserve ``number_of_ports`` consecutive ports for as long as ``sock`` lives.

    ``start_port`` 0 asks for any free block; otherwise exactly
    ``start_port .. start_port + number_of_ports - 1``.  The reservation has
    the protocol of ``sock`` (TCP or UDP, AF_INET or AF_INET6) and ends when
    ``release_port_reservation`` is called through ``sock``, or when ``sock``
    is closed (Linux and macOS: closed *and* garbage-collected, as only a
    weak reference is kept).

    Returns:
        ``PortReservationInstance(start_port, number_of_ports, token)``.
    Raises:
        InvalidParameter: ``sock`` is closed; ``start_port`` outside
            0..65535; ``number_of_ports`` outside 1..65535; the block runs
            past 65535.
        NotSupported: ``sock`` is not a TCP or UDP socket of AF_INET or
            AF_INET6, or the system lacks the call (Wine).
        ReservationConflict: a port of the requested block is in use or
            reserved, or no free block of that size exists.
        PortReservationError: any other system failure (e.g. out of
            descriptors), with its errno.
    Mirrors:
        SIO_ACQUIRE_PORT_RESERVATION control code (Winsock IOCTL, INET_PORT_RANGE
        in, INET_PORT_RESERVATION_INSTANCE out).
    """
    call = "acquire_port_reservation"
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)
    start_port, number_of_ports = _args.block(call, start_port, number_of_ports, wildcard=True)
    return engine.acquire(sock, start_port, number_of_ports)


def release_port_reservation(sock: socket.socket, token: int) -> None:
    """Release the runtime reservation ``token`` acquired on ``sock``.

    Sockets already bound from the block keep their ports.

    Raises:
        InvalidParameter: ``sock`` is closed; ``token`` is 0 or outside
            64 bits; on Linux and macOS also when ``token`` is not a
            reservation acquired on ``sock``.
        NotSupported: ``sock`` is not a TCP or UDP socket, or the system
            lacks the call (Wine).
        PortReservationError: what Windows reports, in the class of
            docs/API.md section 3.
    Mirrors:
        SIO_RELEASE_PORT_RESERVATION control code (Winsock IOCTL,
        INET_PORT_RESERVATION_TOKEN in).
    """
    call = "release_port_reservation"
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)
    engine.release(sock, _args.token(call, token))


def associate_port_reservation(sock: socket.socket, token: int) -> None:
    """Associate the unbound ``sock`` with the reservation ``token``.

    The next bind of ``sock`` through ``bind_associated`` takes a port of
    that block.  ``token`` may be a runtime reservation of this process or
    a persistent one.  On Linux 6.3+ a plain ``sock.bind((host, 0))`` then
    also stays inside the block (IP_LOCAL_PORT_RANGE) or fails.

    Raises:
        InvalidParameter: ``sock`` is closed or already bound, is of the
            other protocol than the reservation, or ``token`` is 0.
        ReservationNotFound: no reservation has ``token``.
        NotSupported: ``sock`` is not a TCP or UDP socket, or the system
            lacks the call (Wine).
    Mirrors:
        SIO_ASSOCIATE_PORT_RESERVATION control code (Winsock IOCTL,
        INET_PORT_RESERVATION_TOKEN in).
    """
    call = "associate_port_reservation"
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)
    token = _args.token(call, token)
    _args.unbound(call, sock)  # before the token is looked up: the same answer everywhere
    engine.associate(sock, token)


def bind_associated(sock: socket.socket, address: tuple[Any, ...]) -> None:
    """Bind ``sock`` to ``address``, from its associated reservation if it has one.

    ``address`` is the socket module's tuple for the family of ``sock``:
    ``(host, port)`` or ``(host, port, flowinfo, scope_id)``, ``port`` in
    host byte order.  On Windows this is exactly ``sock.bind(address)`` (the
    stack applies the association); on Linux and macOS a ``port`` of 0 takes
    a free port of the associated block and a non-zero ``port`` must lie in
    it.  A socket with no association is simply bound.  A ``SO_REUSEADDR``
    set on ``sock`` is held back as ``Reservation.bind`` says (runtime
    reservations).

    Raises:
        TypeError: ``address`` is not such a tuple, or ``host`` not a str.
        InvalidParameter: ``sock`` is closed or already bound; ``port``
            outside 0..65535 or outside the associated block.
        ReservationExhausted: every port of the block is held by an open
            socket.
        ReservationNotFound: the associated reservation no longer exists.
        PortReservationError: the bind failed otherwise, with its errno.
    Mirrors:
        ``bind()`` after SIO_ASSOCIATE_PORT_RESERVATION control code.
    """
    _args.sock("bind_associated", sock)
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError("bind_associated: address must be a (host, port, ...) tuple")
    _args.host("bind_associated", address[0])
    _args.block("bind_associated", address[1], 1, wildcard=True)
    engine.bind_associated(sock, address)


def _check(call: str, start_port: int, number_of_ports: int) -> tuple[int, int]:
    return _args.persistent_block(call, start_port, number_of_ports)


def create_persistent_tcp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """Reserve ``start_port .. start_port + number_of_ports - 1`` for TCP host-wide.

    The reservation outlives this process (Linux: until deleted, and across
    reboots once ``portreserve persistent restore`` runs at boot).  Needs
    administrator rights on Windows, CAP_NET_ADMIN on Linux.

    Returns:
        The reservation token (non-zero, 64 bits).
    Raises:
        InvalidParameter: ``start_port`` 0 (no wildcard here) or outside
            1..65535; ``number_of_ports`` outside 1..65535; past 65535.
        AccessDenied: without the rights above.
        ReservationConflict: the block overlaps another reservation or a
            port in use.
        NotSupported: the system has no persistent reservations (macOS,
            Wine).
    Mirrors:
        CreatePersistentTcpPortReservation function (iphlpapi.h); on Linux
        /proc/sys/net/ipv4/ip_local_reserved_ports plus a state file
        (docs/linux.md).
    """
    return engine.create_persistent(Protocol.TCP, *_check(
        "create_persistent_tcp_port_reservation", start_port, number_of_ports))


def create_persistent_udp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """As ``create_persistent_tcp_port_reservation``, for UDP.

    Mirrors:
        CreatePersistentUdpPortReservation function (iphlpapi.h).
    """
    return engine.create_persistent(Protocol.UDP, *_check(
        "create_persistent_udp_port_reservation", start_port, number_of_ports))


def delete_persistent_tcp_port_reservation(start_port: int, number_of_ports: int) -> None:
    """Delete the persistent TCP reservation of exactly that block.

    ``start_port`` and ``number_of_ports`` must be those it was created
    with.  Needs the same rights as creating it.

    Raises:
        InvalidParameter: ``start_port`` 0 or outside 1..65535;
            ``number_of_ports`` outside 1..65535; past 65535.
        AccessDenied: without administrator rights / CAP_NET_ADMIN.
        ReservationNotFound: no persistent reservation of that block.
        NotSupported: the system has no persistent reservations (macOS,
            Wine).
    Mirrors:
        DeletePersistentTcpPortReservation function (iphlpapi.h).
    """
    engine.delete_persistent(Protocol.TCP, *_check(
        "delete_persistent_tcp_port_reservation", start_port, number_of_ports))


def delete_persistent_udp_port_reservation(start_port: int, number_of_ports: int) -> None:
    """As ``delete_persistent_tcp_port_reservation``, for UDP.

    Mirrors:
        DeletePersistentUdpPortReservation function (iphlpapi.h).
    """
    engine.delete_persistent(Protocol.UDP, *_check(
        "delete_persistent_udp_port_reservation", start_port, number_of_ports))


def lookup_persistent_tcp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """The token of the persistent TCP reservation of exactly that block.

    Needs no privilege.  Tokens may change across a reboot.

    Raises:
        InvalidParameter: ``start_port`` 0 or outside 1..65535;
            ``number_of_ports`` outside 1..65535; past 65535.
        ReservationNotFound: no persistent reservation of that block.
        NotSupported: the system has no persistent reservations (macOS,
            Wine).
    Mirrors:
        LookupPersistentTcpPortReservation function (iphlpapi.h).
    """
    return engine.lookup_persistent(Protocol.TCP, *_check(
        "lookup_persistent_tcp_port_reservation", start_port, number_of_ports))


def lookup_persistent_udp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """As ``lookup_persistent_tcp_port_reservation``, for UDP.

    Mirrors:
        LookupPersistentUdpPortReservation function (iphlpapi.h).
    """
    return engine.lookup_persistent(Protocol.UDP, *_check(
        "lookup_persistent_udp_port_reservation", start_port, number_of_ports))
