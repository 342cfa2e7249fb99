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
    """Reserve ``start .. start+count-1`` host-wide, beyond this process; return the token.

    Needs administrator rights (Windows) or CAP_NET_ADMIN (Linux).  The token
    is non-zero and 64 bits wide; ``bind`` and ``lowlevel.associate_port_reservation``
    take it from any process.

    Raises:
        TypeError: ``start`` or ``count`` not an int, ``protocol`` not a str.
        InvalidParameter: ``start`` 0 (no wildcard for persistent blocks) or
            outside 1..65535; ``count`` outside 1..65535; the block runs past
            65535; an unknown protocol (winerror 87, ERROR_INVALID_PARAMETER).
        AccessDenied: without the rights above.
        ReservationConflict: the block overlaps a persistent reservation of
            the protocol, or a port of it is bound right now.
        NotSupported: the system has no persistent reservations (macOS; Wine).
        PortReservationError: Linux: the saved state is damaged (the message
            names the file), or another system failure with its errno.
    Mirrors:
        CreatePersistentTcpPortReservation function (iphlpapi.h), or its Udp twin.
    """
    return engine.create_persistent(*_check("create_persistent", start, count, protocol))


def lookup_persistent(start: int, count: int, *, protocol: str | Protocol = "tcp") -> int:
    """The token of the persistent reservation of exactly ``start``, ``count``.

    Needs no privilege.  Tokens may change across a reboot.

    Raises:
        TypeError: ``start`` or ``count`` not an int, ``protocol`` not a str.
        InvalidParameter: ``start`` 0 (no wildcard for persistent blocks) or
            outside 1..65535; ``count`` outside 1..65535; the block runs past
            65535; an unknown protocol (winerror 87, ERROR_INVALID_PARAMETER).
        ReservationNotFound: no persistent reservation of that exact block.
        NotSupported: the system has no persistent reservations (macOS; Wine).
        PortReservationError: Linux: the saved state is damaged (the message
            names the file), or another system failure with its errno.
    Mirrors:
        LookupPersistentTcpPortReservation function (iphlpapi.h), or its Udp twin.
    """
    return engine.lookup_persistent(*_check("lookup_persistent", start, count, protocol))


def delete_persistent(start: int, count: int, *, protocol: str | Protocol = "tcp") -> None:
    """Delete the persistent reservation of exactly ``start``, ``count``.

    Needs the rights of ``create_persistent``.  On Linux a port leaves the
    kernel list only if portreserve put it there and no other persistent
    reservation (of either protocol) still covers it.

    Raises:
        TypeError: ``start`` or ``count`` not an int, ``protocol`` not a str.
        InvalidParameter: ``start`` 0 (no wildcard for persistent blocks) or
            outside 1..65535; ``count`` outside 1..65535; the block runs past
            65535; an unknown protocol (winerror 87, ERROR_INVALID_PARAMETER).
        AccessDenied: without administrator rights / CAP_NET_ADMIN.
        ReservationNotFound: no persistent reservation of that exact block.
        NotSupported: the system has no persistent reservations (macOS; Wine).
        PortReservationError: Linux: the saved state is damaged (the message
            names the file), or another system failure with its errno.
    Mirrors:
        DeletePersistentTcpPortReservation function (iphlpapi.h), or its Udp twin.
    """
    engine.delete_persistent(*_check("delete_persistent", start, count, protocol))


def list_persistent(*, protocol: str | Protocol | None = None) -> list[PersistentReservation]:
    """Every persistent reservation of ``protocol`` (None: TCP and UDP).

    Returns:
        ``PersistentReservation`` records; on Linux sorted by protocol and
        start, with ``applied=False`` for those the kernel lost (after a
        reboot, until ``portreserve persistent restore``).  Windows documents
        no enumeration call: there the administered rows of ``netsh int ipv4
        show excludedportrange`` are looked up one by one, so adjacent
        reservations may show as one and a row not made by these calls has
        token 0.
    Raises:
        TypeError: ``protocol`` not a str, ``Protocol`` or None.
        InvalidParameter: an unknown protocol.
        NotSupported: macOS; Windows without netsh's table (Wine).
        PortReservationError: Linux: the saved state is damaged.
    """
    proto = None if protocol is None else _args.protocol("list_persistent", protocol,
                                                         ERROR_INVALID_PARAMETER)
    return engine.list_persistent(proto)
