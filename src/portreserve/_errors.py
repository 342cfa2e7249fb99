"""The exception classes of API.md section 3 and the one helper that makes them.

Every class carries a fixed POSIX ``errno``; ``winerror`` depends on which
Windows call family reports the mistake (socket IOCTLs speak WSA codes,
iphlpapi speaks Win32 codes), so it is passed in by the caller.  The values
are identical on every platform for the same mistake.
"""

from __future__ import annotations

import errno as _errno
import os

# Windows codes, named as in winerror.h / winsock2.h.
ERROR_ACCESS_DENIED = 5
ERROR_SHARING_VIOLATION = 32
ERROR_INVALID_PARAMETER = 87
ERROR_NOT_SUPPORTED = 50
ERROR_PROC_NOT_FOUND = 127
ERROR_OPERATION_ABORTED = 995  # == WSA_OPERATION_ABORTED
ERROR_NOT_FOUND = 1168
WSAEINTR = 10004
WSAEACCES = 10013
WSAEINVAL = 10022
WSAEMFILE = 10024
WSAEOPNOTSUPP = 10045
WSAEADDRINUSE = 10048
WSAEADDRNOTAVAIL = 10049
WSAENOBUFS = 10055


class PortReservationError(OSError):
    """Base class of every portreserve failure."""

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

    def __reduce__(self):  # keep pickling (multiprocessing) faithful
        return (_rebuild, (type(self), self.strerror, self.errno, self.winerror))

    def __str__(self) -> str:
        return f"{self.strerror} [errno {self.errno}, winerror {self.winerror}]"


def _rebuild(cls, message, errno, winerror):
    return cls(message, errno=errno, winerror=winerror)


# POSIX numbers as Linux has them.  The contract fixes errno to be identical
# on every platform, and Windows' errno module numbers some of these
# differently (EADDRINUSE is 10048 there), so they are written out here.
EINVAL, EACCES, ENOENT, EOPNOTSUPP, EADDRINUSE, ECANCELED = 22, 13, 2, 95, 98, 125


class InvalidParameter(PortReservationError, ValueError):
    default_errno = EINVAL
    default_winerror = WSAEINVAL


class AccessDenied(PortReservationError, PermissionError):
    default_errno = EACCES
    default_winerror = ERROR_ACCESS_DENIED


class ReservationConflict(PortReservationError):
    default_errno = EADDRINUSE
    default_winerror = WSAEADDRINUSE


class ReservationExhausted(ReservationConflict):
    default_winerror = WSAEADDRINUSE


class ReservationNotFound(PortReservationError, LookupError):
    default_errno = ENOENT
    default_winerror = ERROR_NOT_FOUND


class NotSupported(PortReservationError):
    default_errno = EOPNOTSUPP
    default_winerror = WSAEOPNOTSUPP


class OperationAborted(PortReservationError):
    default_errno = ECANCELED
    default_winerror = ERROR_OPERATION_ABORTED


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
}

# POSIX codes reported by the system -> (class, winerror of the socket family).
_BY_ERRNO = {
    _errno.EINVAL: (InvalidParameter, WSAEINVAL),
    _errno.EACCES: (AccessDenied, WSAEACCES),
    _errno.EPERM: (AccessDenied, WSAEACCES),
    _errno.EADDRINUSE: (ReservationConflict, WSAEADDRINUSE),
    _errno.EADDRNOTAVAIL: (PortReservationError, WSAEADDRNOTAVAIL),
    _errno.ENOENT: (ReservationNotFound, ERROR_NOT_FOUND),
    _errno.EOPNOTSUPP: (NotSupported, WSAEOPNOTSUPP),
    _errno.ENOPROTOOPT: (NotSupported, WSAEOPNOTSUPP),
    _errno.EAFNOSUPPORT: (NotSupported, WSAEOPNOTSUPP),
    _errno.ECANCELED: (OperationAborted, ERROR_OPERATION_ABORTED),
    _errno.EMFILE: (PortReservationError, WSAEMFILE),
    _errno.ENFILE: (PortReservationError, WSAEMFILE),
    _errno.ENOBUFS: (PortReservationError, WSAENOBUFS),
    _errno.ENOMEM: (PortReservationError, WSAENOBUFS),
}


def from_winerror(code: int, call: str) -> PortReservationError:
    """The exception for a Windows error ``code`` reported by ``call``."""
    cls = _BY_WINERROR.get(code, PortReservationError)
    posix = cls.default_errno or _errno.EIO
    return cls(f"{call} failed with Windows error {code}", winerror=code, errno=posix)


def from_errno(code: int | None, call: str) -> PortReservationError:
    """The exception for a POSIX ``code`` reported by ``call``."""
    code = code or _errno.EIO
    cls, winerror = _BY_ERRNO.get(code, (PortReservationError, 0))
    text = _errno.errorcode.get(code, str(code))
    return cls(f"{call} failed: {text} ({os.strerror(code)})",
               winerror=winerror, errno=code)
