"""The overlapped engine of Windows: an I/O completion port (see _overlapped_types.py).

Every operation is one overlapped WSAIoctl made through the C engine of the
system-call layer (_backend: pr_windows.c through cffi, or the same steps in
ctypes).  That engine owns the WSAOVERLAPPED and its buffers and frees them
only once the system is done with them.  This module decides who waits for
the outcome, and keeps each operation - its C op, its socket, its Future -
alive in Python until the outcome has been consumed.

With a CompletionPort the op notifies the port (NOTIFY_IOCP): the socket is
attached to the port's IOCP, once and for good (Windows allows one port per
handle), and the op is over when its packet is dequeued.  Until then it sits
in the port's ``_pending``, keyed by its C op.  Packets are dequeued by
whoever needs progress - get(), and also cancel(), result() and exception()
of an op of that port, so such an op never hangs on a get() nobody calls -
by one thread at a time (the "pumper"), so that get() hands them out oldest
first.  Others wait on the port's condition until the pumper is done.

Without a port the op signals an event (NOTIFY_EVENT), and one thread per op
that is still pending when WSAIoctl returns waits on it, then ends.  Not an
internal per-process IOCP: attaching a socket to one is permanent and
exclusive (a second CreateIoCompletionPort on it fails with 87, under Wine
too), so it would stop the caller from ever using that socket with its own
CompletionPort or with asyncio's proactor.  An event op (low bit set in
hEvent) leaves the socket unattached.  The reservation ioctls normally finish
inside WSAIoctl, which needs no thread at all.

The Future stays PENDING (not RUNNING) while the op is in flight, so that an
abort we asked for can end it as cancelled: cancel() calls CancelIoEx and
waits for the outcome.  995 after that request means the op was aborted
before it took effect: cancelled, True.  Any other outcome (CancelIoEx was too
late) is the op's own: False.
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as _wait_futures
from typing import Any, Callable

from . import _errors, _windows
from ._backend import calls
from ._errors import InvalidParameter, OperationAborted
from ._interfaces import Op
from ._overlapped_types import Completion, Overlapped, PortBase, T
from ._records import PortReservationInstance

# Windows only; this also tells mypy --platform linux to skip the rest.
assert sys.platform == "win32"

_WSA_IO_PENDING = _errors.ERROR_IO_PENDING
_WAIT_TIMEOUT = _errors.WAIT_TIMEOUT
# close() waits this long for the packets of the ops it aborted.  CancelIoEx
# ends a pending WSAIoctl at once; an op still pending after that is left to
# the system (the C engine never frees what the kernel may write to).
_CLOSE_DRAIN_SECONDS = 5.0


def _ms(timeout: float | None) -> int:
    if timeout is None:
        return calls.INFINITE
    return min(math.ceil(max(timeout, 0.0) * 1000), calls.INFINITE - 1)


class _IoctlOp(Overlapped[T]):
    """An Overlapped that is one overlapped WSAIoctl."""

    def __init__(self, call: str, ioctl: str, key: Any, sock: socket.socket,
                 port: CompletionPort | None, decode: Callable[[bytes], T],
                 error: Callable[[int, str], Exception] | None = None) -> None:
        super().__init__(call, key)
        self._ioctl = ioctl  # its name, for messages
        self._sock = sock  # kept open (from the collector) while in flight
        self._port = port
        self._decode = decode
        # The exception for a failed outcome (a Winsock code), as the
        # synchronous call would raise it.
        self._error = error or (lambda status, call: _errors.from_winerror(status, call))
        self._out_size = 0
        # Orders op_cancel against op_free: CancelIoEx must never get a freed op.
        self._lock = threading.Lock()
        self._handle: Op = None  # the C op, from op_new until op_free
        self._aborted_by: str | None = None  # why we called CancelIoEx, if it was in time

    def _new(self, notify: int, code: int, in_data: bytes, out_size: int) -> Op:
        try:
            self._handle = calls.op_new(notify, code, in_data, out_size)
        except OSError as exc:
            raise _errors.from_winerror(exc.winerror or 0, f"{self.call}: {self._ioctl}") from None
        self._out_size = out_size
        return self._handle

    def running(self) -> bool:
        return not self.done()  # in flight from the moment it is returned

    def _request_abort(self, why: str) -> None:
        """CancelIoEx; the outcome still arrives the usual way."""
        with self._lock:
            if self._handle is not None and calls.op_cancel(self._handle) == 0:
                # 1168 (too late) or a closed socket's error: not our abort.
                if self._aborted_by is None:
                    self._aborted_by = why

    def _progress(self, timeout: float | None) -> float | None:
        """Dequeue this op's packet if it has a port; the time left of ``timeout``."""
        if self._port is None:
            return timeout  # its waiter thread finishes it
        deadline = None if timeout is None else time.monotonic() + timeout
        self._port._until(self.done, timeout)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout: float | None = None) -> T:
        return super().result(self._progress(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._progress(timeout))

    def cancel(self) -> bool:
        """CancelIoEx, then wait for the outcome: True if it aborted the op."""
        self._request_abort("cancel")
        _wait_futures([self], self._progress(None))
        return self.cancelled()

    def _cancel_nowait(self) -> bool:
        """CancelIoEx only; the outcome arrives the usual way."""
        self._request_abort("cancel")
        return False

    def _wait_event(self) -> None:
        """The waiter thread of an event op (the shim releases the GIL)."""
        err = calls.op_wait(self._handle, calls.INFINITE)
        self._complete(None if err == 0 else
                       _errors.from_winerror(err, f"{self.call}: waiting for {self._ioctl}"))

    def _complete(self, failure: Exception | None = None) -> None:
        """Read the outcome, free the C op, finish the Future (once).

        ``failure`` ends it without an outcome (an op that never finished):
        op_free then only drops our reference, and the C op stays with the
        system.
        """
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            outcome = None if failure is not None else calls.op_result(handle)
            # Only the bytes the call says it wrote.
            out = (calls.op_out(handle, min(outcome[1], self._out_size))
                   if outcome and outcome[0] == 0 else b"")
        finally:
            calls.op_free(handle)
        if outcome is None:
            self.set_exception(failure or OperationAborted(f"{self.call}: no outcome"))
        else:
            self._settle(outcome[0], out)

    def _settle(self, status: int, out: bytes) -> None:
        # The same code as the synchronous call for the same mistake, through
        # an event or a port, with the socket open or closed since.
        status = _errors.wsa_code(status)
        if status == 0:
            try:
                value = self._decode(out)
            except Exception as exc:
                self.set_exception(exc)
            else:
                self.set_result(value)
        elif status in _errors.ABORTED and self._aborted_by == "cancel":
            Future.cancel(self)  # PENDING -> CANCELLED
            # ... -> CANCELLED_AND_NOTIFIED, which concurrent.futures.wait() needs.
            self.set_running_or_notify_cancel()
        elif status in _errors.ABORTED:
            why = self._aborted_by or ("the socket was closed" if self._sock.fileno() == -1
                                  else "the operation was aborted")
            self.set_exception(OperationAborted(f"{self.call}: {self._ioctl}: {why}"))
        else:
            self.set_exception(self._error(status, f"{self.call}: {self._ioctl}"))


class CompletionPort(PortBase):
    """An I/O completion port: finished operations, dequeued with their keys.

    ``concurrency`` is accepted and checked as on other systems; packets are
    dequeued by one thread at a time here, so it changes nothing.
    """

    def __init__(self, concurrency: int = 0) -> None:
        self._threads = self._concurrency(concurrency)
        err, self._iocp = calls.iocp_new()
        if err:
            raise _errors.from_winerror(err, "CompletionPort: CreateIoCompletionPort")
        # close() frees it; this only if the port is dropped unclosed.  Not at
        # exit: the process's end frees it anyway.
        self._free = weakref.finalize(self, calls.iocp_close, self._iocp)
        self._free.atexit = False
        self._cond = threading.Condition()
        self._pending: dict[Op, _IoctlOp[Any]] = {}  # by C op, until its packet is dequeued
        self._ready: deque[Completion] = deque()  # dequeued, not yet returned by get()
        self._pumper: int | None = None  # the thread in iocp_get
        # Sockets attached to this port, with their handle then: a socket can
        # be attached once (twice fails with 87), and a closed socket's handle
        # value may come back as a new, unattached socket.
        self._attached: weakref.WeakKeyDictionary[socket.socket, int] = \
            weakref.WeakKeyDictionary()

    @property
    def concurrency(self) -> int:
        return self._threads

    def fileno(self) -> int:
        """-1: an IOCP is not a descriptor select() can wait on (docs/API.md allows it)."""
        self._check_open("CompletionPort.fileno")
        return -1

    def _start(self, op: _IoctlOp[Any], sock: socket.socket, code: int, in_data: bytes,
               out_size: int) -> None:
        """Attach ``sock`` if needed and start ``op`` on this port."""
        with self._cond:  # held across op_start, so close() sees every op started
            self._check_open(op.call)
            fd = sock.fileno()
            if self._attached.get(sock) != fd:
                err = calls.iocp_attach(self._iocp, fd)
                if err == _errors.ERROR_INVALID_PARAMETER:
                    raise InvalidParameter(
                        f"{op.call}: the socket is attached to another completion port "
                        f"(Windows allows one per socket)", winerror=err)
                if err:
                    raise _errors.from_winerror(err, f"{op.call}: CreateIoCompletionPort")
                self._attached[sock] = fd
            handle = op._new(calls.NOTIFY_IOCP, code, in_data, out_size)
            # Before op_start: its packet may be dequeued before op_start returns.
            self._pending[handle] = op
            err = calls.op_start(handle, fd)
            failed = err not in (0, _WSA_IO_PENDING)  # then no packet follows
            if failed:
                del self._pending[handle]
        if failed:
            op._complete()

    def _process(self, handles: list[Op]) -> None:
        """Finish the ops of dequeued packets and queue their completions, in order."""
        with self._cond:
            ops = [self._pending.pop(h) for h in handles if h in self._pending]
        for op in ops:
            op._complete()  # outside the lock: done-callbacks run here
        with self._cond:
            if not self._closed:
                self._ready.extend(Completion(op.key, op) for op in ops)
            self._cond.notify_all()

    def _until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Dequeue packets, or let the pumper do it, until ``ready()``.

        False on timeout or when the port is closed.  A done-callback that
        runs in the pumper may call in again (same thread): it then dequeues
        itself, and its completions may come before those of the outer batch.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        polled = False
        with self._cond:
            while not ready():
                if self._closed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if self._pumper not in (None, me):
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                    continue
                if left is not None and left <= 0 and polled:
                    return False
                polled = True  # timeout 0 still looks once
                outer, self._pumper = self._pumper, me
                self._cond.release()
                try:
                    err, handles = calls.iocp_get(self._iocp, _ms(left), 64)
                    if err and err != _WAIT_TIMEOUT:
                        raise _errors.from_winerror(
                            err, "CompletionPort: GetQueuedCompletionStatusEx")
                    if handles:
                        self._process(handles)
                finally:
                    self._cond.acquire()
                    self._pumper = outer
                    self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None, max_entries: int = 64) -> list[Completion]:
        """Up to ``max_entries`` finished operations, oldest first; [] after
        ``timeout`` seconds (None or inf: wait for ever)."""
        call = "CompletionPort.get"
        max_entries, timeout = self._get_args(max_entries, timeout)
        self._check_open(call)
        self._until(lambda: bool(self._ready), timeout)
        with self._cond:
            self._check_open(call)  # closed while we waited
            return [self._ready.popleft() for _ in range(min(max_entries, len(self._ready)))]

    def close(self) -> None:
        """Abort pending operations (OperationAborted), drain their packets, free the port."""
        me = threading.get_ident()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._ready.clear()
            pending = list(self._pending.values())
            if self._pumper not in (None, me):
                calls.iocp_post(self._iocp)  # wake it from GetQueuedCompletionStatusEx
            self._cond.notify_all()
        for op in pending:
            op._request_abort("the completion port was closed")
        with self._cond:
            self._cond.wait_for(lambda: self._pumper in (None, me))
        # Every aborted op's packet is dequeued (and its C op consumed) before
        # the handle goes.
        deadline = time.monotonic() + _CLOSE_DRAIN_SECONDS
        while self._pending and (left := deadline - time.monotonic()) > 0:
            err, handles = calls.iocp_get(self._iocp, _ms(left), 64)
            if err:
                break
            self._process(handles)
        with self._cond:
            stuck, self._pending = list(self._pending.values()), {}
        for op in stuck:
            op._complete(OperationAborted(f"{op.call}: {op._ioctl}: the completion port "
                                          f"was closed (the operation did not end)"))
        self._free()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"iocp={self._iocp:#x}"
        return f"<CompletionPort {state} concurrency={self.concurrency}>"


def _start(call: str, ioctl: str, sock: socket.socket, code: int, in_data: bytes,
           out_size: int, decode: Callable[[bytes], T], port: PortBase | None,
           key: Any, error: Callable[[int, str], Exception] | None = None) -> Overlapped[T]:
    """Issue an overlapped WSAIoctl (arguments already checked, but ``port``).

    Any control code: the tests start one that really pends through here.
    """
    if port is not None and not isinstance(port, CompletionPort):
        raise TypeError(f"{call}: port must be a CompletionPort or None, "
                        f"not {type(port).__name__}")
    op = _IoctlOp(call, ioctl, key, sock, port, decode, error)
    if port is not None:
        port._start(op, sock, code, in_data, out_size)
        return op
    handle = op._new(calls.NOTIFY_EVENT, code, in_data, out_size)
    err = calls.op_start(handle, sock.fileno())
    # Wine: an ioctl it lacks "pends" with its outcome already final and never
    # signals the event; op_result sees that, so no thread waits for nothing.
    if err == _WSA_IO_PENDING and calls.op_result(handle) is None:
        threading.Thread(target=op._wait_event, name="portreserve-waiter", daemon=True).start()
    else:
        op._complete()
    return op


def decode_instance(out: bytes) -> PortReservationInstance:
    """The instance SIO_ACQUIRE_PORT_RESERVATION wrote; a short result is an error."""
    size = calls.INSTANCE_SIZE
    if len(out) != size:
        raise _errors.from_winerror(
            _errors.ERROR_INVALID_DATA,
            f"SIO_ACQUIRE_PORT_RESERVATION returned {len(out)} bytes, not {size}")
    return PortReservationInstance(*calls.decode_instance(out))


def acquire(call: str, sock: socket.socket, start_port: int, number_of_ports: int,
            port: PortBase | None, key: Any) -> Overlapped[PortReservationInstance]:
    return _start(call, "SIO_ACQUIRE_PORT_RESERVATION", sock,
                  calls.SIO_ACQUIRE_PORT_RESERVATION,
                  calls.encode_port_range(start_port, number_of_ports),
                  calls.INSTANCE_SIZE, decode_instance, port, key)


def release(call: str, sock: socket.socket, token: int,
            port: PortBase | None, key: Any) -> Overlapped[None]:
    return _start(call, "SIO_RELEASE_PORT_RESERVATION", sock,
                  calls.SIO_RELEASE_PORT_RESERVATION, calls.encode_token(token), 0,
                  lambda out: None, port, key)


def associate(call: str, sock: socket.socket, token: int,
              port: PortBase | None, key: Any) -> Overlapped[None]:
    return _start(call, "SIO_ASSOCIATE_PORT_RESERVATION", sock,
                  calls.SIO_ASSOCIATE_PORT_RESERVATION, calls.encode_token(token), 0,
                  lambda out: None, port, key,
                  lambda status, what: _windows.associate_error(status, what, sock, token))

