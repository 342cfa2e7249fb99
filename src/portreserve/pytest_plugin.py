"""pytest fixtures that hold real port reservations (docs/API.md section 5).

Loaded through the ``pytest11`` entry point ``portreserve``; ``pytest -p
no:portreserve`` turns it off.  Loading it costs this file and the
package's own ``import portreserve``; the fixtures import the rest (the
hand-off, the child starter) and reserve nothing until a test asks for them.

Safe under pytest-xdist with no daemon, lock file or shared state: every
port is held by the kernel (or the Windows stack) for the worker that
reserved it, so no other worker, and no other process, can take it; a worker
that dies frees its ports with its descriptors.

Fixture names stay apart from pytest-asyncio's (``unused_tcp_port``...) and
anyio's (``free_tcp_port``...), so the plugins load side by side.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the real import waits for the first fixture that needs it
    import socket

    from portreserve import Protocol, Reservation

# How long a child gets to exit after SIGTERM at teardown before SIGKILL (s).
_TERMINATE_GRACE = 5.0


class ReservationFactory:
    """The ``reservation`` fixture: ``reservation(count=1, *, start=0,
    protocol="tcp") -> Reservation``, as ``portreserve.reserve``, with every
    reservation it made released at the end of the test.

    ``reservation.of(port)`` is the reservation behind this test's
    ``reserved_tcp_port`` or ``reserved_udp_port``, e.g. for
    ``Reservation.popen``.  Raises ``LookupError`` for any other port.
    """

    def __init__(self) -> None:
        self._made = contextlib.ExitStack()  # closes every reservation, whatever fails
        # The reservation of each int fixture of this test, by protocol.
        self._port_fixtures: dict[str, Reservation] = {}

    def __call__(self, count: int = 1, *, start: int = 0,
                 protocol: str | Protocol = "tcp") -> Reservation:
        import portreserve

        res = portreserve.reserve(count, start=start, protocol=protocol)
        self._made.callback(res.close)
        return res

    def of(self, port: int) -> Reservation:
        for res in self._port_fixtures.values():
            if res.start == port:
                return res
        raise LookupError(f"port {port} is not this test's reserved_tcp_port or reserved_udp_port")

    def _release_all(self) -> None:
        self._made.close()


@pytest.fixture
def reservation() -> Iterator[ReservationFactory]:
    """A factory ``reservation(count=1, *, start=0, protocol="tcp") -> Reservation``;
    everything it reserved is released at teardown."""
    factory = ReservationFactory()
    try:
        yield factory
    finally:
        factory._release_all()


def _port_fixture(factory: ReservationFactory, protocol: str) -> Iterator[int]:
    res = factory(protocol=protocol)
    factory._port_fixtures[protocol] = res
    # While the hand-off is active, a bind of this number anywhere in this
    # process (a server the test starts by number) gets the port from the
    # reservation, with no moment in which another process could take it.
    with res.handoff():
        yield res.start


@pytest.fixture
def reserved_tcp_port(reservation: ReservationFactory) -> Iterator[int]:
    """A TCP port held for the test.

    Code in the test process that binds it gets it, and so does a child
    started with ``reserved_popen`` (one TCP port) or
    ``reservation.of(port).popen``; no other process can take it.  Released
    at teardown.
    """
    yield from _port_fixture(reservation, "tcp")


@pytest.fixture
def reserved_udp_port(reservation: ReservationFactory) -> Iterator[int]:
    """A UDP port held for the test, as ``reserved_tcp_port``."""
    yield from _port_fixture(reservation, "udp")


def _socket_fixture(factory: ReservationFactory, protocol: str) -> Iterator[socket.socket]:
    sock = factory(protocol=protocol).socket()
    with sock:
        yield sock


@pytest.fixture
def reserved_tcp_socket(reservation: ReservationFactory) -> Iterator[socket.socket]:
    """A TCP socket bound from a fresh reservation (``Reservation.socket()``),
    not listening; closed and released at teardown."""
    yield from _socket_fixture(reservation, "tcp")


@pytest.fixture
def reserved_udp_socket(reservation: ReservationFactory) -> Iterator[socket.socket]:
    """A UDP socket bound from a fresh reservation; closed and released at teardown."""
    yield from _socket_fixture(reservation, "udp")


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc`` (SIGKILL if SIGTERM is not enough), reap it, close its pipes."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_TERMINATE_GRACE)
            except subprocess.TimeoutExpired:
                pass
    finally:
        # Also reached on a second Ctrl-C during the grace period.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _names(args: Any, port: int) -> bool:
    """Whether the command line ``args`` has ``port`` in it as a number."""
    import os
    import re

    words = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    number = re.compile(rf"(?<![0-9]){port}(?![0-9])")
    return any(number.search(os.fsdecode(w) if isinstance(w, (bytes, os.PathLike)) else str(w))
               for w in words)


class PopenFactory:
    """The ``reserved_popen`` fixture: ``reserved_popen(args, *, count=1,
    protocol="tcp", listen_fds=False, **kwargs) -> (Popen, Reservation)``.

    Starts ``args`` with ``Reservation.popen`` (``{port}``, ``{port0}``...,
    ``PORT``, ``PORTRESERVE_PORTS``; ``listen_fds`` for socket activation;
    ``kwargs`` go to ``subprocess.Popen``).  A child whose command line
    names the number of this test's ``reserved_tcp_port`` (or
    ``reserved_udp_port``, for ``protocol="udp"``) gets that port, with
    ``count=1``: ``reserved_popen(["redis-server", "--port",
    str(reserved_tcp_port)])``.  Any other child gets a new reservation of
    ``count`` ports, named in ``args`` by ``{port}``, ``{port0}``...

    Every child is terminated (SIGTERM, then SIGKILL after 5 s) and reaped
    at teardown, whatever the outcome of the test.  A test process killed
    outright (SIGKILL) runs no teardown: its children outlive it.
    Raises what ``reserve`` and ``Reservation.popen`` raise.
    """

    def __init__(self, reservations: ReservationFactory) -> None:
        self._reservations = reservations
        self._children: list[subprocess.Popen[Any]] = []

    def __call__(self, args: Sequence[Any], *, count: int = 1,
                 protocol: str | Protocol = "tcp", listen_fds: bool = False,
                 **kwargs: Any) -> tuple[subprocess.Popen[Any], Reservation]:
        from portreserve import _args

        proto = _args.protocol("reserved_popen", protocol)
        shared = self._reservations._port_fixtures.get(proto.value)
        if count == 1 and shared is not None and _names(args, shared.start):
            res = shared
        else:
            res = self._reservations(count, protocol=protocol)
        proc = res.popen(args, listen_fds=listen_fds, **kwargs)
        self._children.append(proc)
        return proc, res

    def _stop_all(self) -> None:
        try:
            while self._children:
                _stop(self._children[-1])
                self._children.pop()
        finally:
            # Interrupted half-way (a second Ctrl-C): still no child left running.
            for proc in self._children:
                with contextlib.suppress(OSError):
                    proc.kill()
                    proc.wait()


@pytest.fixture
def reserved_popen(reservation: ReservationFactory) -> Iterator[PopenFactory]:
    """A factory ``reserved_popen(args, *, count=1, protocol="tcp", listen_fds=False,
    **kwargs) -> (Popen, Reservation)``; children are terminated and reaped at
    teardown (see ``PopenFactory``)."""
    factory = PopenFactory(reservation)
    try:
        yield factory
    finally:
        factory._stop_all()
