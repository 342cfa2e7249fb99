"""The exception classes of docs/API.md section 3 and the one helper that makes them.

Every class carries a fixed POSIX ``errno``; ``winerror`` depends on which
Windows call family reports the mistake (socket IOCTLs speak WSA codes,
iphlpapi speaks Win32 codes), so it is passed in by the caller.  The values
are identical on every platform for the same mistake.
"""

from __future__ import annotations

import errno as _errno
import os
import sys
from typing import Any

# Windows codes, named as in winerror.h / winsock2.h.
ERROR_INVALID_FUNCTION = 1
ERROR_ACCESS_DENIED = 5
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_INVALID_DATA = 13  # ours too: a call "succeeded" with a short result
ERROR_SHARING_VIOLATION = 32
ERROR_NOT_SUPPORTED = 50
ERROR_INVALID_PARAMETER = 87
ERROR_PROC_NOT_FOUND = 127
WAIT_TIMEOUT = 258
ERROR_OPERATION_ABORTED = 995  # == WSA_OPERATION_ABORTED
ERROR_IO_PENDING = 997  # == WSA_IO_PENDING
ERROR_NOT_FOUND = 1168
WSAEINTR = 10004
WSAEACCES = 10013
WSAEINVAL = 10022
WSAEMFILE = 10024
WSAENOTSOCK = 10038
WSAEOPNOTSUPP = 10045
WSAEADDRINUSE = 10048
WSAENOBUFS = 10055


class PortReservationError(OSError):
    """Base class of every portreserve failure: an OSError with ``errno`` and ``winerror``.

    ``errno`` is a POSIX number as Linux numbers it and ``winerror`` a
    Windows code, both set on every platform, never 0 or negative
    (docs/API.md section 3).  A system failure outside the subclasses is
    raised as this class with the system's errno and its Windows twin.
    """

    default_errno = 0
    default_winerror = 0

    def __init__(self, message: str, *, winerror: int | None = None,
                 errno: int | None = None) -> None:
        code = self.default_errno if errno is None else errno
        super().__init__(code, message)
        # Set after construction: on Windows OSError(…, winerror) would
        # recompute errno from winerror, and the contract fixes both.
        self.errno = code
        self.winerror = self.default_winerror if winerror is None else winerror

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling (multiprocessing) faithful
        return (_rebuild, (type(self), self.strerror, self.errno, self.winerror))

    def __str__(self) -> str:
        return f"{self.strerror} [errno {self.errno}, winerror {self.winerror}]"


def _rebuild(cls: type[PortReservationError], message: str, errno: int,
             winerror: int) -> PortReservationError:
    return cls(message, errno=errno, winerror=winerror)


# POSIX numbers as Linux has them.  The contract fixes errno to be identical
# on every platform, and Windows' errno module numbers some of these
# differently (EADDRINUSE is 10048 there), so they are written out here.
EINVAL, EACCES, ENOENT, EOPNOTSUPP, EADDRINUSE, ECANCELED = 22, 13, 2, 95, 98, 125


class InvalidParameter(PortReservationError, ValueError):
    """A bad argument or a state that forbids the call (EINVAL; winerror 87 or 10022).

    Count 0, a port or count outside 0..65535, a block past 65535, a wildcard
    persistent request, an unknown protocol, token 0, a released
    reservation, a socket of the wrong type or already bound, a host that is
    not an address of the socket's family.
    """

    default_errno = EINVAL
    default_winerror = WSAEINVAL


class AccessDenied(PortReservationError, PermissionError):
    """A persistent change without administrator rights / CAP_NET_ADMIN (EACCES; 5 or 10013)."""

    default_errno = EACCES
    default_winerror = ERROR_ACCESS_DENIED


class ReservationConflict(PortReservationError):
    """Ports in use, or overlapping another reservation (EADDRINUSE; 32 or 10048)."""

    default_errno = EADDRINUSE
    default_winerror = WSAEADDRINUSE


class ReservationExhausted(ReservationConflict):
    """Every port of the block is held by an open socket (EADDRINUSE; 10048)."""

    default_winerror = WSAEADDRINUSE


class ReservationNotFound(PortReservationError, LookupError):
    """No reservation has that token or exact block (ENOENT; 1168 ERROR_NOT_FOUND)."""

    default_errno = ENOENT
    default_winerror = ERROR_NOT_FOUND


class NotSupported(PortReservationError):
    """The system lacks the call, or the socket is not TCP/UDP (EOPNOTSUPP; 10045).

    Old Windows and Wine (no reservation calls), macOS (no persistent
    reservations), sockets other than TCP or UDP of AF_INET/AF_INET6.
    """

    default_errno = EOPNOTSUPP
    default_winerror = WSAEOPNOTSUPP


class OperationAborted(PortReservationError):
    """An overlapped operation cancelled, or its socket or completion port closed
    (ECANCELED; 995 WSA_OPERATION_ABORTED)."""

    default_errno = ECANCELED
    default_winerror = ERROR_OPERATION_ABORTED


# Windows codes for system errors outside the table of docs/API.md section 3
# (winerror.h / winsock2.h), so that no error carries winerror 0.
ERROR_GEN_FAILURE = 31  # no closer Windows code
ERROR_DISK_FULL = 112
ERROR_FILE_CORRUPT = 1392
ERROR_TIMEOUT = 1460
WSAEBADF = 10009
WSAEWOULDBLOCK = 10035
WSAEADDRNOTAVAIL = 10049
WSAENETUNREACH = 10051
WSAETIMEDOUT = 10060

# Windows codes reported by the system -> class.  Used by the Windows engine.
_BY_WINERROR = {
    ERROR_ACCESS_DENIED: AccessDenied,
    WSAEACCES: AccessDenied,
    ERROR_INVALID_PARAMETER: InvalidParameter,
    WSAEINVAL: InvalidParameter,
    ERROR_SHARING_VIOLATION: ReservationConflict,
    WSAEADDRINUSE: ReservationConflict,
    ERROR_NOT_FOUND: ReservationNotFound,
    WSAEOPNOTSUPP: NotSupported,
    ERROR_NOT_SUPPORTED: NotSupported,
    ERROR_PROC_NOT_FOUND: NotSupported,
    ERROR_OPERATION_ABORTED: OperationAborted,
    WSAEINTR: OperationAborted,
    # Winsock's usual "no port left" (bind to port 0, a wildcard acquire).
    WSAENOBUFS: ReservationExhausted,
}

# The classes whose winerror the contract fixes, whatever code Windows gave
# (the message keeps that code).
_FIXED_WINERROR = (ReservationExhausted, ReservationNotFound)

# An overlapped op's outcome as a Win32 code (read from the OVERLAPPED of a
# socket closed since) -> the Winsock code the synchronous call reports for
# the same mistake.  995 is both.
_WSA_FOR_WIN32 = {
    ERROR_NOT_SUPPORTED: WSAEOPNOTSUPP,
    ERROR_INVALID_PARAMETER: WSAEINVAL,
    ERROR_ACCESS_DENIED: WSAEACCES,
}

# The outcomes of an op whose abort we asked for: the reference pages say
# the reservation IOCTLs end with WSA_OPERATION_ABORTED or WSAEINTR then.
ABORTED = frozenset({ERROR_OPERATION_ABORTED, WSAEINTR})


def wsa_code(code: int) -> int:
    """The Winsock code for ``code`` of an overlapped socket op (see _WSA_FOR_WIN32)."""
    return _WSA_FOR_WIN32.get(code, code)

# POSIX codes reported by the system -> (class, winerror of the socket family).
_BY_ERRNO = {
    _errno.EINVAL: (InvalidParameter, WSAEINVAL),
    _errno.EACCES: (AccessDenied, WSAEACCES),
    _errno.EPERM: (AccessDenied, WSAEACCES),
    _errno.EADDRINUSE: (ReservationConflict, WSAEADDRINUSE),
    _errno.ENOENT: (ReservationNotFound, ERROR_NOT_FOUND),
    _errno.EOPNOTSUPP: (NotSupported, WSAEOPNOTSUPP),
    _errno.ENOPROTOOPT: (NotSupported, WSAEOPNOTSUPP),
    _errno.EAFNOSUPPORT: (NotSupported, WSAEOPNOTSUPP),
    _errno.ECANCELED: (OperationAborted, ERROR_OPERATION_ABORTED),
    _errno.ENOSPC: (PortReservationError, ERROR_DISK_FULL),
    _errno.EDQUOT: (PortReservationError, ERROR_DISK_FULL),
    _errno.EBADF: (PortReservationError, WSAEBADF),
    _errno.EAGAIN: (PortReservationError, WSAEWOULDBLOCK),
    _errno.EADDRNOTAVAIL: (PortReservationError, WSAEADDRNOTAVAIL),
    _errno.ENETUNREACH: (PortReservationError, WSAENETUNREACH),
    _errno.ETIMEDOUT: (PortReservationError, WSAETIMEDOUT),
    _errno.EMFILE: (PortReservationError, WSAEMFILE),
    _errno.ENFILE: (PortReservationError, WSAEMFILE),
    _errno.ENOBUFS: (PortReservationError, WSAENOBUFS),
    _errno.ENOMEM: (PortReservationError, WSAENOBUFS),
}


def from_winerror(code: int, call: str, *, token: int | None = None) -> PortReservationError:
    """The exception for a Windows error ``code`` reported by ``call``.

    ``token``: the call took that reservation token and no other input
    Windows could refuse, so WSAEINVAL (the reference pages' "input
    parameter is not acceptable") means Windows knows no such token:
    ReservationNotFound, as on every system.
    """
    cls = _BY_WINERROR.get(code, PortReservationError)
    text = f"{call} failed with Windows error {code}"
    if token is not None and code == WSAEINVAL:
        cls, text = ReservationNotFound, f"{text}: Windows knows no reservation {token}"
    winerror = cls.default_winerror if cls in _FIXED_WINERROR else code
    return cls(text, winerror=winerror, errno=cls.default_errno or _errno.EIO)


def from_errno(code: int | None, call: str) -> PortReservationError:
    """The exception for a POSIX ``code`` reported by ``call``."""
    code = code or _errno.EIO
    cls, winerror = _BY_ERRNO.get(code, (PortReservationError, ERROR_GEN_FAILURE))
    text = f"{call} failed: {_errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
    if code == _errno.EMFILE:
        text += _descriptor_limit()
    return cls(text, winerror=winerror, errno=code)


def _descriptor_limit() -> str:
    """EMFILE's hint: the limit now (the engine has already raised the soft
    limit to the hard one if it could), and why a block needs so many."""
    if sys.platform == "win32":
        return ""
    import resource
    limits = ["unlimited" if n == resource.RLIM_INFINITY else str(n)
              for n in resource.getrlimit(resource.RLIMIT_NOFILE)]
    return (f": the descriptor limit (RLIMIT_NOFILE) is {limits[0]} soft, {limits[1]} hard, "
            f"and on Linux and macOS a reservation holds one descriptor per reserved port "
            f"(raise the limit with ulimit -n)")
