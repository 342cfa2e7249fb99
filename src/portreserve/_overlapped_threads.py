"""The overlapped engine of Linux and macOS: worker threads (see _overlapped_types.py).

Linux has no asynchronous form of these calls (it has no reservation call at
all: a reservation is a set of holder sockets, see _posix.py), so this engine
gives the completion-port model with threads:

* A CompletionPort is a queue of completions plus a pipe that is readable
  exactly while the queue is not empty, so select/selectors/asyncio can wait
  on it.
* Each port owns a small pool of worker threads (the IOCP's "concurrency"),
  started when work arrives and ended when idle or at close(); operations
  without a port use a module-wide pool.  The engine's sync calls release the
  GIL inside the C shim, so a 10,000-port reservation does not hold up other
  Python threads.
* Whether cancel() wins is decided by one state change of the Future: a worker
  starts an operation only through set_running_or_notify_cancel(), so
  cancel() before that returns True and the operation never touches the
  system; after it, cancel() returns False and the operation completes
  normally.  That is CancelIoEx's "too late" case, made exact.
* A socket closed before its operation ran, and a port closed with operations
  pending, end them with OperationAborted, as closesocket and closing the
  completion port do on Windows.  close() then waits for the operations
  already running (short, and not interruptible) and joins the threads, so
  nothing is left behind.

``submit`` also runs plain Python callables as operations (aio.reserve) on
every system; on Windows always without a port, whose IOCP carries only I/O.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from ._engine import engine
from ._errors import InvalidParameter, OperationAborted, from_errno
from ._overlapped_types import Completion, Overlapped, PortBase, T
from ._records import PortReservationInstance

# A worker with nothing to do for this long exits; the next operation starts
# a new one.  Long enough that a burst of operations reuses threads.
_IDLE_SECONDS = 1.0


def _closed(sock: socket.socket | None) -> bool:
    return sock is not None and sock.fileno() == -1


class _ThreadOp(Overlapped[T]):
    """An operation that a worker thread runs: a call of the synchronous engine."""

    def __init__(self, call: str, key: Any, sock: socket.socket | None, fn: Callable[[], T],
                 undo: Callable[[T], object] | None) -> None:
        super().__init__(call, key)
        # (socket or None, the call, how to undo its result) until it ran.
        self._work: tuple[socket.socket | None, Callable[[], T],
                          Callable[[T], object] | None] | None = (sock, fn, undo)

    def _run(self) -> None:
        """Run the operation; called by a worker thread, once."""
        assert self._work is not None, "an operation runs once"
        sock, fn, undo = self._work
        self._work = None
        if not self.set_running_or_notify_cancel():
            return  # cancelled before it started
        try:
            if _closed(sock):
                raise OperationAborted(f"{self.call}: the socket was closed")
            result = fn()
        except Exception as exc:
            if _closed(sock) and not isinstance(exc, OperationAborted):
                exc = OperationAborted(f"{self.call}: the socket was closed ({exc})")
            self.set_exception(exc)
            return
        if _closed(sock):
            # Closed while it ran: on Windows closesocket would have aborted
            # it and dropped the socket's reservations, so undo what it did.
            if undo is not None:
                try:
                    undo(result)
                except Exception:  # the abort below is the outcome to report
                    pass
            self.set_exception(OperationAborted(f"{self.call}: the socket was closed"))
        else:
            self.set_result(result)

    def _abort(self) -> None:
        """End a queued operation with OperationAborted (its port was closed)."""
        self._work = None
        if self.set_running_or_notify_cancel():
            self.set_exception(OperationAborted(f"{self.call}: the completion port was closed"))


class _Item(Protocol):
    """What a worker pool queues: an operation, or a test's plug."""

    def _run(self) -> None:
        """Run it, in a worker thread."""

    def _abort(self) -> None:
        """End it unrun: its pool was closed."""


class _Workers:
    """The threads that run operations: the Linux submission layer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closed = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # idle workers wait here only
        self._closing: list[threading.Condition] = []  # also notified at close
        self._queue: deque[_Item] = deque()
        self._threads: list[threading.Thread] = []  # every thread that may be alive
        self._live = 0  # threads not yet on their way out
        self._idle = 0  # threads waiting for work
        _all_workers.add(self)

    def submit(self, item: _Item) -> bool:
        """Queue ``item``; False if the pool is closed."""
        with self._cond:
            if self.closed:
                return False
            self._queue.append(item)
            if self._idle:
                self._cond.notify()
            if len(self._queue) > self._idle and self._live < self.limit:
                self._threads = [t for t in self._threads if t.is_alive()]
                # Daemon, so an idle worker never delays exit; atexit closes
                # every pool, which joins them.
                t = threading.Thread(target=self._work, name="portreserve-worker", daemon=True)
                self._threads.append(t)
                self._live += 1
                t.start()
        return True

    def _work(self) -> None:
        cond = self._cond
        with cond:
            try:
                while True:
                    if not self._queue:
                        self._idle += 1
                        cond.wait_for(lambda: self._queue or self.closed, _IDLE_SECONDS)
                        self._idle -= 1
                        if not self._queue:
                            return  # idle for too long, or closed
                    item = self._queue.popleft()
                    cond.release()
                    try:
                        item._run()
                    finally:
                        del item  # do not keep a finished op alive while idle
                        cond.acquire()
            finally:
                self._live -= 1

    def close(self) -> None:
        """Abort what has not started, wait for what runs, join the threads."""
        with self._cond:
            self.closed = True
            pending = list(self._queue)
            self._queue.clear()
            threads = list(self._threads)
            for cond in [self._cond, *self._closing]:
                cond.notify_all()
        for item in pending:
            item._abort()
        me = threading.current_thread()
        for t in threads:
            if t is not me:  # close() from a done-callback on a worker
                t.join()

    def _after_fork(self) -> None:
        # Threads do not survive fork(); the child starts with none.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closing = []
        self._threads, self._live, self._idle = [], 0, 0


_all_workers: weakref.WeakSet[_Workers] = weakref.WeakSet()
_default: _Workers | None = None
_default_lock = threading.Lock()


def _default_workers() -> _Workers:
    """The pool for operations without a completion port."""
    global _default
    with _default_lock:
        if _default is None:
            _default = _Workers(os.cpu_count() or 2)
        return _default


@atexit.register
def _close_all() -> None:
    # At exit, as when a Windows process ends: pending operations are aborted.
    for workers in list(_all_workers):
        workers.close()


def _after_fork_in_child() -> None:
    for workers in list(_all_workers):
        workers._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CompletionPort(PortBase):
    """Finished operations, queued with their keys (an I/O completion port).

    ``concurrency`` is how many operations of this port may run at once
    (NumberOfConcurrentThreads of CreateIoCompletionPort); 0 means the number
    of processors.
    """

    def __init__(self, concurrency: int = 0) -> None:
        self._workers = _Workers(self._concurrency(concurrency))
        self._cond = threading.Condition()
        self._done: deque[Completion] = deque()
        # Invariant, kept under _cond: the pipe holds one byte exactly while
        # _done is not empty, so its read end is readable exactly then.
        try:
            self._fd, self._wfd = os.pipe()  # close-on-exec, as Python makes them
        except OSError as exc:  # no descriptor left
            raise from_errno(exc.errno, "CompletionPort") from None
        self._close_fd = weakref.finalize(self, _close_pipe, self._fd, self._wfd)
        # Not at exit: operations aborted by _close_all may still post.
        self._close_fd.atexit = False

    @property
    def concurrency(self) -> int:
        return self._workers.limit

    def fileno(self) -> int:
        """A descriptor readable exactly while completions are queued."""
        self._check_open("CompletionPort.fileno")
        return self._fd

    def get(self, timeout: float | None = None, max_entries: int = 64) -> list[Completion]:
        """Up to ``max_entries`` finished operations, oldest first; [] after
        ``timeout`` seconds (None or inf: wait for ever)."""
        call = "CompletionPort.get"
        max_entries, timeout = self._get_args(max_entries, timeout)
        with self._cond:
            self._check_open(call)
            if not self._cond.wait_for(lambda: self._done or self._closed, timeout):
                return []
            self._check_open(call)  # closed while we waited
            out = [self._done.popleft() for _ in range(min(max_entries, len(self._done)))]
            if not self._done:
                self._signal(False)
            return out

    def _signal(self, readable: bool) -> None:
        if readable:
            os.write(self._wfd, b"\0")
        else:
            os.read(self._fd, 1)

    def _post(self, op: Future[Any]) -> None:
        """Done-callback of every operation of this port: queue its completion."""
        assert isinstance(op, Overlapped)
        with self._cond:
            if self._closed:
                return  # nobody can dequeue it; the future holds the outcome
            if not self._done:
                self._signal(True)
            self._done.append(Completion(op.key, op))
            self._cond.notify()

    def close(self) -> None:
        """Abort pending operations (OperationAborted), free threads and descriptor."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._done.clear()
            self._cond.notify_all()  # waiters in get() raise
        self._workers.close()
        self._close_fd()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<CompletionPort {state} concurrency={self.concurrency}>"


def _close_pipe(r: int, w: int) -> None:
    os.close(r)
    os.close(w)


def submit(call: str, sock: socket.socket | None, fn: Callable[[], T],
           port: PortBase | None, key: Any,
           undo: Callable[[T], object] | None = None) -> Overlapped[T]:
    """Run ``fn`` as an overlapped operation (arguments already checked, but ``port``)."""
    if port is not None and not isinstance(port, CompletionPort):
        raise TypeError(f"{call}: port must be a CompletionPort or None, "
                        f"not {type(port).__name__}")
    op = _ThreadOp(call, key, sock, fn, undo)
    if port is None:
        workers = _default_workers()
    else:
        port._check_open(call)
        op.add_done_callback(port._post)
        workers = port._workers
    if not workers.submit(op):
        raise InvalidParameter(f"{call}: the completion port is closed"
                               if port is not None else f"{call}: the interpreter is exiting")
    return op


# ---- the engine interface (see _overlapped_types.py) ---------------------

def acquire(call: str, sock: socket.socket, start_port: int, number_of_ports: int,
            port: PortBase | None, key: Any) -> Overlapped[PortReservationInstance]:
    def acquire() -> PortReservationInstance:
        return engine.acquire(sock, start_port, number_of_ports)

    return submit(call, sock, acquire, port, key,
                  undo=lambda instance: engine.release(sock, instance.token))


def release(call: str, sock: socket.socket, token: int,
            port: PortBase | None, key: Any) -> Overlapped[None]:
    return submit(call, sock, lambda: engine.release(sock, token), port, key)


def associate(call: str, sock: socket.socket, token: int,
              port: PortBase | None, key: Any) -> Overlapped[None]:
    return submit(call, sock, lambda: engine.associate(sock, token), port, key)


class _Plug:
    """See _block_workers."""

    def __init__(self, workers: _Workers) -> None:
        self.workers, self.running, self.released = workers, 0, False
        # Its own condition on the pool's lock, so that it never takes a
        # wake-up meant for an idle worker.
        self.cond = threading.Condition(workers._lock)
        workers._closing.append(self.cond)

    def _run(self) -> None:
        with self.cond:
            self.running += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.released or self.workers.closed)

    def _abort(self) -> None:
        pass

    def unblock(self) -> None:
        with self.cond:
            self.released = True
            self.cond.notify_all()
            if self.cond in self.workers._closing:
                self.workers._closing.remove(self.cond)


def _block_workers(port: CompletionPort) -> Callable[[], None]:
    """Test hook: occupy every worker thread of ``port``.

    Operations submitted to ``port`` afterwards stay queued - pending, not
    started - until the returned function is called or the port is closed.
    Returns once every worker is occupied, so tests need no sleeps.
    """
    workers = port._workers
    plug = _Plug(workers)
    for _ in range(workers.limit):
        if not workers.submit(plug):
            raise InvalidParameter("_block_workers: the completion port is closed")
    with plug.cond:
        plug.cond.wait_for(lambda: plug.running == workers.limit or workers.closed)
    return plug.unblock


