"""What every overlapped engine shares: the operation, the completion, the port's checks.

How completion works
--------------------
On Windows an overlapped WSAIoctl returns WSA_IO_PENDING at once and the
outcome arrives later, as a packet on an I/O completion port carrying the key
the caller chose.  The caller learns outcomes by dequeuing packets, and may
ask for an abort with CancelIoEx - only a request: an operation that already
took effect completes normally ("too late to cancel"), and closing the socket
ends whatever is still pending on it with WSA_OPERATION_ABORTED.  The
reference pages recommend this form because these IOCTLs may block even on
non-blocking sockets.

Every system keeps that model, and Python owns all of its state:

* An operation is an ``Overlapped``, a concurrent.futures.Future.  It
  finishes exactly once - result, error or cancelled - and at that moment,
  not before, a ``Completion(key, op)`` is queued on its completion port (if
  it has one).  So whatever happens (success, failure, cancel, socket closed,
  port closed) a consumer draining the port sees each key exactly once, and
  every op it sees is already done.
* From submission until it has finished, the operation and what it uses (the
  socket, the call, the system's buffers) are kept alive.

One engine per system gives the operations and the ``CompletionPort`` class,
chosen once by _overlapped.py:

* _overlapped_iocp.py (Windows): overlapped WSAIoctl, a real I/O completion
  port, CancelIoEx, through the system-call layer's op engine.
* _overlapped_threads.py (elsewhere): Linux and macOS have no asynchronous
  form of these calls, so worker threads run the synchronous engine, and the
  port is a queue with a pipe that select() can wait on.  It also runs plain
  Python callables as operations (aio.reserve) on every system.

Each engine module offers ``CompletionPort`` and ``acquire``, ``release`` and
``associate`` taking ``(call, sock, ..., port, key)`` with the arguments
already checked, except ``port``.
"""

from __future__ import annotations

import abc
import math
import os
import threading
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeVar

from . import _args
from ._errors import InvalidParameter


#: What an operation's ``result()`` returns: PortReservationInstance for an
#: acquire, None for a release or an associate.
T = TypeVar("T")


class Completion(NamedTuple):
    """A finished operation, as dequeued from a CompletionPort.

    ``key`` is the object given as ``key=`` when the operation was submitted,
    as it was: any Python object (it never reaches the system, so it has no
    range, unlike the ULONG_PTR of CreateIoCompletionPort).
    """

    key: Any
    op: Overlapped[Any]


class Overlapped(Future[T]):
    """One overlapped operation (a concurrent.futures.Future of its result).

    ``cancel()`` returns True only if the operation was stopped before it
    took effect; it then never changed anything.  An operation whose
    completion port is closed, or whose socket is closed, before it finished
    ends with OperationAborted (an acquired block is then released again).
    """

    def __init__(self, call: str = "", key: Any = 0) -> None:
        super().__init__()
        self.call = call
        self.key = key

    def _cancel_nowait(self) -> bool:
        """Ask for cancellation without waiting for the outcome.

        True if the operation is cancelled already; otherwise its outcome
        (cancelled or not) arrives the usual way.  For aio, whose loop must
        not block in cancel().
        """
        return self.cancel()


_Port = TypeVar("_Port", bound="PortBase")


class PortBase(abc.ABC):
    """What every engine's CompletionPort shares: its checks and its lifetime."""

    _closed = False

    @staticmethod
    def _concurrency(value: int) -> int:
        value = _args._int("CompletionPort", "concurrency", value)
        if value < 0:
            raise InvalidParameter(f"CompletionPort: concurrency {value} is negative")
        return value or os.cpu_count() or 2

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, call: str) -> None:
        if self._closed:
            raise InvalidParameter(f"{call}: the completion port is closed")

    @staticmethod
    def _get_args(max_entries: int, timeout: float | None) -> tuple[int, float | None]:
        """get()'s checks, before it touches anything: (max_entries, timeout).

        ``timeout`` is seconds; None and +inf both mean wait for ever, NaN
        is refused (it compares false with everything, so a wait loop on it
        would never end).
        """
        call = "CompletionPort.get"
        max_entries = _args._int(call, "max_entries", max_entries)
        if max_entries < 1:
            raise InvalidParameter(f"{call}: max_entries {max_entries} is below 1")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"{call}: timeout must be a number of seconds or None, "
                                f"not {type(timeout).__name__}")
            if math.isnan(timeout):
                raise InvalidParameter(f"{call}: timeout {timeout} is not a number")
            if timeout < 0:
                raise InvalidParameter(f"{call}: timeout {timeout} is negative")
            if timeout > threading.TIMEOUT_MAX:  # +inf too: no system waits longer
                timeout = None
        return max_entries, timeout

    @property
    @abc.abstractmethod
    def concurrency(self) -> int:
        """How many operations of this port may run at once."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """A descriptor select() can wait on, readable while completions are queued; or -1."""

    @abc.abstractmethod
    def get(self, timeout: float | None = None, max_entries: int = 64) -> list[Completion]:
        """Up to ``max_entries`` finished operations; [] after ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Abort what is pending and free the port."""

    def __enter__(self: _Port) -> _Port:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
