"""The overlapped engine of the system-call layer (C in pr_windows.c, or
ctypes), driven directly.

SIO_ADDRESS_LIST_CHANGE really pends (on Windows and under Wine) until an
address changes, which never happens during a test: it lets every way of
finishing an operation be exercised - cancel, close the socket, through an
event or an I/O completion port (IOCP).  The port-reservation
ioctls then go through the same engine.
"""

import ctypes
import socket

import pytest

from portreserve import NotSupported, OperationAborted
from portreserve._errors import from_winerror
from wine_detect import wine_only

WSA_IO_PENDING = 997
WAIT_TIMEOUT = 258
ERROR_OPERATION_ABORTED = 995
ERROR_NOT_FOUND = 1168
WSAENOTSOCK = 10038
WSAEOPNOTSUPP = 10045
ERROR_NOT_SUPPORTED = 50
FIONREAD = 0x4004667F  # _IOR('f', 127, u_long)
SIO_ADDRESS_LIST_CHANGE = 0x28000017  # _WSAIO(IOC_WS2, 23)


@pytest.fixture
def sock():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        yield s


@pytest.fixture
def iocp(calls):
    err, handle = calls.iocp_new()
    assert err == 0 and handle
    yield handle
    assert calls.iocp_close(handle) == 0


def _pending(calls, notify, sock):
    op = calls.op_new(notify, SIO_ADDRESS_LIST_CHANGE, b"", 0)
    assert calls.op_start(op, sock.fileno()) == WSA_IO_PENDING
    assert calls.op_result(op) is None
    return op


def test_event_cancel(calls, sock):
    op = _pending(calls, calls.NOTIFY_EVENT, sock)
    try:
        assert calls.op_wait(op, 50) == WAIT_TIMEOUT
        assert calls.op_result(op) is None
        assert calls.op_cancel(op) == 0
        assert calls.op_wait(op, 5000) == 0
        assert calls.op_result(op) == (ERROR_OPERATION_ABORTED, 0)
        assert calls.op_cancel(op) == ERROR_NOT_FOUND  # too late: it is over
        assert isinstance(from_winerror(calls.op_result(op)[0], "t"), OperationAborted)
    finally:
        calls.op_free(op)


def test_closesocket_while_pending(calls, sock):
    op = _pending(calls, calls.NOTIFY_EVENT, sock)
    try:
        sock.close()
        assert calls.op_wait(op, 5000) == 0
        assert calls.op_result(op)[0] == ERROR_OPERATION_ABORTED
    finally:
        calls.op_free(op)


def test_iocp_cancel(calls, sock, iocp):
    assert calls.iocp_attach(iocp, sock.fileno()) == 0
    op = _pending(calls, calls.NOTIFY_IOCP, sock)
    try:
        assert calls.iocp_get(iocp, 50) == (WAIT_TIMEOUT, [])
        assert calls.op_wait(op, 0) == 1  # ERROR_INVALID_FUNCTION: iocp_get finishes it
        assert calls.op_cancel(op) == 0
        err, done = calls.iocp_get(iocp, 5000)
        assert err == 0 and done == [op]
        assert calls.op_result(op) == (ERROR_OPERATION_ABORTED, 0)
        assert calls.op_cancel(op) == ERROR_NOT_FOUND
    finally:
        calls.op_free(op)


def test_iocp_closesocket_while_pending(calls, sock, iocp):
    assert calls.iocp_attach(iocp, sock.fileno()) == 0
    ops = [_pending(calls, calls.NOTIFY_IOCP, sock) for _ in range(2)]
    try:
        sock.close()
        got = []
        while len(got) < 2:
            err, done = calls.iocp_get(iocp, 5000)
            assert err == 0
            got += done
        assert set(got) == set(ops) and len(got) == 2
        assert {calls.op_result(op) for op in ops} == {(ERROR_OPERATION_ABORTED, 0)}
    finally:
        for op in ops:
            calls.op_free(op)


def test_iocp_op_freed_by_its_caller_is_freed_by_its_packet(calls, sock, iocp):
    # The caller lets go while the system still holds the op: the packet that
    # comes later must not hand back (or touch freed) memory.
    assert calls.iocp_attach(iocp, sock.fileno()) == 0
    kept = _pending(calls, calls.NOTIFY_IOCP, sock)
    dropped = _pending(calls, calls.NOTIFY_IOCP, sock)
    calls.op_free(dropped)
    sock.close()
    got = []
    for _ in range(2):
        got += calls.iocp_get(iocp, 500)[1]
    assert got == [kept]
    calls.op_free(kept)


def test_event_op_freed_while_pending(calls, sock):
    # Freeing cancels and waits, so the socket may go on being used.
    op = _pending(calls, calls.NOTIFY_EVENT, sock)
    calls.op_free(op)
    op = _pending(calls, calls.NOTIFY_EVENT, sock)
    assert calls.op_cancel(op) == 0
    assert calls.op_wait(op, 5000) == 0
    calls.op_free(op)


def test_immediate_failure_needs_no_wait(calls):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    handle = dead.fileno()
    dead.close()
    for notify in (calls.NOTIFY_EVENT, calls.NOTIFY_IOCP):
        op = calls.op_new(notify, SIO_ADDRESS_LIST_CHANGE, b"", 0)
        assert calls.op_start(op, handle) == WSAENOTSOCK
        assert calls.op_result(op) == (WSAENOTSOCK, 0)
        assert calls.op_start(op, handle) != 0  # an op runs once
        calls.op_free(op)


# ---- the reservation ioctls through the engine, under Wine --------------

def _reservation_ops(calls):
    return [
        (calls.SIO_ACQUIRE_PORT_RESERVATION, calls.encode_port_range(0, 4), 16),
        (calls.SIO_RELEASE_PORT_RESERVATION, calls.encode_token(1), 0),
        (calls.SIO_ASSOCIATE_PORT_RESERVATION, calls.encode_token(1), 0),
    ]


def _finish(calls, op, iocp):
    """Wait for op to finish the way its notify says; its status."""
    if calls.op_result(op) is None:
        if iocp is None:
            assert calls.op_wait(op, 5000) == 0
        else:
            err, done = calls.iocp_get(iocp, 5000)
            assert err == 0 and done == [op]
    return calls.op_result(op)[0]


@wine_only
@pytest.mark.parametrize("notify", ["NOTIFY_EVENT", "NOTIFY_IOCP"])
def test_reservation_ioctls_overlapped_not_supported(calls, sock, iocp, notify):
    if notify == "NOTIFY_IOCP":
        assert calls.iocp_attach(iocp, sock.fileno()) == 0
    for code, data, out_size in _reservation_ops(calls):
        op = calls.op_new(getattr(calls, notify), code, data, out_size)
        try:
            started = calls.op_start(op, sock.fileno())
            if started == WSA_IO_PENDING:
                status = _finish(calls, op, iocp if notify == "NOTIFY_IOCP" else None)
            else:
                status = started
            # Wine: the IOCP packet says Win32 50; the layer reports the
            # Winsock code, as through the event.
            assert status == WSAEOPNOTSUPP, hex(code)
            exc = from_winerror(status, "t")
            assert isinstance(exc, NotSupported)
            assert exc.errno == NotSupported.default_errno
        finally:
            calls.op_free(op)


@pytest.mark.parametrize("notify", ["NOTIFY_EVENT", "NOTIFY_IOCP"])
def test_immediate_success(calls, sock, iocp, notify):
    # FIONREAD finishes at once.  With an IOCP, Windows still queues the
    # packet, and the op lives until it is dequeued.
    sock.bind(("127.0.0.1", 0))
    if notify == "NOTIFY_IOCP":
        assert calls.iocp_attach(iocp, sock.fileno()) == 0
    op = calls.op_new(getattr(calls, notify), FIONREAD, b"", 4)
    try:
        assert calls.op_start(op, sock.fileno()) in (0, WSA_IO_PENDING)
        if notify == "NOTIFY_IOCP":
            err, done = calls.iocp_get(iocp, 5000)
            assert err == 0 and done == [op]
        else:
            assert calls.op_wait(op, 5000) == 0
        assert calls.op_result(op) == (0, 4)
        assert calls.op_out(op, 16) == b"\0\0\0\0"  # nothing queued to read
    finally:
        calls.op_free(op)


# SIO_GET_EXTENSION_FUNCTION_POINTER with WSAID_CONNECTEX: the answer depends
# on every input byte, so it shows the op's buffers reach WSAIoctl intact.
SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006
WSAID_CONNECTEX = bytes.fromhex("b907a225f3dd60468ee976e58c74063e")


@pytest.mark.parametrize("guid,expected", [(WSAID_CONNECTEX, 0), (bytes(16), 10022)])
def test_input_and_output_buffers(calls, guid, expected):
    with socket.socket() as tcp:
        op = calls.op_new(calls.NOTIFY_EVENT, SIO_GET_EXTENSION_FUNCTION_POINTER, guid, 8)
        try:
            started = calls.op_start(op, tcp.fileno())
            if started == WSA_IO_PENDING:
                assert calls.op_wait(op, 5000) == 0
            status, nbytes = calls.op_result(op)
            assert status == expected
            if expected == 0:
                assert nbytes == 8
                assert int.from_bytes(calls.op_out(op, 8), "little") != 0
        finally:
            calls.op_free(op)


_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_k32.PostQueuedCompletionStatus.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t,
                                            ctypes.c_void_p]


@pytest.mark.parametrize("key", [0, 0x5A5A])
def test_iocp_get_skips_foreign_packets(calls, sock, iocp, key):
    # Someone else posts to our IOCP with an OVERLAPPED of theirs (followed
    # here by guard bytes), or with none.  iocp_get must skip both, and never
    # write through theirs: the guard and the OVERLAPPED stay as they were.
    size = 32  # sizeof(OVERLAPPED) on win64
    foreign = ctypes.create_string_buffer(b"\xab" * (size + 64), size + 64)
    before = foreign.raw
    for overlapped in (ctypes.addressof(foreign), None):
        assert _k32.PostQueuedCompletionStatus(iocp, 4, key, overlapped)
    # Our own op after them still comes through.
    assert calls.iocp_attach(iocp, sock.fileno()) == 0
    op = _pending(calls, calls.NOTIFY_IOCP, sock)
    try:
        assert calls.op_cancel(op) == 0
        got = []
        for _ in range(10):
            err, done = calls.iocp_get(iocp, 5000)
            assert err == 0
            got += done
            if got:
                break
        assert got == [op]
        assert calls.op_result(op) == (ERROR_OPERATION_ABORTED, 0)
    finally:
        calls.op_free(op)
    assert foreign.raw == before


def test_iocp_error_is_the_winsock_code(calls, sock, iocp):
    # The same mistake gives the same code through an IOCP as through an
    # event (and as the synchronous call): a control code nobody offers.
    bogus = 0x98000000 | 0x7ff  # _WSAIOW(IOC_VENDOR, 2047)
    statuses = []
    for notify in (calls.NOTIFY_EVENT, calls.NOTIFY_IOCP):
        if notify == calls.NOTIFY_IOCP:
            assert calls.iocp_attach(iocp, sock.fileno()) == 0
        op = calls.op_new(notify, bogus, b"", 0)
        try:
            started = calls.op_start(op, sock.fileno())
            statuses.append(_finish(calls, op, iocp if notify == calls.NOTIFY_IOCP else None)
                            if started == WSA_IO_PENDING else started)
        finally:
            calls.op_free(op)
    assert statuses[0] == statuses[1] and statuses[0] > 10000, statuses
