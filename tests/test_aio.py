"""portreserve.aio against the real kernel.

Operations are kept pending with the documented test hooks aio._loop_port()
(the running loop's completion port, kept open) and
_overlapped_threads._block_workers(port) (occupies the port's workers).
"""

import asyncio
import socket
import sys
import threading
import time

import pytest

import portreserve
from portreserve import InvalidParameter, aio, lowlevel
from portreserve import _overlapped_threads

from helpers import can_bind, freed, free_block, open_fds

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX submission layer")




async def _until(predicate, what: str, limit: float = 30.0) -> None:
    """Yield to the loop until a state is reached (fail after ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0)


def _needs_fds(count: int) -> None:
    import resource  # POSIX only: the module must still collect on Windows

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < count + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit is below {count + 200}")


def test_reserve():
    async def main():
        tcp = await aio.reserve(3)
        udp = await aio.reserve(2, protocol="UDP")
        return tcp, udp

    tcp, udp = asyncio.run(main())
    assert isinstance(tcp, portreserve.Reservation) and tcp.count == 3
    assert udp.protocol is portreserve.Protocol.UDP
    assert not can_bind(tcp.start + 2)
    assert not can_bind(udp.start, udp=True)
    tcp.close()
    udp.close()
    assert freed(tcp.start + 2)


def test_low_level_calls():
    async def main(sock, other):
        instance = await aio.acquire_port_reservation(sock, 0, 4)
        await aio.associate_port_reservation(other, instance.token)
        lowlevel.bind_associated(other, ("", 0))
        assert other.getsockname()[1] in range(instance.start_port, instance.start_port + 4)
        await aio.release_port_reservation(sock, instance.token)
        return instance

    with socket.socket() as sock, socket.socket() as other:
        instance = asyncio.run(main(sock, other))
    assert freed(instance.start_port + 3)


def test_errors():
    async def main(sock):
        with pytest.raises(InvalidParameter):
            await aio.release_port_reservation(sock, 99)  # failure from the worker
        with pytest.raises(InvalidParameter):
            await aio.reserve(0)  # argument check
        with pytest.raises(InvalidParameter):
            await aio.acquire_port_reservation(sock, 65000, 1000)
        with pytest.raises(TypeError):
            await aio.associate_port_reservation(sock, "1")

    with socket.socket() as sock:
        asyncio.run(main(sock))


def test_concurrent_reservations_are_disjoint():
    _needs_fds(2000)

    async def main():
        return await asyncio.gather(*(aio.reserve(2) for _ in range(1000)))

    reservations = asyncio.run(main())
    try:
        ports = [p for r in reservations for p in r.ports]
        assert len(ports) == 2000 and len(set(ports)) == 2000
        assert all(not r.closed for r in reservations)
    finally:
        for r in reservations:
            r.close()


def test_large_reservation_does_not_stall_the_loop():
    _needs_fds(10000)

    async def main():
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = time.monotonic()
        res = await aio.reserve(10000)
        after = time.monotonic()
        tick.cancel()
        res.close()
        return [t for t in ticks if before < t < after]

    during = asyncio.run(main())
    # A reservation made on the loop's thread would allow no tick at all.
    assert len(during) >= 3, f"only {len(during)} ticks during the reservation"


async def _started(lp, coro):
    """Run ``coro`` as a task; return it and its operation once that has started.

    The workers are blocked until the operation is queued, so it is the one seen.
    """
    unblock = _overlapped_threads._block_workers(lp.port)
    task = asyncio.create_task(coro)
    queue = lp.port._workers._queue
    await _until(lambda: queue, "the operation is queued")
    op = queue[0]
    unblock()
    await _until(lambda: op.running() or op.done(), "the operation started")
    return task, op


def test_cancel_before_start_leaves_nothing():
    start = free_block(3)

    async def main():
        with aio._loop_port() as lp:
            unblock = _overlapped_threads._block_workers(lp.port)
            task = asyncio.create_task(aio.reserve(3, start=start))
            queue = lp.port._workers._queue
            await _until(lambda: queue, "the operation is queued")
            op = queue[0]
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            unblock()
            return op

    op = asyncio.run(main())
    assert op.cancelled()
    assert freed(start) and freed(start + 2)


def test_cancel_while_running_undoes_it():
    _needs_fds(10000)

    async def main():
        with aio._loop_port() as lp:
            task, op = await _started(lp, aio.reserve(10000))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return op

    op = asyncio.run(main())
    assert not op.cancelled()  # too late to abort: it ran ...
    res = op.result()
    assert res.closed  # ... and was undone before the task ended
    assert freed(res.start) and freed(res.start + 9999)


def test_cancelled_acquire_releases_the_socket_reservation():
    async def main(sock):
        with aio._loop_port() as lp:
            task, op = await _started(lp, aio.acquire_port_reservation(sock, 0, 3000))
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()  # again, while it waits for the operation to finish
            with pytest.raises(asyncio.CancelledError):
                await task
            return op.result()

    with socket.socket() as sock:
        instance = asyncio.run(main(sock))
        # released, not merely left to the socket's lifetime
        with pytest.raises(InvalidParameter):
            lowlevel.release_port_reservation(sock, instance.token)
        assert freed(instance.start_port)


def test_cancel_repeatedly_at_every_point():
    """Whatever moment the cancel lands, nothing is left reserved."""
    start = free_block(5)

    async def main():
        for turns in range(40):
            task = asyncio.create_task(aio.reserve(5, start=start))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                (await task).close()
            except asyncio.CancelledError:
                pass

    asyncio.run(main())
    assert all(freed(p) for p in (start, start + 4))


def test_no_threads_or_descriptors_left():
    threads_before, fds_before = set(threading.enumerate()), open_fds()

    async def main():
        reservations = await asyncio.gather(*(aio.reserve(1) for _ in range(20)))
        for r in reservations:
            r.close()
        with socket.socket() as sock:
            instance = await aio.acquire_port_reservation(sock, 0, 3)
            await aio.release_port_reservation(sock, instance.token)
        assert not aio._loop_ports  # closed as soon as nothing is in flight

    asyncio.run(main())
    assert [t for t in threading.enumerate() if t not in threads_before] == []
    assert open_fds() == fds_before


class _LoopWithoutReaders(asyncio.SelectorEventLoop):
    """Like Windows' ProactorEventLoop: no add_reader."""

    def add_reader(self, *args):
        raise NotImplementedError


def test_loop_without_add_reader():
    async def main():
        res = await aio.reserve(2)
        start = free_block(2)
        task = asyncio.create_task(aio.reserve(2, start=start))
        await asyncio.sleep(0)
        task.cancel()
        try:
            (await task).close()
        except asyncio.CancelledError:
            pass
        return res, start

    loop = _LoopWithoutReaders()
    try:
        res, start = loop.run_until_complete(main())
    finally:
        loop.close()
    assert res.count == 2 and not can_bind(res.start)
    res.close()
    assert freed(start)
