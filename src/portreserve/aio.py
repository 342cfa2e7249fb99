"""asyncio forms of the runtime reservation calls (docs/API.md section 2).

The work runs as overlapped operations (see _overlapped_types.py) on a completion
port that belongs to the running event loop and stays open while any aio
operation of that loop is in flight; so the loop never blocks, and no
thread or descriptor is left once the last operation has finished.

How the loop hears of completions: loop.add_reader on the port's pipe,
not a waiter thread.  The pipe is readable exactly while completions are
queued, so the selector loop itself is the waiter: one wake-up per batch of
completions, drained by get(timeout=0), which never blocks, and no extra
thread per loop.  A waiter thread would block in get() and hand each batch
over with call_soon_threadsafe - the same, with one more thread to manage.

Where that is not possible - a loop without add_reader (Windows'
ProactorEventLoop, which waits on its own IOCP and cannot wait on ours) or a
port without a descriptor (fileno() == -1, the Windows IOCP) - each
operation hands its outcome to the loop with call_soon_threadsafe from the
thread that finishes it.

On Windows that is a waiter thread, not the proactor, and the loop has no
port: each operation is an event op (see _overlapped_iocp.py), finished
inside WSAIoctl or by a thread waiting on its event.  Not the proactor,
because its IOCP takes only CPython's own _overlapped objects (it drops any
other packet), and not an IOCP of ours, because attaching the caller's
socket to one is for good: the proactor could then never take that socket
(CreateIoCompletionPort fails with 87).  An event op leaves it unattached.

Cancelling the awaiting task cancels the operation.  If it is too late (the
operation already started), the task waits for it - the work is bounded -
and undoes it, so that a cancelled task leaves no reservation behind.  On
Windows cancel() waits for the outcome of its CancelIoEx; the task asks for
the abort instead and awaits that outcome, so the loop never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import socket
import sys
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from . import _args, _overlapped
from ._engine import engine
from ._overlapped import CompletionPort, Overlapped
from ._records import PortReservationInstance, Protocol
from ._reservation import Reservation
from ._reservation import reserve as _reserve

__all__ = ["reserve", "acquire_port_reservation", "release_port_reservation",
           "associate_port_reservation"]


T = TypeVar("T")

if TYPE_CHECKING:
    # An operation's submission: (the loop's port or None, key) -> the operation.
    _Submit = Callable[[CompletionPort | None, Any], Overlapped[T]]


def _settle(done: asyncio.Future[T], op: concurrent.futures.Future[T]) -> None:
    """Copy the outcome of a finished ``op`` onto the loop's future ``done``."""
    if done.done():
        return
    if op.cancelled():
        done.cancel()
    elif (exc := op.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(op.result())


class _LoopPort:
    """The completion port of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # None on Windows: see the top of this module.
        self.port = None if sys.platform == "win32" else CompletionPort()
        self.users = 0
        self.watched = False
        if self.port is not None and self.port.fileno() >= 0:
            try:
                loop.add_reader(self.port.fileno(), self._drain)
                self.watched = True
            except NotImplementedError:
                pass

    def _drain(self) -> None:
        assert self.port is not None  # watched
        for completion in self.port.get(timeout=0):
            if isinstance(completion.key, asyncio.Future):  # not a test hook's op
                _settle(completion.key, completion.op)

    def start(self, submit: _Submit[T]) -> tuple[Overlapped[T], asyncio.Future[T]]:
        """Submit an operation with a loop future as its key; return both."""
        done: asyncio.Future[T] = self.loop.create_future()
        op = submit(self.port, done)
        if not self.watched:
            op.add_done_callback(lambda op: self.loop.call_soon_threadsafe(_settle, done, op))
        return op, done

    def close(self) -> None:
        if self.port is not None:
            if self.watched:
                self.loop.remove_reader(self.port.fileno())
            self.port.close()


_loop_ports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPort] = \
    weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _loop_port() -> Iterator[_LoopPort]:
    """The running loop's completion port, kept open for the ``with`` block.

    Also the tests' way to reach it (with _overlapped_threads._block_workers).
    """
    loop = asyncio.get_running_loop()
    lp = _loop_ports.get(loop)
    if lp is None:
        lp = _loop_ports[loop] = _LoopPort(loop)
    lp.users += 1
    try:
        yield lp
    finally:
        lp.users -= 1
        if not lp.users:
            del _loop_ports[loop]
            lp.close()  # every operation has finished: only idle threads to join


async def _wait_out(done: asyncio.Future[Any]) -> None:
    """Wait until ``done`` is done, whatever cancellations arrive meanwhile."""
    while not done.done():
        try:
            await asyncio.wait([done])
        except asyncio.CancelledError:
            pass


async def _run(submit: _Submit[T], undo: Callable[[T], object] | None = None) -> T:
    """Run an overlapped operation; on cancellation abort it, or undo it."""
    with _loop_port() as lp:
        op, done = lp.start(submit)
        try:
            # shield: cancelling the task must not cancel ``done``, which
            # still has to receive the outcome if the operation runs anyway.
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            # Never blocks the loop: on Windows a CancelIoEx whose outcome
            # reaches ``done`` later; elsewhere only a state change.
            if not op._cancel_nowait():
                await _wait_out(done)
                if undo is not None and not done.cancelled() and done.exception() is None:
                    result = done.result()
                    _, undone = lp.start(lambda port, key: _overlapped.call_in_thread(
                        "undo", functools.partial(undo, result), port, key))
                    await _wait_out(undone)
            raise


async def reserve(count: int = 1, *, start: int = 0,
                  protocol: str | Protocol = "tcp") -> Reservation:
    """portreserve.reserve without blocking the loop."""
    proto = _args.protocol("reserve", protocol)
    start, count = _args.block("reserve", start, count, wildcard=True)
    fn = functools.partial(_reserve, count, start=start, protocol=proto)
    return await _run(lambda port, key: _overlapped.call_in_thread("reserve", fn, port, key),
                      undo=Reservation.close)


async def acquire_port_reservation(sock: socket.socket, start_port: int,
                                   number_of_ports: int) -> PortReservationInstance:
    """SIO_ACQUIRE_PORT_RESERVATION without blocking the loop."""
    return await _run(
        lambda port, key: _overlapped.acquire_port_reservation_overlapped(
            sock, start_port, number_of_ports, port=port, key=key),
        undo=lambda instance: engine.release(sock, instance.token))


async def release_port_reservation(sock: socket.socket, token: int) -> None:
    """SIO_RELEASE_PORT_RESERVATION without blocking the loop."""
    await _run(lambda port, key: _overlapped.release_port_reservation_overlapped(
        sock, token, port=port, key=key))


async def associate_port_reservation(sock: socket.socket, token: int) -> None:
    """SIO_ASSOCIATE_PORT_RESERVATION without blocking the loop."""
    await _run(lambda port, key: _overlapped.associate_port_reservation_overlapped(
        sock, token, port=port, key=key))
