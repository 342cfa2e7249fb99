"""Overlapped operations and completion ports, against the real kernel.

Operations are kept pending deterministically with the documented test hook
_overlapped_threads._block_workers(port), which occupies every worker thread of a
port until released: what is submitted afterwards stays queued, not started.
"""

import asyncio
import collections
import concurrent.futures
import errno
import select
import socket
import sys
import threading
import time

import pytest

import portreserve
from portreserve import InvalidParameter, NotSupported, OperationAborted, lowlevel
from portreserve import _overlapped_threads
from portreserve._overlapped import (
    Completion,
    CompletionPort,
    Overlapped,
    acquire_port_reservation_overlapped,
    associate_port_reservation_overlapped,
    release_port_reservation_overlapped,
)

from helpers import can_bind, freed, run_python, free_block, open_fds

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX submission layer")




def _wait_until(predicate, what: str, limit: float = 30.0) -> None:
    """Poll a state (not a time): fail if it is not reached within ``limit``."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


def _new_threads(before: set) -> list:
    return [t for t in threading.enumerate() if t not in before]


def test_acquire_and_release_without_port():
    with socket.socket() as sock:
        op = acquire_port_reservation_overlapped(sock, 0, 4)
        assert isinstance(op, Overlapped) and isinstance(op, concurrent.futures.Future)
        instance = op.result(timeout=30)
        assert instance.number_of_ports == 4 and instance.token
        assert not can_bind(instance.start_port + 3)
        assert release_port_reservation_overlapped(sock, instance.token).result(30) is None
        assert freed(instance.start_port + 3)


def test_associate_then_bind():
    with portreserve.reserve(2) as res, socket.socket() as sock:
        associate_port_reservation_overlapped(sock, res.token).result(timeout=30)
        lowlevel.bind_associated(sock, ("", 0))
        assert sock.getsockname()[1] in res.ports


def test_failure_is_the_future_exception():
    with socket.socket() as sock:
        op = release_port_reservation_overlapped(sock, 12345)
        assert isinstance(op.exception(timeout=30), InvalidParameter)
        start = free_block(1)
        with portreserve.reserve(1, start=start):
            exc = acquire_port_reservation_overlapped(sock, start, 1).exception(timeout=30)
        assert isinstance(exc, portreserve.ReservationConflict)


@pytest.mark.parametrize("timeout", [float("nan"), -0.5, float("-inf")])
def test_get_refuses_a_timeout_that_is_no_duration(timeout):
    # NaN compares false with everything: a wait on it never ended (100 % CPU).
    with CompletionPort() as port:
        with pytest.raises(InvalidParameter) as info:
            port.get(timeout=timeout)
        assert (info.value.errno, info.value.winerror) == (22, 10022)
        assert str(timeout) in str(info.value)
        with pytest.raises(TypeError):
            port.get(timeout="1")


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_get_with_an_endless_timeout_waits_for_the_completion(timeout):
    # inf (or more than any system waits) means wait for ever, like None.
    with CompletionPort() as port, socket.socket() as sock:
        op = release_port_reservation_overlapped(sock, 12345, port=port, key="k")
        got = port.get(timeout=timeout)
        assert [(c.key, c.op) for c in got] == [("k", op)]


def test_bad_arguments_raise_at_call_time_and_queue_nothing():
    with CompletionPort() as port, socket.socket() as sock:
        with pytest.raises(InvalidParameter):
            acquire_port_reservation_overlapped(sock, 0, 0, port=port)
        with pytest.raises(InvalidParameter):
            acquire_port_reservation_overlapped(sock, 65535, 2, port=port)
        with pytest.raises(TypeError):
            acquire_port_reservation_overlapped(sock, "80", 1, port=port)
        with pytest.raises(InvalidParameter):
            release_port_reservation_overlapped(sock, 0, port=port)
        with pytest.raises(TypeError):
            associate_port_reservation_overlapped(sock, 1, port="not a port")
        with socket.socket(socket.AF_UNIX) as unix, pytest.raises(NotSupported):
            acquire_port_reservation_overlapped(unix, 0, 1, port=port)
        closed = socket.socket()
        closed.close()
        with pytest.raises(InvalidParameter):
            associate_port_reservation_overlapped(closed, 1, port=port)
        assert port.get(timeout=0) == []
        assert port._workers._threads == []  # nothing was ever queued


def test_every_key_delivered_exactly_once():
    threads, per_thread = 8, 1000
    res = portreserve.reserve(1)
    got = collections.Counter()
    lock = threading.Lock()
    errors = []
    with CompletionPort() as port:
        def produce(t):
            try:
                with socket.socket() as sock:
                    for i in range(per_thread):
                        if i % 3:  # a success
                            associate_port_reservation_overlapped(
                                sock, res.token, port=port, key=(t, i))
                        else:  # a failure completes too
                            release_port_reservation_overlapped(sock, 99, port=port, key=(t, i))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def consume():
            while True:
                with lock:
                    if sum(got.values()) >= threads * per_thread or errors:
                        return
                for completion in port.get(timeout=0.1, max_entries=50):
                    if not completion.op.done():
                        errors.append(f"{completion} dequeued before it was done")
                    with lock:
                        got[completion.key] += 1

        workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        workers += [threading.Thread(target=consume) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not errors
        assert port.get(timeout=0) == []
    res.close()
    expected = {(t, i) for t in range(threads) for i in range(per_thread)}
    assert set(got) == expected
    assert set(got.values()) == {1}


def test_get_is_oldest_first_and_honours_max_entries():
    with CompletionPort(concurrency=1) as port, socket.socket() as sock:
        unblock = _overlapped_threads._block_workers(port)
        ops = [release_port_reservation_overlapped(sock, 7, port=port, key=k) for k in range(5)]
        assert port.get(timeout=0) == []
        unblock()
        for op in ops:
            op.exception(timeout=30)
        _wait_until(lambda: len(port._done) == 5, "all five are queued")
        batches = [port.get(max_entries=2), port.get(max_entries=2), port.get(max_entries=2)]
        assert [[c.key for c in b] for b in batches] == [[0, 1], [2, 3], [4]]
        assert all(isinstance(c, Completion) for b in batches for c in b)
        assert port.get(timeout=0.05) == []
        with pytest.raises(InvalidParameter):
            port.get(max_entries=0)


def test_keys_are_any_object_handed_back_as_given():
    """A completion key is the caller's own object (docs/API.md section 2):
    it never reaches the system, so no range applies - not even Windows'
    ULONG_PTR - and it comes back as it was given."""
    keys = [-1, 2**64, 2**200, None, object(), ("k", 1), "k", 1.5]
    with CompletionPort() as port, socket.socket() as sock:
        for key in keys:
            release_port_reservation_overlapped(sock, 7, port=port, key=key)
        got = []
        for _ in range(100):  # bounded: each get() waits for at least one
            if len(got) == len(keys):
                break
            got += port.get(timeout=30)
        assert sorted(map(id, (c.key for c in got))) == sorted(map(id, keys))


def test_fileno_with_select():
    with CompletionPort() as port, socket.socket() as sock:
        assert select.select([port], [], [], 0)[0] == []
        op = acquire_port_reservation_overlapped(sock, 0, 1, port=port, key="a")
        assert select.select([port], [], [], 30)[0] == [port]
        # still readable until the queue is drained
        assert select.select([port.fileno()], [], [], 0)[0] == [port.fileno()]
        [completion] = port.get(timeout=0)
        assert completion.key == "a" and completion.op is op
        assert select.select([port], [], [], 0)[0] == []
        lowlevel.release_port_reservation(sock, op.result().token)


def test_fileno_with_asyncio():
    async def main(port, sock):
        loop = asyncio.get_running_loop()
        got = []
        all_in = loop.create_future()

        def ready():
            got.extend(port.get(timeout=0))
            if len(got) == 20:
                all_in.set_result(None)

        loop.add_reader(port.fileno(), ready)
        try:
            for k in range(20):
                release_port_reservation_overlapped(sock, 5, port=port, key=k)
            await asyncio.wait_for(all_in, 30)
        finally:
            loop.remove_reader(port.fileno())
        return sorted(c.key for c in got)

    with CompletionPort() as port, socket.socket() as sock:
        assert asyncio.run(main(port, sock)) == list(range(20))


def test_wrap_future():
    async def main(sock):
        op = acquire_port_reservation_overlapped(sock, 0, 2)
        return await asyncio.wrap_future(op)

    with socket.socket() as sock:
        assert asyncio.run(main(sock)).number_of_ports == 2


def test_cancel_before_start_aborts():
    start = free_block(3)
    with CompletionPort(concurrency=1) as port, socket.socket() as sock:
        unblock = _overlapped_threads._block_workers(port)
        op = acquire_port_reservation_overlapped(sock, start, 3, port=port, key="k")
        assert not op.running() and not op.done()
        assert op.cancel() is True
        assert op.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            op.result(0)
        assert port.get(timeout=0) == [Completion("k", op)]  # queued once, at once
        unblock()
        # the worker skips it; a later operation proves the worker moved on
        release_port_reservation_overlapped(sock, 1, port=port, key="after").exception(30)
        assert [c.key for c in port.get(timeout=30)] == ["after"]
        assert freed(start) and freed(start + 2)  # it never ran


def test_cancel_after_start_or_completion_returns_false():
    with CompletionPort(concurrency=1) as port, socket.socket() as sock:
        op = acquire_port_reservation_overlapped(sock, 0, 5000, port=port, key="big")
        _wait_until(lambda: op.running() or op.done(), "the operation started")
        assert op.cancel() is False  # running or done: too late
        instance = op.result(timeout=60)
        assert not op.cancelled()
        assert op.cancel() is False  # done
        assert op.result() == instance
        assert [c.key for c in port.get(timeout=30)] == ["big"]
        assert not can_bind(instance.start_port)
        lowlevel.release_port_reservation(sock, instance.token)
        assert freed(instance.start_port)


def test_close_socket_with_operations_pending():
    start = free_block(2)
    with portreserve.reserve(1) as res, CompletionPort(concurrency=1) as port:
        sock, other = socket.socket(), socket.socket(type=socket.SOCK_DGRAM)
        unblock = _overlapped_threads._block_workers(port)
        acquire = acquire_port_reservation_overlapped(sock, start, 2, port=port, key=1)
        associate = associate_port_reservation_overlapped(sock, res.token, port=port, key=2)
        survivor = release_port_reservation_overlapped(other, 3, port=port, key=3)
        sock.close()
        unblock()
        for op in (acquire, associate):
            exc = op.exception(timeout=30)
            assert isinstance(exc, OperationAborted)
            assert exc.errno == errno.ECANCELED and exc.winerror == 995
        assert isinstance(survivor.exception(timeout=30), InvalidParameter)
        _wait_until(lambda: len(port._done) == 3, "three completions are queued")
        assert sorted(c.key for c in port.get()) == [1, 2, 3]
        other.close()
    assert freed(start) and freed(start + 1)


def test_close_port_with_operations_pending():
    threads_before, fds_before = set(threading.enumerate()), open_fds()
    start = free_block(2)
    sock = socket.socket()
    port = CompletionPort(concurrency=2)
    fd = port.fileno()
    _overlapped_threads._block_workers(port)  # released by close()
    ops = [acquire_port_reservation_overlapped(sock, start, 2, port=port, key=0)]
    ops += [associate_port_reservation_overlapped(sock, 9, port=port, key=k) for k in range(1, 6)]
    waiter_saw = []

    def waiter():
        try:
            port.get()
        except InvalidParameter as exc:
            waiter_saw.append(exc)

    blocked = threading.Thread(target=waiter)
    blocked.start()
    _wait_until(lambda: port._cond._waiters, "the waiter is blocked in get()")
    port.close()
    blocked.join(30)
    assert len(waiter_saw) == 1
    for op in ops:
        assert isinstance(op.exception(timeout=0), OperationAborted)
    assert not any(op.cancelled() for op in ops)
    port.close()  # idempotent
    assert port.closed
    with pytest.raises(InvalidParameter):
        port.get(timeout=0)
    with pytest.raises(InvalidParameter):
        port.fileno()
    with pytest.raises(InvalidParameter):
        associate_port_reservation_overlapped(sock, 9, port=port)
    sock.close()
    assert freed(start)
    assert _new_threads(threads_before) == []
    assert str(fd) not in open_fds() and open_fds() == fds_before


def test_no_threads_or_descriptors_left_after_close():
    threads_before, fds_before = set(threading.enumerate()), open_fds()
    with CompletionPort(concurrency=4) as port:
        socks = [socket.socket() for _ in range(50)]
        ops = [acquire_port_reservation_overlapped(s, 0, 2, port=port, key=i)
               for i, s in enumerate(socks)]
        for s, op in zip(socks, ops):
            lowlevel.release_port_reservation(s, op.result(timeout=60).token)
            s.close()
        assert 1 <= len(port._workers._threads) <= 4  # ever started: bounded
    assert _new_threads(threads_before) == []
    assert open_fds() == fds_before


def test_idle_workers_exit():
    with socket.socket() as sock:
        acquire_port_reservation_overlapped(sock, 0, 1).result(timeout=30)
    workers = _overlapped_threads._default_workers()
    for t in list(workers._threads):
        t.join(timeout=_overlapped_threads._IDLE_SECONDS + 30)
        assert not t.is_alive()


def test_exit_with_operations_pending_and_running():
    # atexit aborts what is queued and waits for what runs: no hang, no error.
    result = run_python("""
        import socket
        from portreserve import _overlapped as o, _overlapped_threads
        port = o.CompletionPort(concurrency=1)
        _overlapped_threads._block_workers(port)
        pending = o.acquire_port_reservation_overlapped(socket.socket(), 0, 3, port=port)
        running = o.acquire_port_reservation_overlapped(socket.socket(), 0, 2000)
        print("submitted")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "submitted\n" and result.stderr == ""


def test_one_engine_chosen_without_cycles():
    # The public calls go to the threads engine here; the engines import only
    # the shared types, never the module that chooses between them.
    import ast
    import pathlib
    from portreserve import _overlapped

    assert _overlapped.CompletionPort is _overlapped_threads.CompletionPort
    src = pathlib.Path(_overlapped.__file__).parent
    for engine in ("_overlapped_threads.py", "_overlapped_iocp.py", "_overlapped_types.py"):
        tree = ast.parse((src / engine).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names} | {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "_overlapped" not in imported, engine
