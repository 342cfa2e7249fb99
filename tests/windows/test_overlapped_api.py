"""The public overlapped API on its Windows layer (_overlapped_iocp.py):
Overlapped futures over real overlapped WSAIoctl, CompletionPort over a real
I/O completion port, and portreserve.aio on the default (proactor) loop.

Under Wine the reservation ioctls are not offered, so their tests check that
the failure arrives the documented way.  SIO_ADDRESS_LIST_CHANGE really pends
(on Windows and under Wine) until an address changes, which never happens
during a test: started through the engine's _start (any control code), it
exercises pending, cancel, closesocket and closing the port.
"""

import asyncio
import collections
import concurrent.futures
import ctypes
import gc
import socket
import threading
import time
from ctypes import wintypes

import pytest

from portreserve import (
    CompletionPort,
    InvalidParameter,
    NotSupported,
    OperationAborted,
    PortReservationError,
    ReservationNotFound,
    aio,
)
from portreserve import _overlapped_iocp, _windows
from portreserve.lowlevel import (
    acquire_port_reservation_overlapped,
    associate_port_reservation_overlapped,
    release_port_reservation_overlapped,
)
from wine_detect import WINE, wine_only

SIO_ADDRESS_LIST_CHANGE = 0x28000017
FIONREAD = 0x4004667F  # finishes inside WSAIoctl
WSAEOPNOTSUPP = 10045
ERROR_OPERATION_ABORTED = 995

def _start_ioctl(sock, code, in_data=b"", out_size=0, *, port=None, key=0):
    """Any control code through the engine; the result is the output buffer."""
    return _overlapped_iocp._start("test", f"WSAIoctl {code:#010x}", sock, code, in_data,
                                   out_size, bytes, port, key)


_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_k32.GetCurrentProcess.restype = ctypes.c_void_p
_k32.GetProcessHandleCount.argtypes = [ctypes.c_void_p, ctypes.POINTER(wintypes.DWORD)]
_k32.GetHandleInformation.argtypes = [ctypes.c_void_p, ctypes.POINTER(wintypes.DWORD)]


def _handle_count() -> int:
    """Open handles of this process.

    GetProcessHandleCount; Wine's always says 0, so there we count the
    handle values (small multiples of 4 under Wine) that GetHandleInformation
    accepts.  Collects first: a finished thread's handle goes with its object.
    """
    gc.collect()
    n = wintypes.DWORD()
    assert _k32.GetProcessHandleCount(_k32.GetCurrentProcess(), ctypes.byref(n))
    if n.value or not WINE:
        return n.value
    flags = wintypes.DWORD()
    return sum(1 for h in range(4, 1 << 14, 4) if _k32.GetHandleInformation(h, ctypes.byref(flags)))


def _settled(before: int, limit: float = 10.0) -> int:
    """The handle count once it is back to ``before`` (waiter threads end
    just after their op), or whatever it is after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        now = _handle_count()
        if now <= before or time.monotonic() > deadline:
            return now
        time.sleep(0.01)


def _waiters() -> list:
    return [t for t in threading.enumerate() if t.name == "portreserve-waiter"]


def _no_waiters(limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while _waiters():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def sock():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        yield s


@pytest.fixture
def port():
    with CompletionPort() as p:
        yield p


def _pending(sock, port=None, key=0):
    op = _start_ioctl(sock, SIO_ADDRESS_LIST_CHANGE, port=port, key=key)
    assert not op.done() and op.running()
    return op


def _drain(port, count, timeout=10.0):
    """Completions from ``port`` until ``count`` came (fails after ``timeout``)."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} completions came"
        got += port.get(timeout=0.5)
    return got


def _reservation_calls(sock):
    return [
        lambda **kw: acquire_port_reservation_overlapped(sock, 0, 4, **kw),
        lambda **kw: release_port_reservation_overlapped(sock, 1, **kw),
        lambda **kw: associate_port_reservation_overlapped(sock, 1, **kw),
    ]


def _assert_not_supported(exc, winerrors):
    assert isinstance(exc, NotSupported), repr(exc)
    assert exc.errno == NotSupported.default_errno  # POSIX EOPNOTSUPP, on every system
    assert exc.winerror in winerrors, exc


# ---- the reservation ioctls, overlapped, under Wine ----------------------

@wine_only
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_reservation_ioctls_without_port_raise_not_supported(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        for start in _reservation_calls(s):
            op = start()
            # Wine: the event op "pends" with its outcome final (10045).
            _assert_not_supported(op.exception(timeout=10), {WSAEOPNOTSUPP})
            with pytest.raises(NotSupported):
                op.result(0)
            assert not op.cancel()  # it is over: nothing to abort
    assert _no_waiters()


@wine_only
def test_reservation_ioctls_with_port_deliver_each_key_once(sock, port):
    ops = [start(port=port, key=("k", i)) for i, start in enumerate(_reservation_calls(sock))]
    got = _drain(port, len(ops))
    assert sorted(c.key for c in got) == [("k", 0), ("k", 1), ("k", 2)]
    for completion in got:
        assert completion.op is ops[completion.key[1]]
        assert completion.op.done()
        # Wine: the port's packet says ERROR_NOT_SUPPORTED (50); reported as
        # the same Winsock code as without a port and as the synchronous call.
        _assert_not_supported(completion.op.exception(0), {WSAEOPNOTSUPP})
    assert port.get(timeout=0.2) == []  # exactly once
    assert port.fileno() == -1


@wine_only
def test_result_dequeues_its_own_packet(sock, port):
    # Nobody calls get(): result() dequeues, and get() still sees the key once.
    op = acquire_port_reservation_overlapped(sock, 0, 4, port=port, key="mine")
    with pytest.raises(NotSupported):
        op.result(timeout=10)
    assert [(c.key, c.op) for c in port.get(timeout=0)] == [("mine", op)]
    assert port.get(timeout=0) == []


# ---- pending operations: cancel, closesocket, closing the port -----------

def test_cancel_pending_without_port(sock):
    op = _pending(sock)
    done, _ = concurrent.futures.wait([op], timeout=0.2)
    assert not done
    assert op.cancel() is True
    assert op.cancelled() and op.done()
    with pytest.raises(concurrent.futures.CancelledError):
        op.result(0)
    assert op.cancel() is True  # still cancelled, as any Future
    assert _no_waiters()


def test_cancel_pending_with_port(sock, port):
    op = _pending(sock, port, key=5)
    assert port.get(timeout=0.1) == []
    assert op.cancel() is True  # dequeued its own packet to know
    assert op.cancelled()
    assert [(c.key, c.op) for c in port.get(timeout=0)] == [(5, op)]
    assert port.get(timeout=0.1) == []


def test_cancel_while_another_thread_waits_in_get(sock, port):
    op = _pending(sock, port, key="x")
    got = []
    consumer = threading.Thread(target=lambda: got.extend(port.get(timeout=10)))
    consumer.start()
    time.sleep(0.1)  # let it block in GetQueuedCompletionStatusEx
    assert op.cancel() is True
    consumer.join(10)
    assert [(c.key, c.op) for c in got] == [("x", op)]


def test_done_callback_may_use_the_port(sock, port):
    # The callback runs in the thread that dequeued op1's packet; cancel()
    # there dequeues op2's packet itself instead of waiting for itself.
    op1, op2 = _pending(sock, port, key=1), _pending(sock, port, key=2)
    answers = []
    op1.add_done_callback(lambda _: answers.append(op2.cancel()))
    assert op1.cancel() is True
    assert answers == [True] and op2.cancelled()
    assert sorted(c.key for c in _drain(port, 2)) == [1, 2]
    assert port.get(timeout=0.1) == []


@pytest.mark.parametrize("with_port", [False, True])
def test_too_late_to_cancel(sock, port, with_port):
    # FIONREAD finishes inside WSAIoctl: cancel() finds nothing to abort.
    sock.bind(("127.0.0.1", 0))
    op = _start_ioctl(sock, FIONREAD, b"", 4, port=port if with_port else None, key=1)
    assert op.cancel() is False
    assert not op.cancelled()
    assert op.result(0) == b"\0\0\0\0"  # nothing queued to read
    if with_port:
        assert [c.key for c in port.get(timeout=0)] == [1]


def test_closesocket_while_pending_without_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    op = _pending(s)
    s.close()
    exc = op.exception(timeout=10)
    assert isinstance(exc, OperationAborted), repr(exc)
    assert (exc.errno, exc.winerror) == (OperationAborted.default_errno, ERROR_OPERATION_ABORTED)
    assert "socket was closed" in str(exc)
    assert op.cancel() is False  # ended by the close, not by a cancel
    assert _no_waiters()


def test_closesocket_while_pending_with_port(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ops = [_pending(s, port, key=k) for k in range(3)]
    s.close()
    got = _drain(port, 3)
    assert sorted(c.key for c in got) == [0, 1, 2]
    for op in ops:
        assert isinstance(op.exception(0), OperationAborted)
    assert port.get(timeout=0.1) == []


def test_close_port_with_ops_pending_frees_everything(sock):
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    before = _handle_count()
    port = CompletionPort()
    assert _handle_count() > before  # the IOCP itself: the count sees handles
    ops = [_pending(s, port, key=k) for k in range(4) for s in (sock, other)]
    port.close()
    for op in ops:
        exc = op.exception(0)  # already over when close() returns
        assert isinstance(exc, OperationAborted), repr(exc)
        assert "completion port was closed" in str(exc)
    assert _settled(before) <= before
    assert port.closed
    with pytest.raises(InvalidParameter):
        port.get(timeout=0)
    with pytest.raises(InvalidParameter):
        _pending(sock, port)
    port.close()  # idempotent
    other.close()


def test_close_wakes_a_thread_blocked_in_get(sock):
    port = CompletionPort()
    op = _pending(sock, port)
    raised = []

    def consume():
        try:
            port.get()  # no timeout: only close() ends it
        except InvalidParameter as exc:
            raised.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.1)
    port.close()
    consumer.join(10)
    assert not consumer.is_alive() and len(raised) == 1
    assert isinstance(op.exception(0), OperationAborted)


def test_no_threads_or_handles_left_without_port():
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    before = _handle_count()
    ops = [_pending(s) for s in socks for _ in range(2)]
    assert len(_waiters()) == len(ops)  # one per op still pending
    assert _handle_count() > before  # their events
    for op in ops[:4]:
        assert op.cancel()
    for s in socks:
        s.close()
    for op in ops[4:]:
        assert isinstance(op.exception(timeout=10), OperationAborted)
    assert _no_waiters()
    assert _settled(before - len(socks)) <= before - len(socks)  # the sockets went too


def test_a_socket_takes_one_port(sock):
    with CompletionPort() as first, CompletionPort() as second:
        _pending(sock, first).cancel()
        _pending(sock, first).cancel()  # attached already: not again
        with pytest.raises(InvalidParameter, match="another completion port"):
            _pending(sock, second)
        # Without a port an op leaves the socket alone: still cancellable.
        assert _pending(sock).cancel()


def test_many_ops_each_key_delivered_once(port):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    per_socket = 50
    ops = {}
    for i, s in enumerate(socks):
        for j in range(per_socket):
            key = (i, j)
            ops[key] = _pending(s, port, key)
    total = len(ops)
    seen = collections.Counter()
    lock = threading.Lock()

    def consume():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if sum(seen.values()) >= total:
                    return
            for completion in port.get(timeout=0.2, max_entries=7):
                assert completion.op.done()
                assert completion.op is ops[completion.key]
                with lock:
                    seen[completion.key] += 1

    consumers = [threading.Thread(target=consume) for _ in range(4)]
    for t in consumers:
        t.start()
    # Half end by cancel(), half by closing their sockets.
    for key, op in ops.items():
        if key[1] % 2:
            assert op.cancel()
    for s in socks:
        s.close()
    for t in consumers:
        t.join(60)
    assert set(seen) == set(ops) and set(seen.values()) == {1}
    assert port.get(timeout=0.1) == []
    for key, op in ops.items():
        if key[1] % 2:
            assert op.cancelled()
        else:
            assert isinstance(op.exception(0), OperationAborted)


def test_bad_arguments():
    with socket.socket() as s:
        with pytest.raises(TypeError):
            acquire_port_reservation_overlapped(s, 0, 4, port=object())
        with CompletionPort() as p:
            with pytest.raises(InvalidParameter):
                p.get(max_entries=0)
            with pytest.raises(InvalidParameter):
                p.get(timeout=-1)
            # NaN never ends a wait loop; inf means for ever (as None).
            with pytest.raises(InvalidParameter):
                p.get(timeout=float("nan"))
            assert p.get(timeout=0) == []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                op = _pending(s2, p, key="inf")
                op.cancel()
                assert [(c.key, c.op) for c in p.get(timeout=float("inf"))] == [("inf", op)]


# ---- outcomes as the reference pages allow them ------------------------

WSAEINTR = 10004


def _op(sock, decode=bytes):
    return _overlapped_iocp._IoctlOp("t", "WSAIoctl", 0, sock, None, decode)


def test_cancel_ending_in_wsaeintr_is_cancelled(sock):
    # The reference pages: an aborted reservation IOCTL ends with
    # WSA_OPERATION_ABORTED or WSAEINTR.  Either, after our cancel(), is a
    # cancel; without one it is OperationAborted.
    for status in (ERROR_OPERATION_ABORTED, WSAEINTR):
        asked = _op(sock)
        asked._aborted_by = "cancel"
        asked._settle(status, b"")
        assert asked.cancelled(), status
        unasked = _op(sock)
        unasked._settle(status, b"")
        assert isinstance(unasked.exception(0), OperationAborted), status


def test_short_result_is_an_error(sock):
    # A "successful" acquire that wrote less than an instance is not (0, 0, 0).
    op = _op(sock, _overlapped_iocp.decode_instance)
    op._settle(0, b"\0" * 8)
    exc = op.exception(0)
    assert type(exc) is PortReservationError and exc.winerror == 13, exc
    whole = _op(sock, _overlapped_iocp.decode_instance)
    whole._settle(0, b"\xc3\x50\x04\x00" + b"\0" * 4 + (7).to_bytes(8, "little"))
    assert tuple(whole.result(0)) == (50000, 4, 7)


def test_associate_refused_token_is_not_found(sock):
    # WSAEINVAL from SIO_ASSOCIATE_PORT_RESERVATION on an unbound socket: the
    # token is the only input left, so the token is unknown (README).
    exc = _windows.associate_error(10022, "associate", sock, 0x1234)
    assert type(exc) is ReservationNotFound and exc.winerror == 1168 and "4660" in str(exc)
    # Through the overlapped path too.
    op = _overlapped_iocp._IoctlOp(
        "t", "SIO_ASSOCIATE_PORT_RESERVATION", 0, sock, None, bytes,
        lambda status, what: _windows.associate_error(status, what, sock, 0x1234))
    op._settle(10022, b"")
    assert type(op.exception(0)) is ReservationNotFound
    sock.bind(("127.0.0.1", 0))  # on a bound socket it is the socket that is wrong
    exc = _windows.associate_error(10022, "associate", sock, 0x1234)
    assert type(exc) is InvalidParameter and exc.winerror == 10022


def test_get_skips_foreign_packets(port):
    # A packet posted to our port by someone else, with an OVERLAPPED of
    # theirs: get() neither returns it nor writes through it.
    post = _k32.PostQueuedCompletionStatus
    post.argtypes = [ctypes.c_void_p, wintypes.DWORD, ctypes.c_size_t, ctypes.c_void_p]
    foreign = ctypes.create_string_buffer(b"\xab" * 96, 96)
    before = foreign.raw
    assert post(port._iocp, 4, 0, ctypes.addressof(foreign))
    assert port.get(timeout=0.2) == []
    assert foreign.raw == before


# ---- asyncio, on the default loop (proactor on Windows) ------------------

def _ticking(coro_fn):
    """Run coro_fn(ticks) on the default loop next to a ticker; returns the
    ticker's count at each moment coro_fn records."""
    async def main():
        assert type(asyncio.get_running_loop()).__name__ == "ProactorEventLoop"
        ticks = [0]

        async def tick():
            while True:
                ticks[0] += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        try:
            return await coro_fn(ticks)
        finally:
            ticker.cancel()

    return asyncio.run(main())


@wine_only
def test_aio_reservation_raises_not_supported():
    async def body(ticks):
        with socket.socket() as s:
            with pytest.raises(NotSupported) as info:
                await asyncio.wait_for(aio.acquire_port_reservation(s, 0, 4), 10)
            _assert_not_supported(info.value, {WSAEOPNOTSUPP})
            with pytest.raises(NotSupported):
                await asyncio.wait_for(aio.release_port_reservation(s, 1), 10)
            # Our op did not attach the socket to an IOCP: the proactor can
            # still take it.
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(s, listener.getsockname()), 10)

    _ticking(body)


def test_aio_cancel_pending_op():
    started = []

    def submit(port, key):
        op = _start_ioctl(sock, SIO_ADDRESS_LIST_CHANGE, port=port, key=key)
        started.append(op)
        return op

    async def body(ticks):
        task = asyncio.create_task(aio._run(submit))
        await asyncio.sleep(0.2)
        assert len(started) == 1 and not started[0].done()
        seen = ticks[0]
        await asyncio.sleep(0.1)
        assert ticks[0] > seen  # the loop runs while the op pends
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        return started[0]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        op = _ticking(body)
    assert op.cancelled()
    assert _no_waiters()
