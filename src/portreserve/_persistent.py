"""Persistent port reservations on Linux: a saved store plus the kernel's list.

Windows keeps persistent reservations in its TCP/IP stack's own store.  Linux
has none, so this module keeps one, per network namespace, and mirrors it into
/proc/sys/net/ipv4/ip_local_reserved_ports, which keeps the ports out of
automatic assignment (bind port 0, connect, sendto) for TCP and UDP alike.
Explicit binds are not stopped by the kernel list, as LINUX.md records.

Layout of ``$PORTRESERVE_STATE_DIR`` (default /var/lib/portreserve, mode 0755,
files 0644: readable by all, writable only by the owner)::

    lock                 flock'ed exclusively around every change, in every namespace
    netns-<cookie>.json  the state of the namespace whose SO_NETNS_COOKIE is <cookie>

A state file holds the boot it belongs to (/proc/sys/kernel/random/boot_id),
the reservations (protocol, start, count, token) and ``added``: the ports
*we* put into the kernel list.  Ports that were already listed are left to
whoever listed them; a port stays listed while any reservation (TCP or UDP)
covers it, and delete removes only ports in ``added`` that no reservation
still covers.

Crash safety.  Files are replaced by write-temporary, fsync, rename, fsync of
the directory, so a reader sees the old or the new state, never a mix.  The
kernel list is a second resource, so the order of the two writes matters:
- adding ports (create, restore) saves the state first, then writes the list;
- removing ports (delete) writes the list first, then saves the state.
A kill -9 between the two writes thus leaves at worst a saved reservation
whose ports are not (all) listed yet - never listed ports that the state does
not own, and never a reported reservation unsaved.  Every change starts by
re-listing missing ports of saved reservations (``_reconcile``), which
finishes the interrupted call; ``list`` shows such a reservation with
``applied=False`` until then.

Boots.  Namespace cookies are unique within one boot only, and the kernel
list starts empty at every boot.  A state file whose boot_id is not the
current one is from an earlier boot: its reservations are listed with
``applied=False`` and their tokens stay valid for binding; ``restore()`` (or
any create/delete, as Windows re-applies persistent reservations at boot by
itself) re-lists their ports, forgets the old ``added`` and stamps the
current boot.  Tokens are kept across restore (the API allows new ones).
Namespaces do not survive a reboot, so "the same namespace" after one means
the one that got the same cookie number again: namespaces created in a fixed
order at boot (the initial one first) do.  Containers with their own network
namespace should have their own state dir (they normally have their own
/var/lib).

Hook for tests: ``BOOT_ID_PATH`` may be pointed at another file to simulate
a reboot (documented here, not public API).
"""

from __future__ import annotations

import sys

assert sys.platform != "win32"  # Linux only; also tells mypy to skip this module there

import errno
import fcntl
import json
import os
import random
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._backend import calls
from ._errors import (ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION, AccessDenied,
                      InvalidParameter, PortReservationError, ReservationConflict,
                      ReservationExhausted, ReservationNotFound, from_errno)
from ._port_list import parse_port_list
from ._records import PersistentReservation, Protocol

RESERVED_PORTS = "/proc/sys/net/ipv4/ip_local_reserved_ports"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
SO_NETNS_COOKIE = 71  # Linux 5.14+; not in Python's socket module
ERROR_NOT_ENOUGH_MEMORY = 8
_FORMAT = 1
_IPPROTO = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP}
_random = random.Random(os.urandom(16))


def state_dir() -> str:
    return os.environ.get("PORTRESERVE_STATE_DIR") or "/var/lib/portreserve"


def _netns_key() -> str:
    """This namespace's name in the state dir: its cookie, unique for the boot."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            return "netns-%d" % struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET,
                                                                SO_NETNS_COOKIE, 8))[0]
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                raise
    # Before Linux 5.14: the namespace inode, which the kernel reuses once a
    # namespace is gone, so a later namespace may inherit a dead one's state.
    return "netns-ino-%d" % os.stat("/proc/self/ns/net").st_ino


def _boot_id() -> str:
    with open(BOOT_ID_PATH) as f:
        return f.read().strip()


def _error_from(call: str, exc: OSError) -> PortReservationError:
    """Persistent calls speak Win32 codes: a refusal is ERROR_ACCESS_DENIED."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(f"{call}: {exc.strerror} ({exc.filename})",
                            winerror=ERROR_ACCESS_DENIED, errno=errno.EACCES)
    return from_errno(exc.errno or errno.EIO, f"{call} ({exc.filename})")


# Port sets <-> the kernel's "a-b,c" text.

def _ports(spans: Iterable[Sequence[int]]) -> set[int]:
    return {p for lo, hi in spans for p in range(lo, hi + 1)}


def _spans(ports: set[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for p in sorted(ports):
        if spans and spans[-1][1] == p - 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return spans


def _read_kernel() -> set[int]:
    with open(RESERVED_PORTS) as f:
        return _ports(parse_port_list(f.read()))


def _write_kernel(fd: int, ports: set[int], call: str) -> None:
    text = ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in _spans(ports))
    data = (text or "\n").encode()
    # The kernel parses at most one page per write and silently applies a
    # truncated prefix of a longer one; refuse rather than lose entries.
    if len(data) > os.sysconf("SC_PAGE_SIZE") - 1:
        raise PortReservationError(f"{call}: the kernel's reserved-ports list would not fit "
                                   f"in one write", errno=errno.ENOSPC,
                                   winerror=ERROR_NOT_ENOUGH_MEMORY)
    try:
        os.pwrite(fd, data, 0)  # offset 0: every write replaces the whole list
    except OSError as exc:
        raise _error_from(call, exc) from None


# The saved state of one namespace.

class _State:
    def __init__(self, path: str, data: dict[str, Any] | None) -> None:
        data = data or {}
        self.path = path
        self.boot_id: str | None = data.get("boot_id")
        self.reservations: list[dict[str, Any]] = data.get("reservations", [])
        self.added: set[int] = _ports(data.get("added", []))

    def reserved(self) -> set[int]:
        return _ports([(r["start"], r["start"] + r["count"] - 1) for r in self.reservations])

    def find(self, protocol: Protocol, start: int, count: int) -> dict[str, Any] | None:
        for r in self.reservations:
            if (r["protocol"], r["start"], r["count"]) == (protocol.value, start, count):
                return r
        return None

    def dump(self) -> bytes:
        return json.dumps({"format": _FORMAT, "boot_id": self.boot_id,
                           "reservations": self.reservations,
                           "added": _spans(self.added)}).encode() + b"\n"

    def copy(self) -> _State:
        return _State(self.path, json.loads(self.dump()))


def _state_path() -> str:
    return os.path.join(state_dir(), _netns_key() + ".json")


def _load(path: str, call: str) -> _State:
    """The saved state (empty if none); needs no lock: files are replaced whole."""
    try:
        with open(path, "rb") as f:
            return _State(path, json.loads(f.read()))
    except FileNotFoundError:
        return _State(path, None)
    except OSError as exc:
        raise _error_from(call, exc) from None
    except ValueError as exc:  # edited by hand; we only ever replace it whole
        raise PortReservationError(f"{call}: the state file {path} is damaged: {exc}",
                                   errno=errno.EIO) from None


def _save(state: _State, call: str) -> None:
    tmp = state.path + ".tmp"  # one writer at a time: we hold the lock
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: readable by all
            os.write(fd, state.dump())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, state.path)
        dfd = os.open(os.path.dirname(state.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)
    except OSError as exc:
        raise _error_from(call, exc) from None


class _Change:
    """What a locked change works on: the state, the kernel list, the sysctl fd."""

    def __init__(self, state: _State, kernel: set[int], sysctl: int, call: str) -> None:
        self.state, self.kernel, self.sysctl, self.call = state, kernel, sysctl, call

    def add(self, new: _State, ports: set[int]) -> None:
        """Commit ``new`` and list ``ports``: state first (see the docstring)."""
        old = self.state
        _save(new, self.call)
        if ports - self.kernel:
            try:
                _write_kernel(self.sysctl, self.kernel | ports, self.call)
            except BaseException:
                _save(old, self.call)  # nothing changes on a failed call
                raise
        self.state, self.kernel = new, self.kernel | ports

    def remove(self, new: _State, ports: set[int]) -> None:
        """Commit ``new`` and unlist ``ports``: kernel list first (see the docstring)."""
        if ports & self.kernel:
            _write_kernel(self.sysctl, self.kernel - ports, self.call)
        try:
            _save(new, self.call)
        except BaseException:
            _write_kernel(self.sysctl, self.kernel, self.call)
            raise
        self.state, self.kernel = new, self.kernel - ports


@contextmanager
def _change(call: str) -> Iterator[_Change]:
    """Hold the lock; fail with AccessDenied before anything changes if we may not write."""
    directory = state_dir()
    fds: list[int] = []
    try:
        try:
            # Privilege is the kernel's answer to opening the sysctl for
            # writing (CAP_NET_ADMIN over this namespace), not a uid test.
            # Asked first, so that a refused call leaves not even a directory.
            fds.append(os.open(RESERVED_PORTS, os.O_WRONLY | os.O_CLOEXEC))
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755, exist_ok=True)
                os.chmod(directory, 0o755)  # whatever the umask
            fds.append(os.open(os.path.join(directory, "lock"),
                               os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
            fcntl.flock(fds[1], fcntl.LOCK_EX)
            state = _load(_state_path(), call)
            # Probe that we may replace the state file before changing anything.
            os.close(os.open(state.path + ".tmp",
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
            os.unlink(state.path + ".tmp")
            kernel = _read_kernel()
        except OSError as exc:
            raise _error_from(call, exc) from None
        change = _Change(state, kernel, fds[0], call)
        _reconcile(change)
        yield change
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing the lock file releases the lock


def _reconcile(change: _Change) -> None:
    """List the missing ports of saved reservations (after a reboot or a crash)."""
    new = change.state.copy()
    boot = _boot_id()
    if new.boot_id != boot:
        new.boot_id = boot
        new.added = set()  # what we listed in an earlier boot is gone with it
    missing = new.reserved() - change.kernel
    new.added |= missing
    if missing or new.boot_id != change.state.boot_id:
        change.add(new, missing)


def _busy(protocol: Protocol, ports: range) -> list[int]:
    """Ports of the block that some socket has bound right now."""
    try:
        taken = calls.bound_ports(_IPPROTO[protocol])
        return [p for p in ports if taken[p]]
    except OSError:  # no sock_diag (old kernel, seccomp): try each port
        busy = []
        family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
        for p in ports:
            with socket.socket(family, protocol.socket_type) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                try:
                    s.bind(("", p))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    busy.append(p)
        return busy


def _conflict(call: str, what: str) -> ReservationConflict:
    return ReservationConflict(f"{call}: {what}", winerror=ERROR_SHARING_VIOLATION)


def _new_token(state: _State) -> int:
    used = {r["token"] for r in state.reservations}
    while True:
        token = _random.getrandbits(64)
        if token and token not in used:
            return token


# The interface _linux.py calls.  Arguments are already checked.

def create(protocol: Protocol, start: int, count: int) -> int:
    call = f"create_persistent_{protocol.value}_port_reservation"
    block = range(start, start + count)
    with _change(call) as change:
        for r in change.state.reservations:
            if (r["protocol"] == protocol.value and r["start"] < block.stop
                    and start < r["start"] + r["count"]):
                raise _conflict(call, f"{protocol.value.upper()} ports {start}..{block[-1]} "
                                      f"overlap the persistent reservation "
                                      f"{r['start']}..{r['start'] + r['count'] - 1}")
        busy = _busy(protocol, block)
        if busy:
            raise _conflict(call, f"{protocol.value.upper()} port {busy[0]} is in use")
        new = change.state.copy()
        token = _new_token(new)
        new.reservations.append({"protocol": protocol.value, "start": start,
                                 "count": count, "token": token})
        ports = set(block)
        new.added |= ports - change.kernel  # listed by others before us: theirs
        change.add(new, ports)
        return token


def delete(protocol: Protocol, start: int, count: int) -> None:
    call = f"delete_persistent_{protocol.value}_port_reservation"
    with _change(call) as change:
        new = change.state.copy()
        r = new.find(protocol, start, count)
        if r is None:
            raise ReservationNotFound(f"{call}: no persistent {protocol.value.upper()} "
                                      f"reservation of {start}..{start + count - 1}")
        new.reservations.remove(r)
        # Unlist only ports we listed that no reservation (of either protocol) covers.
        ports = (set(range(start, start + count)) & new.added) - new.reserved()
        new.added -= ports
        change.remove(new, ports)


def lookup(protocol: Protocol, start: int, count: int) -> int:
    call = f"lookup_persistent_{protocol.value}_port_reservation"
    r = _load(_state_path(), call).find(protocol, start, count)
    if r is None:
        raise ReservationNotFound(f"{call}: no persistent {protocol.value.upper()} "
                                  f"reservation of {start}..{start + count - 1}")
    return int(r["token"])


def list_all(protocol: Protocol | None) -> list[PersistentReservation]:
    state = _load(_state_path(), "list_persistent")
    kernel = _read_kernel() if state.reservations else set()
    current = state.boot_id == _boot_id()
    out = []
    for r in state.reservations:
        if protocol is None or r["protocol"] == protocol.value:
            applied = current and set(range(r["start"], r["start"] + r["count"])) <= kernel
            out.append(PersistentReservation(r["start"], r["count"], Protocol(r["protocol"]),
                                             r["token"], applied))
    return sorted(out, key=lambda p: (p.protocol.value, p.start))


def restore() -> list[PersistentReservation]:
    """Re-list every saved reservation of this namespace (at boot); tokens are kept."""
    if _load(_state_path(), "restore").reservations:
        with _change("restore"):
            pass  # _change reconciles
    return list_all(None)


class _Block:
    """A persistent block as _linux.bind_associated sees it: no holders, plain binds."""

    closed = False

    def __init__(self, r: dict[str, Any]) -> None:
        self.protocol = Protocol(r["protocol"])
        self.start, self.count, self.token = r["start"], r["count"], r["token"]

    def take(self, sock: socket.socket, host: str, port: int = 0) -> int:
        """Bind ``sock`` to ``port``, or to the first port of the block that binds."""
        if sock.getsockname()[1]:
            raise InvalidParameter(f"bind: {sock!r} is already bound")
        block = range(self.start, self.start + self.count)
        if port and port not in block:
            raise InvalidParameter(f"bind: port {port} is not in block "
                                   f"{self.start}..{block[-1]}")
        for p in [port] if port else block:
            try:
                sock.bind((host, p))
                return p
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise from_errno(exc.errno, f"bind to port {p}") from None
        raise ReservationExhausted(f"bind: every port of {self.start}..{block[-1]} is in use"
                                   if not port else f"bind: port {port} is in use")


def block_for_token(token: int) -> _Block | None:
    for r in _load(_state_path(), "bind").reservations:
        if r["token"] == token:
            return _Block(r)
    return None
