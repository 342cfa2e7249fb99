"""The overlapped engine of the system-call layer (C in pr_windows.c, or
ctypes), driven directly.

SIO_ADDRESS_LIST_CHANGE really pends (on Windows and under Wine) until an
address changes, which never happens during a test: it lets every way of
finishing an operation be exercised - cancel, close the socket, through an
event, a completion routine or a completion port.  The port-reservation
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


@pytest.fixture
def sock():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        yield s


@pytest.fixture
def port(calls):
    err, handle = calls.port_new()
    assert err == 0 and handle
    yield handle
    assert calls.port_close(handle) == 0


def _pending(calls, notify, sock, key=0):
    op = calls.op_new(notify, calls.SIO_ADDRESS_LIST_CHANGE, b"", 0, key)
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


@pytest.mark.parametrize("notify", ["NOTIFY_EVENT", "NOTIFY_ROUTINE"])
def test_closesocket_while_pending(calls, sock, notify):
    op = _pending(calls, getattr(calls, notify), sock)
    try:
        sock.close()
        assert calls.op_wait(op, 5000) == 0
        assert calls.op_result(op)[0] == ERROR_OPERATION_ABORTED
    finally:
        calls.op_free(op)


def test_routine_cancel(calls, sock):
    op = _pending(calls, calls.NOTIFY_ROUTINE, sock)
    try:
        assert calls.op_wait(op, 50) == WAIT_TIMEOUT
        assert calls.op_cancel(op) == 0
        # The routine runs as an APC of this thread, inside the alertable wait.
        assert calls.op_wait(op, 5000) == 0
        assert calls.op_result(op) == (ERROR_OPERATION_ABORTED, 0)
    finally:
        calls.op_free(op)


def test_port_cancel(calls, sock, port):
    assert calls.port_attach(port, sock.fileno()) == 0
    op = _pending(calls, calls.NOTIFY_PORT, sock, key=7)
    try:
        assert calls.port_get(port, 50) == (WAIT_TIMEOUT, [])
        assert calls.op_cancel(op) == 0
        err, done = calls.port_get(port, 5000)
        assert err == 0 and done == [op]
        assert calls.op_key(done[0]) == 7
        assert calls.op_result(op) == (ERROR_OPERATION_ABORTED, 0)
        assert calls.op_cancel(op) == ERROR_NOT_FOUND
    finally:
        calls.op_free(op)


def test_port_closesocket_while_pending(calls, sock, port):
    assert calls.port_attach(port, sock.fileno()) == 0
    ops = [_pending(calls, calls.NOTIFY_PORT, sock, key=k) for k in (1, 2)]
    try:
        sock.close()
        got = []
        while len(got) < 2:
            err, done = calls.port_get(port, 5000)
            assert err == 0
            got += done
        assert sorted(calls.op_key(op) for op in got) == [1, 2]
        assert {calls.op_result(op) for op in ops} == {(ERROR_OPERATION_ABORTED, 0)}
    finally:
        for op in ops:
            calls.op_free(op)


def test_port_op_freed_by_its_caller_is_freed_by_its_packet(calls, sock, port):
    # The caller lets go while the system still holds the op: the packet that
    # comes later must not hand back (or touch freed) memory.
    assert calls.port_attach(port, sock.fileno()) == 0
    kept = _pending(calls, calls.NOTIFY_PORT, sock, key=1)
    dropped = _pending(calls, calls.NOTIFY_PORT, sock, key=2)
    calls.op_free(dropped)
    sock.close()
    got = []
    for _ in range(2):
        got += calls.port_get(port, 500)[1]
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
    for notify in (calls.NOTIFY_EVENT, calls.NOTIFY_ROUTINE):
        op = calls.op_new(notify, calls.SIO_ADDRESS_LIST_CHANGE, b"", 0)
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


def _finish(calls, op, port):
    """Wait for op to finish the way its notify says; (start code, status)."""
    if calls.op_result(op) is None:
        if port is None:
            assert calls.op_wait(op, 5000) == 0
        else:
            err, done = calls.port_get(port, 5000)
            assert err == 0 and done == [op]
    return calls.op_result(op)[0]


@wine_only
@pytest.mark.parametrize("notify", ["NOTIFY_EVENT", "NOTIFY_ROUTINE", "NOTIFY_PORT"])
def test_reservation_ioctls_overlapped_not_supported(calls, sock, port, notify):
    if notify == "NOTIFY_PORT":
        assert calls.port_attach(port, sock.fileno()) == 0
    for code, data, out_size in _reservation_ops(calls):
        op = calls.op_new(getattr(calls, notify), code, data, out_size)
        try:
            started = calls.op_start(op, sock.fileno())
            if started == WSA_IO_PENDING:
                status = _finish(calls, op, port if notify == "NOTIFY_PORT" else None)
            else:
                status = started
            # Wine: the port's packet says Win32 50; the layer reports the
            # Winsock code, as through the event or the routine.
            assert status == WSAEOPNOTSUPP, hex(code)
            exc = from_winerror(status, "t")
            assert isinstance(exc, NotSupported)
            assert exc.errno == NotSupported.default_errno
        finally:
            calls.op_free(op)


@pytest.mark.parametrize("notify", ["NOTIFY_EVENT", "NOTIFY_ROUTINE", "NOTIFY_PORT"])
def test_immediate_success(calls, sock, port, notify):
    # FIONREAD finishes at once.  With a routine or a port, Windows still
    # delivers the notification, and the op lives until it is consumed.
    sock.bind(("127.0.0.1", 0))
    if notify == "NOTIFY_PORT":
        assert calls.port_attach(port, sock.fileno()) == 0
    op = calls.op_new(getattr(calls, notify), FIONREAD, b"", 4, 9)
    try:
        assert calls.op_start(op, sock.fileno()) in (0, WSA_IO_PENDING)
        if notify == "NOTIFY_PORT":
            err, done = calls.port_get(port, 5000)
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


def test_routine_op_freed_by_its_caller_is_freed_by_its_routine(calls, sock):
    kept = _pending(calls, calls.NOTIFY_ROUTINE, sock)
    dropped = _pending(calls, calls.NOTIFY_ROUTINE, sock)
    calls.op_free(dropped)
    sock.close()
    # Both routines run in this alertable wait; the dropped op's frees it.
    assert calls.op_wait(kept, 5000) == 0
    assert calls.op_result(kept)[0] == ERROR_OPERATION_ABORTED
    calls.op_free(kept)


_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_k32.PostQueuedCompletionStatus.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t,
                                            ctypes.c_void_p]


@pytest.mark.parametrize("key", [0, 0x5A5A])
def test_port_get_skips_foreign_packets(calls, sock, port, key):
    # Someone else posts to our port with an OVERLAPPED of theirs (followed
    # here by guard bytes), or with none.  port_get must skip both, and never
    # write through theirs: the guard and the OVERLAPPED stay as they were.
    size = 32  # sizeof(OVERLAPPED) on win64
    foreign = ctypes.create_string_buffer(b"\xab" * (size + 64), size + 64)
    before = foreign.raw
    for overlapped in (ctypes.addressof(foreign), None):
        assert _k32.PostQueuedCompletionStatus(port, 4, key, overlapped)
    # Our own op after them still comes through.
    assert calls.port_attach(port, sock.fileno()) == 0
    op = _pending(calls, calls.NOTIFY_PORT, sock, key=3)
    try:
        assert calls.op_cancel(op) == 0
        got = []
        for _ in range(10):
            err, done = calls.port_get(port, 5000)
            assert err == 0
            got += done
            if got:
                break
        assert got == [op]
        assert calls.op_result(op) == (ERROR_OPERATION_ABORTED, 0)
    finally:
        calls.op_free(op)
    assert foreign.raw == before


def test_port_error_is_the_winsock_code(calls, sock, port):
    # The same mistake gives the same code through a port as through an
    # event (and as the synchronous call): a control code nobody offers.
    bogus = 0x98000000 | 0x7ff  # _WSAIOW(IOC_VENDOR, 2047)
    statuses = []
    for notify in (calls.NOTIFY_EVENT, calls.NOTIFY_PORT):
        if notify == calls.NOTIFY_PORT:
            assert calls.port_attach(port, sock.fileno()) == 0
        op = calls.op_new(notify, bogus, b"", 0)
        try:
            started = calls.op_start(op, sock.fileno())
            statuses.append(_finish(calls, op, port if notify == calls.NOTIFY_PORT else None)
                            if started == WSA_IO_PENDING else started)
        finally:
            calls.op_free(op)
    assert statuses[0] == statuses[1] and statuses[0] > 10000, statuses
