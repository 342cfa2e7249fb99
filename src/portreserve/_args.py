"""Argument checks shared by every entry point.

They run before any system call, so bad input never changes system state.
Messages name the call and the offending value.  Wrong Python types raise
TypeError, as elsewhere in Python.
"""

from __future__ import annotations

import socket

from ._errors import ERROR_INVALID_PARAMETER, WSAEINVAL, InvalidParameter, NotSupported
from ._records import Protocol

_TOKEN_MAX = (1 << 64) - 1


def _int(call: str, name: str, value: object) -> int:
    # bool is an int subclass, but reserve(True) is a mistake, not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{call}: {name} must be an int, not {type(value).__name__}")
    return value


def protocol(call: str, value: object, winerror: int = WSAEINVAL) -> Protocol:
    if isinstance(value, Protocol):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{call}: protocol must be 'tcp' or 'udp', not {type(value).__name__}")
    try:
        return Protocol(value.lower())
    except ValueError:
        raise InvalidParameter(f"{call}: unknown protocol {value!r} (use 'tcp' or 'udp')",
                               winerror=winerror) from None


def block(call: str, start: object, count: object, *, wildcard: bool,
          winerror: int = WSAEINVAL) -> tuple[int, int]:
    """Check a block ``start .. start+count-1``; ``start=0`` only if ``wildcard``."""
    start = _int(call, "start", start)
    count = _int(call, "count", count)
    if not 0 <= start <= 65535:
        raise InvalidParameter(f"{call}: start port {start} is outside 0..65535", winerror=winerror)
    if not 1 <= count <= 65535:
        raise InvalidParameter(f"{call}: number of ports {count} is outside 1..65535",
                               winerror=winerror)
    if start == 0 and not wildcard:
        raise InvalidParameter(f"{call}: start port 0 (a wildcard) is not allowed here",
                               winerror=winerror)
    if start and start + count - 1 > 65535:
        raise InvalidParameter(
            f"{call}: block {start}..{start + count - 1} runs past port 65535", winerror=winerror)
    return start, count


def persistent_block(call: str, start: object, count: object) -> tuple[int, int]:
    return block(call, start, count, wildcard=False, winerror=ERROR_INVALID_PARAMETER)


def token(call: str, value: object) -> int:
    value = _int(call, "token", value)
    if not 0 < value <= _TOKEN_MAX:
        raise InvalidParameter(f"{call}: token {value} is not a non-zero 64-bit value")
    return value


def sock(call: str, value: object) -> socket.socket:
    if not isinstance(value, socket.socket):
        raise TypeError(f"{call}: expected a socket.socket, not {type(value).__name__}")
    if value.fileno() == -1:
        raise InvalidParameter(f"{call}: the socket is closed")
    return value


def unbound(call: str, value: socket.socket) -> None:
    """Refuse a bound socket: it cannot take a port of a reservation any more."""
    try:
        port = value.getsockname()[1]
    except OSError:  # Windows: an unbound socket has no name (WSAEINVAL)
        return
    if port:
        raise InvalidParameter(f"{call}: {value!r} is already bound")


def sock_protocol(call: str, value: socket.socket) -> Protocol:
    """The protocol of a TCP or UDP socket; other sockets are not supported."""
    if value.family in (socket.AF_INET, socket.AF_INET6):
        if value.type == socket.SOCK_STREAM and value.proto in (0, socket.IPPROTO_TCP):
            return Protocol.TCP
        if value.type == socket.SOCK_DGRAM and value.proto in (0, socket.IPPROTO_UDP):
            return Protocol.UDP
    raise NotSupported(f"{call}: only TCP and UDP sockets of AF_INET or AF_INET6 take "
                       f"port reservations, not a {_name(socket.AddressFamily, value.family)} "
                       f"{_name(socket.SocketKind, value.type)} socket (protocol {value.proto})")


def _name(enum: type, number: int) -> str:
    """'AF_UNIX' for 1, say; the number itself if Python has no name for it."""
    try:
        return enum(number).name
    except ValueError:
        return str(number)


def sock_matches(call: str, value: socket.socket, expected: Protocol) -> None:
    """A socket used with a reservation must be of the reservation's protocol."""
    got = sock_protocol(call, value)
    if got is not expected:
        raise InvalidParameter(
            f"{call}: a {got.value.upper()} socket cannot use a {expected.value.upper()} "
            f"reservation")


def host(call: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{call}: host must be a str, not {type(value).__name__}")
    if "\0" in value:  # the resolver would read it only up to the NUL
        raise InvalidParameter(f"{call}: host {value!r} contains a NUL character")
    return value


def family(call: str, value: object) -> int | None:
    """None (the family that carries the whole guarantee), AF_INET or AF_INET6."""
    if value is None:
        return None
    value = _int(call, "family", value)
    if value not in (socket.AF_INET, socket.AF_INET6):
        raise InvalidParameter(f"{call}: family {value} is neither AF_INET nor AF_INET6")
    return socket.AddressFamily(value)


def host_address(call: str, family: int, value: str) -> bytes:
    """``value`` ("" for the wildcard, an address or a name) as the packed
    address of ``family`` (4 or 16 bytes); InvalidParameter naming it if it
    is none of that family's."""
    if not value:
        return bytes(16 if family == socket.AF_INET6 else 4)
    try:
        return socket.inet_pton(family, value)
    except (OSError, ValueError):
        pass
    try:
        info = socket.getaddrinfo(value, None, family, socket.SOCK_STREAM)
        return socket.inet_pton(family, str(info[0][4][0]))
    except (OSError, UnicodeError, ValueError):  # socket.gaierror is an OSError
        raise InvalidParameter(f"{call}: host {value!r} is not an address of "
                               f"{socket.AddressFamily(family).name}") from None
