"""Windows system calls through ctypes: no compiled code of ours.

Same functions, same results as _windows_cffi.py (which reads the shim in
csrc/pr_windows.c); the comments there and in pr_windows.c say why each step
is done.  Every call returns the Windows code of the failing call (0 =
success).  Ops are Python objects: an op that the system may still write to
or notify about stays in _IN_FLIGHT, so its WSAOVERLAPPED and buffers live
until its completion has been consumed, whatever its caller does.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from ctypes import wintypes
from typing import Any, Callable

from ._errors import (
    ERROR_INVALID_DATA,
    ERROR_INVALID_FUNCTION,
    ERROR_IO_PENDING,
    ERROR_NOT_FOUND,
    ERROR_PROC_NOT_FOUND,
    WAIT_TIMEOUT,
    WSAEINVAL,
    WSAENOTSOCK,
)

# Windows only; this also tells mypy --platform linux to skip the rest.
assert sys.platform == "win32"

_ws2 = ctypes.WinDLL("ws2_32", use_last_error=True)
_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_iphlpapi = ctypes.WinDLL("iphlpapi", use_last_error=True)

# _WSAIOW(IOC_VENDOR, 100..102) of mstcpip.h.
SIO_ACQUIRE_PORT_RESERVATION = 0x98000064
SIO_RELEASE_PORT_RESERVATION = 0x98000065
SIO_ASSOCIATE_PORT_RESERVATION = 0x98000066
NOTIFY_EVENT, NOTIFY_IOCP = 0, 1
INFINITE = 0xFFFFFFFF

_STATUS_PENDING = 0x103  # an NTSTATUS, not an error code
_WAIT_FAILED = 0xFFFFFFFF

# INET_PORT_RANGE {USHORT StartPort (network order); USHORT NumberOfPorts},
# INET_PORT_RESERVATION_TOKEN {ULONG64 Token}, and the instance: range,
# padding to 8, token.
_PORT_RANGE = struct.Struct("<2sH")
_TOKEN = struct.Struct("<Q")
_INSTANCE = struct.Struct("<2sH4xQ")
INSTANCE_SIZE = _INSTANCE.size


class _OVERLAPPED(ctypes.Structure):
    _fields_ = [("Internal", ctypes.c_size_t), ("InternalHigh", ctypes.c_size_t),
                ("Offset", wintypes.DWORD), ("OffsetHigh", wintypes.DWORD),
                ("hEvent", ctypes.c_void_p)]


class _OVERLAPPED_ENTRY(ctypes.Structure):
    _fields_ = [("lpCompletionKey", ctypes.c_size_t), ("lpOverlapped", ctypes.c_void_p),
                ("Internal", ctypes.c_size_t), ("dwNumberOfBytesTransferred", wintypes.DWORD)]


_SOCKET = ctypes.c_size_t
_LPDWORD = ctypes.POINTER(wintypes.DWORD)


def _proto(dll: ctypes.CDLL, name: str, restype: type[Any] | None,
           *argtypes: type[Any]) -> Callable[..., Any]:
    fn = getattr(dll, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


_WSAIoctl = _proto(_ws2, "WSAIoctl", ctypes.c_int, _SOCKET, wintypes.DWORD, ctypes.c_void_p,
                   wintypes.DWORD, ctypes.c_void_p, wintypes.DWORD, _LPDWORD,
                   ctypes.c_void_p, ctypes.c_void_p)
_WSACreateEvent = _proto(_ws2, "WSACreateEvent", ctypes.c_void_p)
_WSACloseEvent = _proto(_ws2, "WSACloseEvent", wintypes.BOOL, ctypes.c_void_p)
_WSAGetOverlappedResult = _proto(_ws2, "WSAGetOverlappedResult", wintypes.BOOL, _SOCKET,
                                 ctypes.c_void_p, _LPDWORD, wintypes.BOOL, _LPDWORD)
_CancelIoEx = _proto(_k32, "CancelIoEx", wintypes.BOOL, ctypes.c_void_p, ctypes.c_void_p)
_WaitForSingleObject = _proto(_k32, "WaitForSingleObject", wintypes.DWORD, ctypes.c_void_p,
                              wintypes.DWORD)
_CreateIoCompletionPort = _proto(_k32, "CreateIoCompletionPort", ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                 wintypes.DWORD)
_GetQueuedCompletionStatusEx = _proto(
    _k32, "GetQueuedCompletionStatusEx", wintypes.BOOL, ctypes.c_void_p,
    ctypes.POINTER(_OVERLAPPED_ENTRY), wintypes.ULONG, ctypes.POINTER(wintypes.ULONG),
    wintypes.DWORD, wintypes.BOOL)
_GetOverlappedResult = _proto(_k32, "GetOverlappedResult", wintypes.BOOL, ctypes.c_void_p,
                              ctypes.c_void_p, _LPDWORD, wintypes.BOOL)
_CloseHandle = _proto(_k32, "CloseHandle", wintypes.BOOL, ctypes.c_void_p)
_PostQueuedCompletionStatus = _proto(_k32, "PostQueuedCompletionStatus", wintypes.BOOL,
                                     ctypes.c_void_p, wintypes.DWORD, ctypes.c_size_t,
                                     ctypes.c_void_p)


def _err() -> int:
    return ctypes.get_last_error()


def encode_port_range(start_port: int, number_of_ports: int) -> bytes:
    return _PORT_RANGE.pack(start_port.to_bytes(2, "big"), number_of_ports)


def encode_token(token: int) -> bytes:
    return _TOKEN.pack(token)


def decode_instance(data: bytes) -> tuple[int, int, int]:
    if len(data) != _INSTANCE.size:
        raise ValueError(f"decode_instance: {len(data)} bytes, not {_INSTANCE.size}")
    start, count, token = _INSTANCE.unpack(bytes(data))
    return int.from_bytes(start, "big"), count, token


def _ioctl(s: int, code: int, in_data: bytes, out_size: int) -> tuple[int, bytes]:
    in_buf = ctypes.create_string_buffer(in_data, len(in_data))
    out_buf = ctypes.create_string_buffer(out_size) if out_size else None
    returned = wintypes.DWORD()
    if _WSAIoctl(s, code, in_buf, len(in_data), out_buf, out_size, ctypes.byref(returned),
                 None, None) != 0:
        return _err(), b""
    if returned.value < out_size:  # a short result is not a result
        return ERROR_INVALID_DATA, b""
    return 0, out_buf.raw if out_buf is not None else b""


def acquire(s: int, start_port: int, number_of_ports: int) -> tuple[int, tuple[int, int, int]]:
    err, out = _ioctl(s, SIO_ACQUIRE_PORT_RESERVATION,
                      encode_port_range(start_port, number_of_ports), _INSTANCE.size)
    return err, (decode_instance(out) if err == 0 else (0, 0, 0))


def release(s: int, token: int) -> int:
    return _ioctl(s, SIO_RELEASE_PORT_RESERVATION, encode_token(token), 0)[0]


def associate(s: int, token: int) -> int:
    return _ioctl(s, SIO_ASSOCIATE_PORT_RESERVATION, encode_token(token), 0)[0]


def _persistent(verb: str, udp: bool) -> Callable[..., int] | None:
    """The iphlpapi function, or None where it is not exported (Wine)."""
    name = f"{verb}Persistent{'Udp' if udp else 'Tcp'}PortReservation"
    try:
        fn = getattr(_iphlpapi, name)
    except AttributeError:
        return None
    fn.restype = wintypes.ULONG
    fn.argtypes = (wintypes.USHORT, wintypes.USHORT) + (
        (ctypes.POINTER(ctypes.c_uint64),) if verb != "Delete" else ())
    return fn


def _network(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")  # htons on x86


def _persistent_token(verb: str, udp: bool, start_port: int,
                      number_of_ports: int) -> tuple[int, int]:
    fn = _persistent(verb, udp)
    if fn is None:
        return ERROR_PROC_NOT_FOUND, 0
    token = ctypes.c_uint64()
    err = fn(_network(start_port), number_of_ports, ctypes.byref(token))
    return err, token.value if err == 0 else 0


def persistent_create(udp: bool, start_port: int, number_of_ports: int) -> tuple[int, int]:
    return _persistent_token("Create", udp, start_port, number_of_ports)


def persistent_lookup(udp: bool, start_port: int, number_of_ports: int) -> tuple[int, int]:
    return _persistent_token("Lookup", udp, start_port, number_of_ports)


def persistent_delete(udp: bool, start_port: int, number_of_ports: int) -> int:
    fn = _persistent("Delete", udp)
    if fn is None:
        return ERROR_PROC_NOT_FOUND
    return fn(_network(start_port), number_of_ports)


# ---- overlapped engine ---------------------------------------------------

class _Op:
    """One overlapped WSAIoctl: its WSAOVERLAPPED, buffers and result."""

    def __init__(self, notify: int, code: int, in_data: bytes, out_size: int):
        self.ov = _OVERLAPPED()
        self.notify, self.code = notify, code
        self.in_buf = ctypes.create_string_buffer(in_data, len(in_data))
        self.in_size = len(in_data)
        self.out_buf = ctypes.create_string_buffer(max(out_size, 1))
        self.out_size = out_size
        self.s: int | None = None
        self.refs = 1            # the caller's; +1 while the system holds it
        self.consumed = False
        self.done = False
        self.status = self.bytes = 0
        self.event = None

    @property
    def address(self) -> int:
        return ctypes.addressof(self.ov)


# Ops the system still holds, by the address of their WSAOVERLAPPED.
_IN_FLIGHT: dict[int, _Op] = {}


def _unref(op: _Op) -> bool:
    op.refs -= 1
    if op.refs:
        return False
    if op.event:
        _WSACloseEvent(op.event)
        op.event = None
    return True


def _finish(op: _Op, status: int, nbytes: int) -> None:
    op.status, op.bytes, op.done = status, nbytes, True


def _consume(op: _Op) -> bool:
    if op.consumed:
        return False
    op.consumed = True
    _IN_FLIGHT.pop(op.address, None)
    return _unref(op)


def op_new(notify: int, code: int, in_data: bytes, out_size: int) -> _Op:
    op = _Op(notify, code, in_data, out_size)
    if notify == NOTIFY_EVENT:
        op.event = _WSACreateEvent()
        if not op.event:
            raise OSError(0, "WSACreateEvent failed", None, _err())
        op.ov.hEvent = op.event | 1  # keeps the completion off any IOCP
    return op


def op_start(op: _Op, s: int) -> int:
    if op.s is not None:
        return WSAEINVAL
    op.s = s
    op.ov.Internal = _STATUS_PENDING  # Wine leaves it as it finds it
    op.refs += 1
    _IN_FLIGHT[op.address] = op
    returned = wintypes.DWORD()
    rc = _WSAIoctl(s, op.code, op.in_buf if op.in_size else None, op.in_size,
                   op.out_buf if op.out_size else None, op.out_size, ctypes.byref(returned),
                   ctypes.byref(op.ov), None)
    err = 0 if rc == 0 else _err()
    if err == ERROR_IO_PENDING:
        return err
    _finish(op, err, returned.value)
    if err or op.notify == NOTIFY_EVENT:
        _consume(op)
    return err


def _op_status(op: _Op, nbytes: wintypes.DWORD) -> int:
    """The Winsock status of a finished op, as the synchronous call gives it."""
    flags = wintypes.DWORD()
    ok = _WSAGetOverlappedResult(op.s, ctypes.byref(op.ov), ctypes.byref(nbytes), False,
                                 ctypes.byref(flags))
    err = 0 if ok else _err()
    if err == WSAENOTSOCK:  # the socket was closed since: Internal has it
        err = _internal_status(op, nbytes)
    return err


def _event_poll(op: _Op) -> bool:
    if op.done:
        return True
    if op.ov.Internal == _STATUS_PENDING:
        return False
    nbytes = wintypes.DWORD()
    err = _op_status(op, nbytes)
    _finish(op, err, nbytes.value)
    _consume(op)
    return True


def _internal_status(op: _Op, nbytes: wintypes.DWORD) -> int:
    """The Win32 code of a finished op (no wait, so the handle is not used)."""
    ok = _GetOverlappedResult(op.s, ctypes.byref(op.ov), ctypes.byref(nbytes), False)
    return 0 if ok else _err()


def op_result(op: _Op) -> tuple[int, int] | None:
    if op.notify == NOTIFY_EVENT:
        _event_poll(op)
    if not op.done or (op.notify != NOTIFY_EVENT and not op.consumed):
        return None
    return op.status, op.bytes


def op_wait(op: _Op, timeout_ms: int = INFINITE) -> int:
    if op_result(op) is not None:
        return 0
    if op.notify == NOTIFY_EVENT:
        if _WaitForSingleObject(op.event, timeout_ms) == _WAIT_FAILED:
            return _err()
        return 0 if _event_poll(op) else WAIT_TIMEOUT
    return ERROR_INVALID_FUNCTION  # IOCP ops finish through iocp_get


def op_cancel(op: _Op) -> int:
    if op.s is None or op.done:
        return ERROR_NOT_FOUND
    if not _CancelIoEx(op.s, ctypes.byref(op.ov)):
        return _err()
    return 0


def op_out(op: _Op, size: int) -> bytes:
    return op.out_buf.raw[:min(size, op.out_size)]


def op_free(op: _Op) -> None:
    if op.notify == NOTIFY_EVENT and op.s is not None and not _event_poll(op):
        _CancelIoEx(op.s, ctypes.byref(op.ov))
        _WaitForSingleObject(op.event, 1000)
        _event_poll(op)  # still pending: stays in _IN_FLIGHT, never freed
    _unref(op)


def iocp_new() -> tuple[int, int]:
    iocp = _CreateIoCompletionPort(ctypes.c_void_p(-1), None, 0, 0)
    return (0, iocp) if iocp else (_err(), 0)


# The completion key of every socket we attach (see pr_windows.c): the
# address of an object of ours, so nobody else picks it by chance.
_IOCP_KEY_OWNER = ctypes.c_char()
_IOCP_KEY = ctypes.addressof(_IOCP_KEY_OWNER)


def iocp_attach(iocp: int, s: int) -> int:
    return 0 if _CreateIoCompletionPort(s, iocp, _IOCP_KEY, 0) else _err()


def iocp_get(iocp: int, timeout_ms: int, max_ops: int = 64) -> tuple[int, list[_Op]]:
    max_ops = max(1, min(max_ops, 64))
    entries = (_OVERLAPPED_ENTRY * max_ops)()
    got = wintypes.ULONG()
    if not _GetQueuedCompletionStatusEx(iocp, entries, max_ops, ctypes.byref(got),
                                        timeout_ms, False):
        return _err(), []
    ops = []
    for entry in entries[:got.value]:
        # Posted by someone else: not ours to read or write.
        op = _IN_FLIGHT.get(entry.lpOverlapped) if entry.lpCompletionKey == _IOCP_KEY else None
        if op is None:
            continue
        nbytes = wintypes.DWORD()
        status = _op_status(op, nbytes)
        if not op.done:  # finished at once: WSAIoctl's own result stands
            _finish(op, status, nbytes.value)
        if not _consume(op):
            ops.append(op)
    return 0, ops


def iocp_post(iocp: int) -> int:
    # No op (NULL OVERLAPPED): iocp_get skips it, as posted by someone else.
    return 0 if _PostQueuedCompletionStatus(iocp, 0, 0, None) else _err()


def iocp_close(iocp: int) -> int:
    return 0 if _CloseHandle(iocp) else _err()
