"""One function per call of the Windows reference pages (docs/API.md section 2).

Ports are host byte order.  Arguments are checked before any system call.
"""

from __future__ import annotations

import socket

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
    """SIO_ACQUIRE_PORT_RESERVATION: a runtime reservation that lives as long as ``sock``."""
    call = "acquire_port_reservation"
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)
    start_port, number_of_ports = _args.block(call, start_port, number_of_ports, wildcard=True)
    return engine.acquire(sock, start_port, number_of_ports)


def release_port_reservation(sock: socket.socket, token: int) -> None:
    """SIO_RELEASE_PORT_RESERVATION, through the socket the reservation was acquired on."""
    call = "release_port_reservation"
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)
    engine.release(sock, _args.token(call, token))


def associate_port_reservation(sock: socket.socket, token: int) -> None:
    """SIO_ASSOCIATE_PORT_RESERVATION: the next bind of ``sock`` takes a port of ``token``."""
    call = "associate_port_reservation"
    _args.sock(call, sock)
    _args.sock_protocol(call, sock)
    engine.associate(sock, _args.token(call, token))


def bind_associated(sock: socket.socket, address: tuple) -> None:
    """``sock.bind(address)``, taking the port from the associated reservation if any."""
    _args.sock("bind_associated", sock)
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError("bind_associated: address must be a (host, port, ...) tuple")
    _args.host("bind_associated", address[0])
    _args.block("bind_associated", address[1], 1, wildcard=True)
    engine.bind_associated(sock, address)


def _check(call: str, start_port: int, number_of_ports: int) -> tuple[int, int]:
    return _args.persistent_block(call, start_port, number_of_ports)


def create_persistent_tcp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """CreatePersistentTcpPortReservation: returns the reservation token."""
    return engine.create_persistent(Protocol.TCP, *_check(
        "create_persistent_tcp_port_reservation", start_port, number_of_ports))


def create_persistent_udp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """CreatePersistentUdpPortReservation: returns the reservation token."""
    return engine.create_persistent(Protocol.UDP, *_check(
        "create_persistent_udp_port_reservation", start_port, number_of_ports))


def delete_persistent_tcp_port_reservation(start_port: int, number_of_ports: int) -> None:
    """DeletePersistentTcpPortReservation."""
    engine.delete_persistent(Protocol.TCP, *_check(
        "delete_persistent_tcp_port_reservation", start_port, number_of_ports))


def delete_persistent_udp_port_reservation(start_port: int, number_of_ports: int) -> None:
    """DeletePersistentUdpPortReservation."""
    engine.delete_persistent(Protocol.UDP, *_check(
        "delete_persistent_udp_port_reservation", start_port, number_of_ports))


def lookup_persistent_tcp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """LookupPersistentTcpPortReservation: the token of that exact block."""
    return engine.lookup_persistent(Protocol.TCP, *_check(
        "lookup_persistent_tcp_port_reservation", start_port, number_of_ports))


def lookup_persistent_udp_port_reservation(start_port: int, number_of_ports: int) -> int:
    """LookupPersistentUdpPortReservation: the token of that exact block."""
    return engine.lookup_persistent(Protocol.UDP, *_check(
        "lookup_persistent_udp_port_reservation", start_port, number_of_ports))
