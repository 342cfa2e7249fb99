"""The Windows engine: the TCP/IP stack's own port reservations.

Runtime reservations are SIO_ACQUIRE_PORT_RESERVATION on an internal socket
of the protocol's type (the reservation lives as long as that socket, as the
reference pages say); a port is handed out by SIO_ASSOCIATE_PORT_RESERVATION
and a bind to port 0, so Windows picks it from the block.  Persistent
reservations are the iphlpapi calls.  Arguments are checked by the caller
(see _engine.py); the system-call layer returns Windows codes, turned into
exceptions here by _errors.from_winerror.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import weakref
from typing import Any

assert sys.platform == "win32"  # Windows only; also tells mypy to skip this module elsewhere

from . import _args, _errors
from ._backend import calls
from ._errors import InvalidParameter, ReservationExhausted
from ._interfaces import socket_from_take
from ._records import PersistentReservation, PortReservationInstance, Protocol


def _check(err: int, call: str) -> None:
    if err:
        raise _errors.from_winerror(err, call)


def _bind(sock: socket.socket, address: tuple[Any, ...], call: str) -> None:
    """sock.bind with its failure in the contract's classes."""
    try:
        sock.bind(address)
    except OSError as exc:
        code = getattr(exc, "winerror", None) or exc.errno or 0
        if code in (_errors.WSAEADDRINUSE, _errors.WSAENOBUFS) and address[1] == 0:
            raise ReservationExhausted(
                f"{call}: every port of the reservation is held by an open socket") from None
        raise _errors.from_winerror(code, f"{call}: bind to {address!r}") from None


def _protocol_matches(call: str, sock: socket.socket, token: int) -> None:
    """A runtime token of this process used with a socket of the other protocol.

    Windows answers that with WSAEINVAL, which reads as an unknown token
    (see associate_error); this process knows its own blocks' protocols.
    """
    block = _blocks.get(token)
    if block is not None and sock.type != block.protocol.socket_type:
        raise InvalidParameter(f"{call}: {sock!r} is not a "
                               f"{block.protocol.value.upper()} socket")


class Block:
    """A runtime reservation held by an internal socket of the protocol's type."""

    def __init__(self, protocol: Protocol, start: int, count: int) -> None:
        self.protocol = protocol
        self._holder = socket.socket(socket.AF_INET, protocol.socket_type)
        err, (self.start, self.count, self.token) = calls.acquire(
            self._holder.fileno(), start, count)
        if err:
            self._holder.close()
            raise _errors.from_winerror(err, "reserve: SIO_ACQUIRE_PORT_RESERVATION")
        self._lock = threading.Lock()
        self.closed = False
        _blocks[self.token] = self

    def take(self, sock: socket.socket, host: str, port: int = 0) -> int:
        """Associate ``sock`` with the block and bind it to ``port`` (0: any free one)."""
        _args.unbound("bind", sock)
        _args.host_address("bind", sock.family, host)
        with self._lock:
            if self.closed:
                raise InvalidParameter(f"bind: reservation {self.token} was released")
            if port and not self.start <= port < self.start + self.count:
                raise InvalidParameter(f"bind: port {port} is not in block "
                                       f"{self.start}..{self.start + self.count - 1}")
            _check(calls.associate(sock.fileno(), self.token),
                   "bind: SIO_ASSOCIATE_PORT_RESERVATION")
        _bind(sock, (host, port), "bind")
        return sock.getsockname()[1]

    def socket(self, family: int | None = None, host: str = "",
               port: int = 0) -> socket.socket:
        """A new socket (dual-stack if AF_INET6) bound through take(): the
        stack keeps the reservation, there is no holder to hand out."""
        return socket_from_take(self, family, host, port)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            _blocks.pop(self.token, None)
            # Closing the socket would release it too; releasing first says so.
            calls.release(self._holder.fileno(), self.token)
            self._holder.close()


# This process's open runtime blocks by token (for _protocol_matches only).
_blocks: weakref.WeakValueDictionary[int, Block] = weakref.WeakValueDictionary()


# ---- the engine interface (see _engine.py) ------------------------------

def reserve(protocol: Protocol, start: int, count: int) -> Block:
    return Block(protocol, start, count)


def acquire(sock: socket.socket, start: int, count: int) -> PortReservationInstance:
    err, instance = calls.acquire(sock.fileno(), start, count)
    _check(err, "acquire_port_reservation: SIO_ACQUIRE_PORT_RESERVATION")
    return PortReservationInstance(*instance)


def release(sock: socket.socket, token: int) -> None:
    _check(calls.release(sock.fileno(), token),
           "release_port_reservation: SIO_RELEASE_PORT_RESERVATION")


def _bound(sock: socket.socket) -> bool:
    try:
        return sock.getsockname()[1] != 0
    except OSError:  # Windows: an unbound socket has no name (WSAEINVAL)
        return False


def associate_error(err: int, call: str, sock: socket.socket,
                    token: int) -> _errors.PortReservationError:
    """The exception for SIO_ASSOCIATE_PORT_RESERVATION failing with ``err``.

    The reference page names WSAEINVAL for input it does not accept.  On an
    unbound TCP/UDP socket (both checked before the call) the only input left
    is the token, so WSAEINVAL then means an unknown token: ReservationNotFound,
    as on every system (see README).  On a bound socket it stays InvalidParameter.
    """
    return _errors.from_winerror(err, call, token=None if _bound(sock) else token)


def associate(sock: socket.socket, token: int) -> None:
    _protocol_matches("associate_port_reservation", sock, token)  # unbound: checked by the caller
    err = calls.associate(sock.fileno(), token)
    if err:
        raise associate_error(err, "associate_port_reservation: SIO_ASSOCIATE_PORT_RESERVATION",
                              sock, token)


def bind_associated(sock: socket.socket, address: tuple[Any, ...]) -> None:
    _bind(sock, address, "bind_associated")


def bind_token(sock: socket.socket, token: int, host: str) -> int:
    _protocol_matches("bind", sock, token)  # unbound and host: checked by the caller
    associate(sock, token)
    _bind(sock, (host, 0), "bind")
    return sock.getsockname()[1]


def _name(verb: str, protocol: Protocol) -> str:
    return f"{verb}Persistent{protocol.value.capitalize()}PortReservation"


def create_persistent(protocol: Protocol, start: int, count: int) -> int:
    err, token = calls.persistent_create(protocol is Protocol.UDP, start, count)
    _check(err, f"create_persistent: {_name('Create', protocol)}")
    return token


def delete_persistent(protocol: Protocol, start: int, count: int) -> None:
    _check(calls.persistent_delete(protocol is Protocol.UDP, start, count),
           f"delete_persistent: {_name('Delete', protocol)}")


def lookup_persistent(protocol: Protocol, start: int, count: int) -> int:
    err, token = calls.persistent_lookup(protocol is Protocol.UDP, start, count)
    _check(err, f"lookup_persistent: {_name('Lookup', protocol)}")
    return token


# A data row of `netsh int ipv4 show excludedportrange`: start, end, and a
# trailing "*" on administered (persistent) exclusions.  Headings and the
# legend are translated; the rows are digits and the table's rule is dashes
# in every display language.
_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s*(\*)?\s*$")
_RULE = re.compile(r"^\s*-+\s+-+\s*$", re.MULTILINE)


def _excluded_ranges(protocol: Protocol) -> list[tuple[int, int]]:
    """The persistent blocks netsh shows for ``protocol``, as (start, count)."""
    try:
        done = subprocess.run(
            ["netsh", "interface", "ipv4", "show", "excludedportrange",
             f"protocol={protocol.value}"],
            capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _errors.NotSupported(f"list_persistent: netsh is not available ({exc})") from None
    # No table at all (Wine's netsh prints nothing and exits 0) is not "none".
    if done.returncode != 0 or not _RULE.search(done.stdout):
        raise _errors.NotSupported(
            f"list_persistent: netsh shows no excluded port ranges table "
            f"(exit code {done.returncode})")
    return [(int(m[1]), int(m[2]) - int(m[1]) + 1)
            for m in map(_ROW.match, done.stdout.splitlines()) if m and m[3]]


def list_persistent(protocol: Protocol | None) -> list[PersistentReservation]:
    """Persistent reservations as far as Windows lets us see them (limited).

    Windows documents no way to enumerate them, so this reads the
    administered exclusions that netsh shows and asks Lookup for each token.
    Adjacent reservations may show as one merged row, and a row whose Lookup
    fails (made by `netsh add excludedportrange`, not by the iphlpapi calls)
    is listed with token 0.  Windows re-applies persistent reservations
    itself at boot, so ``applied`` is always True.
    """
    found = []
    for proto in (Protocol.TCP, Protocol.UDP) if protocol is None else (protocol,):
        for start, count in _excluded_ranges(proto):
            err, token = calls.persistent_lookup(proto is Protocol.UDP, start, count)
            if err and err != _errors.ERROR_NOT_FOUND:
                raise _errors.from_winerror(err, f"list_persistent: {_name('Lookup', proto)}")
            found.append(PersistentReservation(start, count, proto, token if not err else 0))
    return found


def restore() -> list[PersistentReservation]:
    """Windows re-applies persistent reservations at boot: only list them."""
    return list_persistent(None)
