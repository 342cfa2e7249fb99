"""Small value types of the public API."""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import NamedTuple


class Protocol(str, enum.Enum):
    """Transport protocol of a reservation; compares equal to "tcp"/"udp"."""

    TCP = "tcp"
    UDP = "udp"

    def __str__(self) -> str:
        return self.value

    @property
    def socket_type(self) -> int:
        return socket.SOCK_STREAM if self is Protocol.TCP else socket.SOCK_DGRAM


class PortReservationInstance(NamedTuple):
    """INET_PORT_RESERVATION_INSTANCE: the granted block and its token."""

    start_port: int
    number_of_ports: int
    token: int


@dataclass(frozen=True)
class PersistentReservation:
    """One persistent reservation; ``applied`` is False after a reboot until restore."""

    start: int
    count: int
    protocol: Protocol
    token: int
    applied: bool = True
