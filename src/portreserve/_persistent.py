"""The high-level persistent calls (docs/API.md section 1); the engine does the work.

A persistent reservation is host-wide and outlives the process that made it.
On Windows these are iphlpapi's Create/Delete/LookupPersistent{Tcp,Udp}PortReservation;
on Linux a state file per network namespace mirrored into
/proc/sys/net/ipv4/ip_local_reserved_ports (docs/linux.md), which keeps the
ports out of automatic choice but does not stop an explicit bind.  Ports are
ints in host byte order; ``protocol`` is "tcp"/"udp" (any case) or a
``Protocol``.
"""

from __future__ import annotations

from . import _args
from ._engine import engine
from ._errors import ERROR_INVALID_PARAMETER
from ._records import PersistentReservation, Protocol


def _check(call: str, start: int, count: int,
           protocol: str | Protocol) -> tuple[Protocol, int, int]:
    proto = _args.protocol(call, protocol, ERROR_INVALID_PARAMETER)
    return (proto, *_args.persistent_block(call, start, count))


def create_persistent(start: int, count: int, *, protocol: str | Protocol = "tcp") -> int:
    """Reserve ports ``start .. start+count-1`` (host byte order) host-wide; return the token.

    The token is an opaque non-zero 64-bit int; the reservation outlives the
    process.  Mirrors CreatePersistentTcpPortReservation /
    CreatePersistentUdpPortReservation.  Raises InvalidParameter (start 0,
    count 0, a block past 65535, an unknown protocol), AccessDenied (no
    administrator rights / CAP_NET_ADMIN, or a state directory others own or
    may write), ReservationConflict (ports in use or reserved already),
    NotSupported (macOS); on Linux also PortReservationError with errno
    ENOSPC (full disk), EIO (a damaged state file, named) or ETIMEDOUT (the
    store's lock held for 30 seconds).
    """
    return engine.create_persistent(*_check("create_persistent", start, count, protocol))


def lookup_persistent(start: int, count: int, *, protocol: str | Protocol = "tcp") -> int:
    """The token of the persistent reservation of exactly ``start .. start+count-1``.

    Needs no privilege.  Mirrors LookupPersistentTcpPortReservation /
    LookupPersistentUdpPortReservation.  Raises InvalidParameter for a bad
    block or protocol, ReservationNotFound if no reservation has exactly that
    block, and on Linux PortReservationError (errno EIO) for a damaged state file.
    """
    return engine.lookup_persistent(*_check("lookup_persistent", start, count, protocol))


def delete_persistent(start: int, count: int, *, protocol: str | Protocol = "tcp") -> None:
    """Delete the persistent reservation of exactly ``start .. start+count-1``.

    Mirrors DeletePersistentTcpPortReservation /
    DeletePersistentUdpPortReservation.  Raises what create_persistent
    raises, and ReservationNotFound if no reservation has exactly that block.
    """
    engine.delete_persistent(*_check("delete_persistent", start, count, protocol))


def list_persistent(*, protocol: str | Protocol | None = None) -> list[PersistentReservation]:
    """Every persistent reservation (of ``protocol``, or of both when None), by start.

    ``applied`` is False for one the system lost (after a reboot) until
    ``portreserve persistent restore``.  Windows has no call for this (it
    reads ``netsh int ipv4 show excludedportrange``); Linux reads the saved
    state.  Raises InvalidParameter for an unknown protocol, and on Linux
    PortReservationError (errno EIO) for a damaged state file.
    """
    proto = None if protocol is None else _args.protocol("list_persistent", protocol,
                                                         ERROR_INVALID_PARAMETER)
    return engine.list_persistent(proto)
