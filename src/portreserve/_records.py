"""Small value types of the public API (docs/API.md sections 1 and 2)."""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import NamedTuple


class Protocol(str, enum.Enum):
    """Transport protocol of a reservation: ``Protocol.TCP`` or ``Protocol.UDP``.

    A ``str`` enum: ``Protocol.TCP == "tcp"``, and ``str()`` gives the value.
    """

    TCP = "tcp"
    UDP = "udp"

    def __str__(self) -> str:
        return self.value

    @property
    def socket_type(self) -> int:
        """``socket.SOCK_STREAM`` for TCP, ``socket.SOCK_DGRAM`` for UDP."""
        return socket.SOCK_STREAM if self is Protocol.TCP else socket.SOCK_DGRAM


class PortReservationInstance(NamedTuple):
    """The granted block and its token: ``(start_port, number_of_ports, token)``.

    Ports in host byte order; ``token`` a non-zero 64-bit int.  Returned by
    ``lowlevel.acquire_port_reservation``.

    Mirrors:
        INET_PORT_RESERVATION_INSTANCE, the output of the
        SIO_ACQUIRE_PORT_RESERVATION control code.
    """

    start_port: int
    number_of_ports: int
    token: int


@dataclass(frozen=True)
class PersistentReservation:
    """One persistent reservation, as ``list_persistent()`` reports it (immutable).

    ``start``/``count`` the block (host byte order), ``protocol`` a
    ``Protocol``, ``token`` its token (0 on Windows for a row not made by
    the persistent-reservation calls), ``applied`` False while the system
    has lost it (Linux, after a reboot) until ``portreserve persistent
    restore``.
    """

    start: int
    count: int
    protocol: Protocol
    token: int
    applied: bool = True
