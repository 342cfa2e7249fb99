"""Persistent port reservations on Linux: a saved store plus the kernel's list.

Windows keeps persistent reservations in its TCP/IP stack's own store.  Linux
has none, so this module keeps one, per network namespace, and mirrors it into
/proc/sys/net/ipv4/ip_local_reserved_ports, which keeps the ports out of
automatic assignment (bind port 0, connect, sendto) for TCP and UDP alike.
Explicit binds are not stopped by the kernel list, as docs/linux.md records.

Layout of ``$PORTRESERVE_STATE_DIR`` (default /var/lib/portreserve)::

    lock                 mode 0600; flock'ed exclusively around every change
    netns-<cookie>.json  mode 0644; the state of the namespace whose
                         SO_NETNS_COOKIE is <cookie>

Trust.  Root runs the changing calls, so the store is a privilege boundary.
The directory must be a real directory (not a symbolic link) that is owned
by the caller (by root or the caller, for the reading calls) and that
neither group nor others may write: anyone who can write it could swap the
files under root.  A store that is not so is refused with AccessDenied
before anything is read or written.  Inside it every file is opened relative
to the directory's descriptor with O_NOFOLLOW; temporaries get random names
and are created with O_EXCL; the lock file is 0600, so nobody else can open
it, let alone hold it, and waiting for it ends after LOCK_TIMEOUT seconds
with ETIMEDOUT.

A state file holds the boot it belongs to (/proc/sys/kernel/random/boot_id),
the reservations (protocol, start, count, token) and ``added``: the ports
*we* put into the kernel list.  Ports that were already listed are left to
whoever listed them; a port stays listed while any reservation (TCP or UDP)
covers it, and delete removes only ports in ``added`` that no reservation
still covers.  It is checked whole before anything of it is used (owner,
regular file, size, every field; see _parse): a file that is not exactly
what this module writes is "damaged" (errno EIO, winerror
ERROR_FILE_CORRUPT), names itself in the message, and nothing is applied.

Crash safety.  Files are replaced by write-temporary, fsync, rename, fsync of
the directory, so a reader sees the old or the new state, never a mix; a
failed or short write (a full disk: ENOSPC) removes the temporary and leaves
the old state.  The kernel list is a second resource, so the order of the two
writes matters:
- adding ports (create, restore) saves the state first, then writes the list;
- removing ports (delete) writes the list first, then saves the state.
A kill -9 between the two writes thus leaves at worst a saved reservation
whose ports are not (all) listed yet - never listed ports that the state does
not own, and never a reported reservation unsaved.  Every change starts by
re-listing missing ports of saved reservations (``_reconcile``), which
finishes the interrupted call, and by removing temporaries a killed writer
left; ``list`` shows such a reservation with ``applied=False`` until then.

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

Hooks for tests (documented here, not public API): ``BOOT_ID_PATH`` may be
pointed at another file to simulate a reboot; ``LOCK_TIMEOUT`` (seconds)
may be lowered.
"""

from __future__ import annotations

import sys

assert sys.platform != "win32"  # Linux only; also tells mypy to skip this module there

import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._backend import calls
from ._errors import (ERROR_ACCESS_DENIED, ERROR_FILE_CORRUPT, ERROR_SHARING_VIOLATION,
                      ERROR_TIMEOUT, AccessDenied, InvalidParameter, PortReservationError,
                      ReservationConflict, ReservationExhausted, ReservationNotFound,
                      from_errno)
from ._interfaces import socket_from_take
from ._port_list import format_port_list, parse_port_list, ports_of, spans_of
from ._records import PersistentReservation, Protocol

RESERVED_PORTS = "/proc/sys/net/ipv4/ip_local_reserved_ports"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
LOCK_TIMEOUT = 30.0  # seconds; a change takes milliseconds
SO_NETNS_COOKIE = 71  # Linux 5.14+; not in Python's socket module
ERROR_NOT_ENOUGH_MEMORY = 8
# A valid state has at most one reservation per port and protocol, each under
# 100 bytes of JSON: about 13 MB at the very most.
MAX_STATE_BYTES = 16 << 20
_FORMAT = 1
_IPPROTO = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP}
_LOCK = "lock"
_TMP_SUFFIX = ".tmp"


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
        return f.read(100).strip()


# Errors.  Persistent calls speak Win32 codes, as iphlpapi does on Windows.

def _error_from(call: str, exc: OSError, path: str | None = None) -> PortReservationError:
    """``exc`` as the documented class, naming the call and the file."""
    if isinstance(exc, PortReservationError):
        return exc
    where = path or exc.filename
    what = f"{call} ({where})" if where else call
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(f"{what}: {exc.strerror}",
                            winerror=ERROR_ACCESS_DENIED, errno=errno.EACCES)
    return from_errno(exc.errno, what)


@contextmanager
def _failing_as(call: str) -> Iterator[None]:
    """Every OSError from inside (no descriptors left, /proc missing) as a documented class."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, PortReservationError):
            raise
        raise _error_from(call, exc) from None


def _damaged(call: str, path: str, why: str) -> PortReservationError:
    return PortReservationError(
        f"{call}: the state file {path} is damaged: {why}; nothing was applied "
        f"(move it away to start afresh, and check {RESERVED_PORTS})",
        errno=errno.EIO, winerror=ERROR_FILE_CORRUPT)


def _refused(call: str, path: str, why: str) -> AccessDenied:
    return AccessDenied(
        f"{call}: refusing the state directory {path}: {why} (it must be a directory "
        f"owned by uid {os.geteuid()}, writable by no one else; see PORTRESERVE_STATE_DIR)",
        winerror=ERROR_ACCESS_DENIED)


# The kernel list.

def _read_kernel() -> set[int]:
    with open(RESERVED_PORTS) as f:
        return ports_of(parse_port_list(f.read(1 << 20)))


def _write_kernel(fd: int, ports: set[int], call: str) -> None:
    data = (format_port_list(ports) or "\n").encode()
    # The kernel parses at most one page per write and silently applies a
    # truncated prefix of a longer one; refuse rather than lose entries.
    if len(data) > os.sysconf("SC_PAGE_SIZE") - 1:
        raise PortReservationError(f"{call}: the kernel's reserved-ports list would not fit "
                                   f"in one write", errno=errno.ENOSPC,
                                   winerror=ERROR_NOT_ENOUGH_MEMORY)
    try:
        os.pwrite(fd, data, 0)  # offset 0: every write replaces the whole list
    except OSError as exc:
        raise _error_from(call, exc, RESERVED_PORTS) from None


# The saved state of one namespace.

class _State:
    def __init__(self, path: str, boot_id: str | None = None,
                 reservations: list[dict[str, Any]] | None = None,
                 added: set[int] | None = None) -> None:
        self.path = path
        self.boot_id = boot_id
        self.reservations = reservations if reservations is not None else []
        self.added = added if added is not None else set()

    def reserved(self) -> set[int]:
        return ports_of((r["start"], r["start"] + r["count"] - 1) for r in self.reservations)

    def find(self, protocol: Protocol, start: int, count: int) -> dict[str, Any] | None:
        for r in self.reservations:
            if (r["protocol"], r["start"], r["count"]) == (protocol.value, start, count):
                return r
        return None

    def dump(self) -> bytes:
        return json.dumps({"format": _FORMAT, "boot_id": self.boot_id,
                           "reservations": self.reservations,
                           "added": spans_of(self.added)}).encode() + b"\n"

    def copy(self) -> _State:
        return _State(self.path, self.boot_id, [dict(r) for r in self.reservations],
                      set(self.added))


def _is_int(value: object, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi  # not bool, not float


def _parse(data: bytes) -> tuple[str | None, list[dict[str, Any]], set[int]]:
    """Check a state file's bytes whole; ValueError saying what is wrong.

    Only what _State.dump writes passes: the four keys, protocols tcp/udp,
    blocks inside 1..65535 that do not overlap within a protocol, distinct
    non-zero 64-bit tokens, and ``added`` spans covered by the reservations.
    The sizes are bounded by that, so nothing here allocates much.
    """
    doc = json.loads(data)
    if not isinstance(doc, dict) or set(doc) != {"format", "boot_id", "reservations", "added"}:
        raise ValueError("not an object with exactly format, boot_id, reservations, added")
    if doc["format"] != _FORMAT or type(doc["format"]) is not int:
        raise ValueError(f"format {str(doc['format'])[:40]} is not {_FORMAT}")
    boot_id = doc["boot_id"]
    if boot_id is not None and (not isinstance(boot_id, str) or len(boot_id) > 64):
        raise ValueError("boot_id is not a short string")
    if not isinstance(doc["reservations"], list):
        raise ValueError("reservations is not a list")
    reservations = []
    tokens = set()
    blocks: dict[str, list[tuple[int, int]]] = {"tcp": [], "udp": []}
    for i, r in enumerate(doc["reservations"]):
        where = f"reservations[{i}]"
        if not isinstance(r, dict) or set(r) != {"protocol", "start", "count", "token"}:
            raise ValueError(f"{where} is not an object with protocol, start, count, token")
        if r["protocol"] not in ("tcp", "udp"):
            raise ValueError(f"{where}.protocol is not 'tcp' or 'udp'")
        if not _is_int(r["start"], 1, 65535) or not _is_int(r["count"], 1, 65536 - r["start"]):
            raise ValueError(f"{where} is not a block of ports inside 1..65535")
        if not _is_int(r["token"], 1, (1 << 64) - 1) or r["token"] in tokens:
            raise ValueError(f"{where}.token is not a distinct non-zero 64-bit value")
        tokens.add(r["token"])
        blocks[r["protocol"]].append((r["start"], r["start"] + r["count"] - 1))
        reservations.append(dict(r))
    for spans in blocks.values():
        spans.sort()
        for (_, hi), (lo, _) in zip(spans, spans[1:]):
            if lo <= hi:
                raise ValueError(f"two reservations of one protocol overlap at port {lo}")
    added_spans = doc["added"]
    if not isinstance(added_spans, list) or len(added_spans) > 65535:
        raise ValueError("added is not a list of port spans")
    spans = []
    for span in added_spans:
        if (not isinstance(span, list) or len(span) != 2 or not _is_int(span[0], 1, 65535)
                or not _is_int(span[1], span[0], 65535)):
            raise ValueError("added is not a list of [first, last] port spans")
        spans.append((span[0], span[1]))
    # Reservations of one protocol do not overlap: at most 2 * 65535 ports here.
    covered = ports_of(s for per in blocks.values() for s in per)
    added = ports_of(spans)
    if not added <= covered:
        raise ValueError(f"added lists port {min(added - covered)}, which no reservation covers")
    return boot_id, reservations, added


class _Store:
    """The state directory, opened once without following links, and checked.

    ``write``: the caller changes the store, so it must own the directory;
    readers also accept one owned by root.  ``dir_fd`` is None when a
    reader finds no store at all.
    """

    def __init__(self, call: str, *, write: bool, create: bool = True) -> None:
        self.call, self.path = call, state_dir()
        self.name = _netns_key() + ".json"
        self.state_path = os.path.join(self.path, self.name)
        self.dir_fd: int | None = None
        self.owners = owners = {os.geteuid()} if write else {0, os.geteuid()}
        made = False
        if write and create:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, 0o755, exist_ok=True)
            try:
                os.mkdir(self.path, 0o755)
                made = True
            except FileExistsError:
                pass
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if write and create:
                raise
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refused(call, self.path, "it is a symbolic link or not a directory")
            raise
        try:
            st = os.fstat(fd)
            if st.st_uid not in owners:
                raise _refused(call, self.path, f"it is owned by uid {st.st_uid}")
            if st.st_mode & 0o022:
                raise _refused(call, self.path, f"its mode {stat.S_IMODE(st.st_mode):04o} "
                                                "lets group or others write it")
            if made:
                os.fchmod(fd, 0o755)  # readable by all, whatever the umask
        except BaseException:
            os.close(fd)
            raise
        self.dir_fd = fd

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def load(self) -> _State:
        """The saved state (empty if none), checked whole; needs no lock:
        files are replaced whole."""
        if self.dir_fd is None:
            return _State(self.state_path)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks
        try:
            fd = os.open(self.name, flags, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return _State(self.state_path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _damaged(self.call, self.state_path, "it is a symbolic link") from None
            raise _error_from(self.call, exc, self.state_path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _damaged(self.call, self.state_path, "it is not a regular file")
            if st.st_uid not in self.owners or st.st_mode & 0o022:
                raise _damaged(self.call, self.state_path,
                               f"it is owned by uid {st.st_uid} with mode "
                               f"{stat.S_IMODE(st.st_mode):04o}, not written by this store")
            if st.st_size > MAX_STATE_BYTES:
                raise _damaged(self.call, self.state_path,
                               f"{st.st_size} bytes is more than a state can hold")
            chunks = []
            size = 0
            while size <= MAX_STATE_BYTES:  # bounded even if the size changes under us
                chunk = os.read(fd, MAX_STATE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise _error_from(self.call, exc, self.state_path) from None
        finally:
            os.close(fd)
        if size > MAX_STATE_BYTES:
            raise _damaged(self.call, self.state_path, "it is larger than a state can be")
        try:
            boot_id, reservations, added = _parse(b"".join(chunks))
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nesting
            raise _damaged(self.call, self.state_path,
                           str(exc)[:200] or type(exc).__name__) from None
        return _State(self.state_path, boot_id, reservations, added)

    def save(self, state: _State) -> None:
        """Replace the state file whole: a temporary of a random name created
        exclusively, every byte written, fsync, rename, fsync of the directory.
        On any failure (ENOSPC on a full disk) the old file stays as it was."""
        assert self.dir_fd is not None
        data = state.dump()
        tmp = f".{self.name}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=self.dir_fd)
            try:
                try:
                    os.fchmod(fd, 0o644)  # whatever the umask: readable by all
                    view = memoryview(data)
                    while view:  # a short write is not an error; the next write says why
                        written = os.write(fd, view)
                        if written <= 0:
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        view = view[written:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                os.unlink(tmp, dir_fd=self.dir_fd)
                raise
            os.fsync(self.dir_fd)  # make the rename itself durable
        except OSError as exc:
            raise _error_from(self.call, exc, self.state_path) from None

    def sweep(self) -> None:
        """Remove temporaries left by a writer killed mid-write (we hold the lock)."""
        assert self.dir_fd is not None
        for name in os.listdir(self.dir_fd):
            if name.startswith("." + self.name + ".") and name.endswith(_TMP_SUFFIX):
                os.unlink(name, dir_fd=self.dir_fd)  # never follows a link

    def _lock(self) -> int:
        assert self.dir_fd is not None
        lock_path = os.path.join(self.path, _LOCK)
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.001
        while time.monotonic() <= deadline:
            fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.dir_fd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    raise _refused(self.call, self.path,
                                   f"its lock file is not a regular file of uid {os.geteuid()}")
                if st.st_mode & 0o077:
                    # Made readable by an older version: anyone may have it
                    # open and flock it.  A fresh one (0600) takes its place.
                    tmp = f".{_LOCK}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
                    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd))
                    os.rename(tmp, _LOCK, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                    os.close(fd)
                    continue
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise self._timeout(lock_path) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                # The file we locked must still be the lock (not replaced meanwhile).
                if os.stat(_LOCK, dir_fd=self.dir_fd, follow_symlinks=False).st_ino == st.st_ino:
                    return fd
                os.close(fd)
            except BaseException:
                os.close(fd)
                raise
        raise self._timeout(lock_path)

    def lock(self) -> int:
        """The lock file's descriptor, flock'ed; ETIMEDOUT after LOCK_TIMEOUT seconds."""
        try:
            return self._lock()
        except OSError as exc:
            raise _error_from(self.call, exc, os.path.join(self.path, _LOCK)) from None

    def _timeout(self, lock_path: str) -> PortReservationError:
        return PortReservationError(
            f"{self.call}: the lock {lock_path} was held by another process for "
            f"{LOCK_TIMEOUT:g} seconds", errno=errno.ETIMEDOUT, winerror=ERROR_TIMEOUT)


@contextmanager
def _reading(call: str) -> Iterator[_State]:
    """The checked state, for calls that only read it."""
    with _failing_as(call):
        store = _Store(call, write=False)
        try:
            state = store.load()
        finally:
            store.close()
    yield state


class _Change:
    """What a locked change works on: the store, the state, the kernel list, the sysctl fd."""

    def __init__(self, store: _Store, state: _State, kernel: set[int], sysctl: int,
                 call: str) -> None:
        self.store, self.state, self.kernel, self.sysctl = store, state, kernel, sysctl
        self.call = call

    def add(self, new: _State, ports: set[int]) -> None:
        """Commit ``new`` and list ``ports``: state first (see the docstring)."""
        old = self.state
        self.store.save(new)
        if ports - self.kernel:
            try:
                _write_kernel(self.sysctl, self.kernel | ports, self.call)
            except BaseException:
                self.store.save(old)  # nothing changes on a failed call
                raise
        self.state, self.kernel = new, self.kernel | ports

    def remove(self, new: _State, ports: set[int]) -> None:
        """Commit ``new`` and unlist ``ports``: kernel list first (see the docstring)."""
        if ports & self.kernel:
            _write_kernel(self.sysctl, self.kernel - ports, self.call)
        try:
            self.store.save(new)
        except BaseException:
            _write_kernel(self.sysctl, self.kernel, self.call)
            raise
        self.state, self.kernel = new, self.kernel - ports


class _NoStore(Exception):
    """_change(create=False) found no state directory: there is nothing to change."""


@contextmanager
def _change(call: str, *, create: bool = True) -> Iterator[_Change]:
    """Hold the lock; fail with AccessDenied before anything changes if we may not write.

    ``create=False`` (delete): raise _NoStore rather than make a missing store.
    """
    with _failing_as(call):
        # Privilege is the kernel's answer to opening the sysctl for writing
        # (CAP_NET_ADMIN over this namespace), not a uid test.  Asked first,
        # so that a refused call leaves not even a directory.
        try:
            sysctl = os.open(RESERVED_PORTS, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _error_from(call, exc, RESERVED_PORTS) from None
        store = None
        lock = -1
        try:
            store = _Store(call, write=True, create=create)
            if store.dir_fd is None:
                raise _NoStore
            lock = store.lock()
            state = store.load()  # checked whole before anything of it is applied
            store.sweep()
            kernel = _read_kernel()
            change = _Change(store, state, kernel, sysctl, call)
            _reconcile(change)
            yield change
        finally:
            if lock >= 0:
                os.close(lock)  # closing the lock file releases the lock
            if store is not None:
                store.close()
            os.close(sysctl)


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
    """64 bits from the system's CSPRNG, non-zero, unused in this namespace."""
    used = {r["token"] for r in state.reservations}
    while True:
        token = int.from_bytes(secrets.token_bytes(8), "little")
        if token and token not in used:
            return token


# The interface _posix.py calls.  Arguments are already checked.

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
    missing = ReservationNotFound(f"{call}: no persistent {protocol.value.upper()} "
                                  f"reservation of {start}..{start + count - 1}")
    try:
        with _change(call, create=False) as change:
            new = change.state.copy()
            r = new.find(protocol, start, count)
            if r is None:
                raise missing
            new.reservations.remove(r)
            # Unlist only ports we listed that no reservation (of either protocol) covers.
            ports = (set(range(start, start + count)) & new.added) - new.reserved()
            new.added -= ports
            change.remove(new, ports)
    except _NoStore:
        raise missing from None


def lookup(protocol: Protocol, start: int, count: int) -> int:
    call = f"lookup_persistent_{protocol.value}_port_reservation"
    with _reading(call) as state:
        r = state.find(protocol, start, count)
    if r is None:
        raise ReservationNotFound(f"{call}: no persistent {protocol.value.upper()} "
                                  f"reservation of {start}..{start + count - 1}")
    return int(r["token"])


def list_all(protocol: Protocol | None) -> list[PersistentReservation]:
    call = "list_persistent"
    with _reading(call) as state, _failing_as(call):
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
    with _reading("restore") as state:
        pass
    if state.reservations:
        with _change("restore"):
            pass  # _change reconciles
    return list_all(None)


class _Block:
    """A persistent block as _posix.bind_associated sees it: no holders, plain binds."""

    closed = False

    def __init__(self, r: dict[str, Any]) -> None:
        self.protocol = Protocol(r["protocol"])
        self.start, self.count, self.token = r["start"], r["count"], r["token"]

    def close(self) -> None:
        """Nothing is held for a persistent block in this process: nothing to give back."""

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

    def socket(self, family: int | None = None, host: str = "",
               port: int = 0) -> socket.socket:
        """A new socket (dual-stack if AF_INET6) bound through take()."""
        return socket_from_take(self, family, host, port)


def block_for_token(token: int) -> _Block | None:
    with _reading("bind") as state:
        for r in state.reservations:
            if r["token"] == token:
                return _Block(r)
    return None
