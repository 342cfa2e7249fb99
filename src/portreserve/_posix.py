"""Runtime port reservations on Linux, built from holder sockets.

Linux has no reservation call, so a reserved port is one *holder*: a socket
bound to the port on [::] with IPV6_V6ONLY=0 (or 0.0.0.0 on a host without
IPv6), never listened on and without reuse options.  While it is open no
other process can bind the port on any address, and the kernel never picks
it for bind(port 0), connect() or sendto().  The kernel closes holders when
the process dies, so a crash frees the block.

Reservation.socket() hands out the holder itself, and takes it back as the
port's holder when it is closed (Block.readopt: stop listening, forget the
peer, clear reuse options; the port is never unbound).  A user's own socket
gets the port by swapping the holder in for its descriptor (no window at all)
where family and address allow, and otherwise by a one-bind SO_REUSEPORT
overlap, after which a UDP holder stays to keep the port's other addresses
closed (a TCP one cannot: listen() would fail).  When a user's own socket is
closed the port is held again at the next call on the block, if nobody took
it in between (TIME_WAIT without SO_REUSEADDR, or another process in that
moment): then it is retried at each call until it can be held.  README.md,
"What is enforced", states each case.

The same engine runs on macOS with what POSIX offers there: no socket dump
(blocks are found by trying binds), no reserved-ports list, no persistent
reservations; README.md, "On macOS", says what that costs.
"""

from __future__ import annotations

import sys

assert sys.platform != "win32"  # POSIX only; also tells mypy to skip this module there

import _socket
import contextlib
import errno
import os
import random
import resource
import socket
import struct
import threading
import time
import weakref
from socket import socket as Socket  # for annotations inside Block, whose socket() hides the module
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator

from . import _args, _errors
from . import _linux_reserved_ports as _store  # imported now: later, no descriptor may be left
from ._backend import calls
from ._errors import (
    InvalidParameter,
    NotSupported,
    ReservationExhausted,
    ReservationNotFound,
)
from ._interfaces import socket_from_take
from ._port_list import parse_port_list
from ._records import PortReservationInstance, Protocol

if TYPE_CHECKING:
    from ._interfaces import Block as _AnyBlock
    from ._interfaces import Fds
    from ._records import PersistentReservation

_LINUX = sys.platform.startswith("linux")
_IPPROTO = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP}
_family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
_random = random.Random(os.urandom(16))
_lock = threading.Lock()
# Runtime reservations of this process by token.  Weak: a reservation nobody
# holds any more is closed by its finalizer (acquire() ties one to its socket).
_blocks: weakref.WeakValueDictionary[int, Block] = weakref.WeakValueDictionary()
_associated: weakref.WeakKeyDictionary[socket.socket, int] = weakref.WeakKeyDictionary()


def _new_token() -> int:
    """A token nobody can guess: 64 bits from the system's CSPRNG (not our
    seeded generator, whose output can be predicted and repeats after fork),
    non-zero and unique among this process's live reservations.  Called with
    _lock held.  Drawn 64 at a time (one os.urandom call costs as much as a
    tenth of reserve(1)); a forked child drops what is left."""
    global _token_pool
    while True:
        if not _token_pool:
            _token_pool = list(_unpack_tokens(os.urandom(512)))
        token = _token_pool.pop()
        if token and token not in _blocks:
            return token


_token_pool: list[int] = []
_unpack_tokens = struct.Struct("<64Q").unpack


def _raise_nofile_limit() -> bool:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; True if that helped."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # macOS refuses its usual unlimited hard limit as a soft one; OPEN_MAX
    # (10240) it takes.
    for target in (hard, 10240):
        if soft < target <= hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                return True
            except (ValueError, OSError):
                pass
    return False


def _hold(type_: int, start: int, count: int, fds: Fds) -> tuple[int, int]:
    """calls.hold, falling back to IPv4 holders on a host without IPv6."""
    global _family
    n, err = calls.hold(_family, type_, start, count, fds)
    if n != count and err == errno.EAFNOSUPPORT and _family == socket.AF_INET6:
        _family = socket.AF_INET
        n, err = calls.hold(_family, type_, start, count, fds)
    return n, (0 if n == count else err)


def _hold_block(protocol: Protocol, start: int, count: int, fds: Fds) -> int:
    """Hold ``start .. start+count-1`` (any free block if start is 0); its start."""
    for retry in (True, False):
        try:
            if start == 0:
                return _hold_wildcard(protocol, count, fds)
            n, err = _hold(protocol.socket_type, start, count, fds)
            if n == count:
                return start
            raise _errors.from_errno(err, f"reserve: port {start + n}")
        except OSError as exc:  # PortReservationError is one too
            # Out of descriptors, wherever it struck (a holder, /proc, the
            # netlink socket): raise the soft limit and try once more.
            if retry and exc.errno in (errno.EMFILE, errno.ENFILE) and _raise_nofile_limit():
                continue
            if isinstance(exc, _errors.PortReservationError):
                raise
            raise _errors.from_errno(exc.errno, "reserve") from None
    raise AssertionError("unreachable")


# A bind that fails with one of these found the port taken: search on.
_TAKEN = (errno.EADDRINUSE, errno.EACCES)


def _open_sysctl(name: str) -> int:
    try:
        return os.open("/proc/sys/net/ipv4/" + name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no /proc (a sandbox); off Linux
        return -1


# ip_local_reserved_ports, read at every reserve(1), is kept open from import
# on: a pread of an open sysctl costs a quarter of opening it.  It reads the
# network namespace of the import (a process that moves to another one
# later: see docs/linux.md); a forked child shares it harmlessly (pread has
# no offset).
_RESERVED_FD = _open_sysctl("ip_local_reserved_ports") if _LINUX else -1


def _reserved_spans() -> list[tuple[int, int]]:
    """ip_local_reserved_ports: persistent blocks a wildcard search leaves alone."""
    if not _LINUX:
        return []
    # Plain reads: open() with its buffered text layers cost twice as much.
    fd = os.open("/proc/sys/net/ipv4/ip_local_reserved_ports", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = chunk = os.read(fd, 4096)
        while len(chunk) == 4096:  # a sysctl's short read is its end
            chunk = os.read(fd, 4096)
            text += chunk
    finally:
        os.close(fd)
    return parse_port_list(text.decode()) if text.strip() else []


# The ephemeral range for reserve(1), and when it was read: it only steers
# where reserve(1) looks first, so it is read again at most once a second (a
# read costs a tenth of reserve(1)).
_range, _range_read = (0, 0), -2.0


def _hold_one(type_: int, fds: Fds) -> int:
    """reserve(1): a random port of the ephemeral range outside
    ip_local_reserved_ports, bound explicitly (pr_hold_one); 0 when the
    caller must search."""
    global _family, _range, _range_read
    try:
        now = time.monotonic()
        if now - _range_read > 1.0:
            _range, _range_read = calls.port_range(), now
        return calls.hold_one(_family, type_, _range[0], _range[1], _RESERVED_FD,
                              _random.getrandbits(32), fds)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT and _family == socket.AF_INET6:
            _family = socket.AF_INET
            return _hold_one(type_, fds)
        raise _errors.from_errno(exc.errno, "reserve") from None


# About what the dump of bound-only TCP sockets costs, counted in binds.
_BINDS_BEFORE_BOUND_ONLY_DUMP = 128


# calls.bound_ports(which=): all but the TCP sockets only bound, or those alone.
_DUMP_ACTIVE, _DUMP_BOUND_ONLY = 1, 2


def _bound_ports(proto: int, which: int, taken: bytearray) -> bytearray:
    try:
        return calls.bound_ports(proto, which, taken)
    except OSError:  # no sock_diag (old kernel, seccomp, a bad reply): the binds still check
        return taken


def _hold_wildcard(protocol: Protocol, count: int, fds: Fds) -> int:
    """Find and hold a free block of ``count`` ports; return its start.

    The binds are the only real check.  Cheap guesses come first: for one
    port the kernel's own choice (after _hold_one's random ones), for more a
    random start in the ephemeral range.  Only when that collides do we ask
    the kernel which ports are bound (a sock_diag dump, which walks the
    kernel's socket tables of every namespace) and search its map,
    ephemeral range first as Windows does, then every unprivileged port.
    TCP sockets that are only bound are left out of that dump (the costly
    part) and found by the binds, unless there are many.  A map that binds
    proved stale is taken afresh, a bounded number of times (_search).
    """
    type_ = protocol.socket_type
    if count == 1:  # Block tried _hold_one's random ports first
        try:
            # The kernel looks in the ephemeral range only; when that is
            # full (EADDRINUSE) the search below looks further.
            return calls.hold_any(_family, type_, fds)
        except OSError as exc:
            if exc.errno not in _TAKEN:
                raise _errors.from_errno(exc.errno, "reserve") from None
    eph_lo, eph_hi = calls.port_range()
    reserved = _reserved_spans()
    if count > 1 and eph_hi - eph_lo + 1 >= count:
        # A random start keeps concurrent searchers apart, also across fork
        # (the random module reseeds itself in a child).
        start = random.randint(eph_lo, eph_hi - count + 1)
        if not any(lo < start + count and start <= hi for lo, hi in reserved):
            n, err = _hold(type_, start, count, fds)
            if n == count:
                return start
            if err not in _TAKEN:
                raise _errors.from_errno(err, "reserve")
    return _search(protocol, count, fds, eph_lo, eph_hi, reserved)


# How many maps of the kernel's sockets one search may take.  A map is a
# snapshot: while another process reserves and releases, ports it shows
# taken come free and ports it shows free are taken, so a large block can
# find no room in one map and yet fit a fresh one.  A map is taken again
# only after a bind failed on a port it showed free (the host changed, or
# held bound-only sockets the first dump leaves out, which a fresh map then
# includes); a host that has no free block answers after one or two maps.
_MAPS_PER_SEARCH = 4


def _search(protocol: Protocol, count: int, fds: Fds, eph_lo: int, eph_hi: int,
            reserved: list[tuple[int, int]]) -> int:
    """Hold the first free block of ``count`` in the kernel's map of bound
    ports: the ephemeral range first, then every port from 1024."""
    type_ = protocol.socket_type
    proto = _IPPROTO[protocol]
    need = bytes(count)
    for maps in range(_MAPS_PER_SEARCH):
        taken = _bound_ports(proto, _DUMP_ACTIVE, bytearray(65536))
        wasted = 0  # binds that failed in this map
        if maps:
            # Binds failed in the last map: bound-only sockets may be why,
            # and ip_local_reserved_ports may have changed too.
            _bound_ports(proto, _DUMP_BOUND_ONLY, taken)
            wasted = _BINDS_BEFORE_BOUND_ONLY_DUMP  # past the threshold: dumped already
            reserved = _reserved_spans()
        for lo, hi in reserved:
            taken[lo:hi + 1] = b"\1" * (hi - lo + 1)
        failed = False
        for lo, hi in ((eph_lo, eph_hi), (1024, 65535)):
            pos = random.randint(lo, hi)
            for first in (pos, lo):
                while True:
                    start = taken.find(need, first, hi + 1)
                    if start < 0:
                        break
                    n, err = _hold(type_, start, count, fds)
                    if n == count:
                        return start
                    if err not in _TAKEN:
                        raise _errors.from_errno(err, "reserve")
                    taken[start + n] = 1
                    first = start + n + 1
                    failed = True
                    wasted += n + 1
                    if wasted >= _BINDS_BEFORE_BOUND_ONLY_DUMP > wasted - n - 1:
                        # Many ports only bound (other blocks' holders): their
                        # dump costs less than finding them one bind at a time.
                        _bound_ports(proto, _DUMP_BOUND_ONLY, taken)
        if not failed:
            break
    raise _errors.ReservationConflict(
        f"reserve: no free block of {count} consecutive {protocol.value.upper()} ports")


_MAIN_THREAD = threading.main_thread().ident
_get_ident = threading.get_ident
# The main thread's saved signal mask, and how many _signals_held sections
# it is inside (a finalizer may open one inside another): only the outermost
# blocks and restores.
_mask: Any = None  # made at the first section (the backend may refuse: a bad setting)
_depth = 0


class _signals_held:
    """Signals wait (in the main thread, the only one where Python runs their
    handlers) until the block's state is whole again: an exception from a
    handler (KeyboardInterrupt) can then strike only before or after, never
    between a descriptor made and the record that owns it.  Costs two
    system calls."""

    __slots__ = ("main",)

    def __enter__(self) -> None:
        global _depth, _mask
        self.main = _get_ident() == _MAIN_THREAD
        if not self.main:
            return
        if _depth:
            _depth += 1
            return
        if _mask is None:
            _mask = calls.signal_state()
        _depth = 1
        try:
            calls.hold_signals(_mask)
        except BaseException:  # a handler that was already due: nothing done yet
            _depth -= 1
            calls.restore_signals(_mask)
            raise

    def __exit__(self, *exc_info: object) -> None:
        global _depth
        if self.main:
            _depth -= 1
            if not _depth:
                calls.restore_signals(_mask)


class Block:
    """A held block.  Each port of it is, at any moment, exactly one of:

    - free: its holder is in ``_fds`` and it is in ``_free``;
    - out: its holder itself was handed out as a socket (``socket()``), and
      comes back through ``readopt()`` when that socket is closed;
    - lent: handed to the user's own socket (``take()``); a UDP one keeps its
      holder in ``_fds`` beside it.  Checked at every call on the block, and
      held again once that socket is closed;
    - lost: its socket was closed and the port could not be held again yet
      (someone took it in the moment between, or TIME_WAIT that bars it);
      retried at every call.

    Descriptors are owned by ``_fds`` or by a socket object at every point, so
    an exception from a signal handler anywhere leaves nothing unowned.
    """

    # Slots: a reservation is made and dropped on every reserve(1); its
    # state then costs less to set up and to read.
    __slots__ = ("closed", "_fds", "count", "protocol", "_type", "_lock", "_dropped",
                 "start", "family", "_free", "_lent", "_lost", "_given", "owner",
                 "finalizer", "_token", "__weakref__")

    def __init__(self, protocol: Protocol, start: int, count: int) -> None:
        # reserve(1) needs no signal section: the system-call layer stores
        # its holder in _fds as one step (see _hand_out), and a block dropped
        # half made closes what it holds (__del__).  A search or a specific
        # block opens other descriptors on its way (/proc, netlink).
        self.closed = True  # nothing to close until the holders are in _fds
        self._token = 0
        self._fds = calls.new_fds(count)
        self.count, self.protocol = count, protocol
        self._type = protocol.socket_type
        self._lock = threading.Lock()
        # (port, fd) of handed-out holders the garbage collector closed; taken
        # back at the next call (a finalizer may run while the lock is held).
        self._dropped: list[tuple[int, int]] = []
        _every_block.add(weakref.ref(self, _every_block.discard))
        self.closed = False
        try:
            held = 0
            if count == 1 and not start:
                try:
                    held = _hold_one(self._type, self._fds)
                except _errors.PortReservationError:
                    pass  # out of descriptors, say: the full path raises the limit or the error
            if held:
                start = held
            else:
                with _signals_held():
                    if start and _LINUX:
                        _check_persistent(protocol, start, count)
                    start = _hold_block(protocol, start, count, self._fds)
        except BaseException:
            self._close_fds()
            raise
        self.start, self.family = start, _family
        # Free indexes as an ordered set: O(1) to take any or a given one;
        # the port given back last is handed out first, the lowest at start.
        self._free: dict[int, None] = (
            {0: None} if count == 1 else dict.fromkeys(range(count - 1, -1, -1)))
        self._lent: dict[int, weakref.ref[Socket]] = {}
        self._lost: set[int] = set()
        # Holders handed out and detached: (descriptor, its socket's inode).
        self._given: dict[int, tuple[int, int]] = {}
        # Set by acquire(): the socket whose lifetime bounds the reservation.
        self.owner: weakref.ref[socket.socket] | None = None
        self.finalizer: weakref.finalize | None = None

    @property
    def token(self) -> int:
        """Drawn at its first use (most reservations never show theirs), and
        from then on names the block until it is released."""
        if not self._token:
            with _lock:
                if not self._token:
                    self._token = _new_token()
                    if not self.closed:  # else close() may have looked already
                        _blocks[self._token] = self
        return self._token

    def _close_fds(self) -> None:
        # close_all marks each entry -1 as it goes (as one step per entry):
        # interrupted, it can be called again, and the block counts as
        # closed only once it finished.
        calls.close_all(self._fds, self.count)
        if self._dropped:
            with _signals_held():
                for port, fd in self._drain_dropped():
                    if fd >= 0:
                        os.close(fd)
        self.closed = True

    def _drain_dropped(self) -> list[tuple[int, int]]:
        dropped = getattr(self, "_dropped", [])
        taken = []
        while dropped:
            taken.append(dropped.pop())
        return taken

    def _pick(self, port: int) -> int:
        """An index whose holder is free (``port``'s, or any if 0); the lock is held."""
        if self.closed:
            raise InvalidParameter(f"bind: reservation {self.token} was released")
        if self._dropped:
            for dropped_port, fd in self._drain_dropped():
                if fd < 0:
                    self._lost.add(dropped_port - self.start)
                else:
                    self._readopt(dropped_port, fd, True)
        if self._lent or self._lost or self._given:
            self._collect()
        if port:
            i = port - self.start
            if not 0 <= i < self.count:
                raise InvalidParameter(f"bind: port {port} is not in block "
                                       f"{self.start}..{self.start + self.count - 1}")
            if i not in self._free:
                raise ReservationExhausted(f"bind: port {port} is in use")
            del self._free[i]
            return i
        if not self._free:
            waiting = ", ".join(str(self.start + i) for i in sorted(self._lost))
            raise ReservationExhausted(
                f"bind: every port of {self.start}..{self.start + self.count - 1} is held by "
                f"an open socket" + (f" or waits to be held again ({waiting}: another "
                                     f"socket is bound there, one in TIME_WAIT say)"
                                     if waiting else ""))
        return self._free.popitem()[0]

    def _collect(self) -> None:
        """Hold again the ports of the user's own sockets that were closed,
        and of detached holders whose descriptor was.

        Costs a look at each such socket still open (sockets made by
        socket() report their close themselves), and a bind per lost port.
        """
        for i, ref in list(self._lent.items()):
            user = ref()
            if user is not None and user.fileno() != -1:
                continue
            del self._lent[i]
            if self._fds[i] >= 0:  # the UDP holder kept beside it
                self._free[i] = None
            else:
                self._lost.add(i)
        for i, (fd, inode) in list(self._given.items()):
            try:
                if os.fstat(fd).st_ino == inode:
                    continue  # still open: the caller's
            except OSError:
                pass
            del self._given[i]
            self._lost.add(i)
        for i in list(self._lost):
            try:
                calls.rehold(self.family, self.protocol.socket_type, self.start + i,
                             self._fds, i)
            except OSError:
                continue  # taken in between, or TIME_WAIT without SO_REUSEADDR: later
            self._lost.discard(i)
            self._free[i] = None

    def socket(self, family: int | None = None, host: str = "", port: int = 0) -> Socket:
        """A socket bound to ``port`` of the block (any free one if 0).

        For the holders' family on the wildcard address (``family=None``) it
        is the holder itself: no hand-off at all, and its close() gives the
        port back through readopt() with no window.  Otherwise a new socket
        (dual-stack if AF_INET6) bound through take().  Raises
        InvalidParameter (released, bad host) or ReservationExhausted.
        """
        if family is None:
            family = _family_for(host, self.family) if host else self.family
        if family != self.family or host not in _WILDCARD[family]:
            return socket_from_take(self, family, host, port)
        with self._lock:
            i = self._pick(port)
            if self._type != socket.SOCK_DGRAM:
                return self._hand_out(i)
            with _signals_held():  # input opened and handed out go together
                try:
                    calls.open_input(self._fds[i], _udp_rcvbuf())
                except OSError as exc:
                    fd, self._fds[i] = self._fds[i], -1
                    self._readopt(self.start + i, fd, True)  # deaf again, and free
                    raise _errors.from_errno(exc.errno, "Reservation.socket") from None
                return self._hand_out(i)

    # The holder moves between _fds and a socket object without a signal
    # section (two system calls each way, a third of the cycle): Python runs
    # a signal handler only after a call returns, at a loop's turn or as a
    # function starts, never between plain loads and stores.  So the moves
    # below put every store that changes the owner between two calls, and a
    # handler's exception finds the holder owned by exactly one of the two;
    # a socket dropped that way comes back through __del__.

    def _hand_out(self, i: int) -> _HeldSocket:
        """The holder of index ``i`` (just picked) as a socket; the lock is held."""
        sock = _HeldSocket.__new__(_HeldSocket)  # made before it owns anything
        sock._block, sock._port, sock._dirty, sock._forks = self, self.start + i, False, _forks
        # A default timeout makes the socket non-blocking as it is made; UDP
        # input was opened: either way its close must undo something.
        sock._used = self._type == socket.SOCK_DGRAM or socket.getdefaulttimeout() is not None
        fd = self._fds[i]
        self._fds[i] = -1
        try:
            socket.socket.__init__(sock, self.family, self._type, 0, fd)
        except BaseException:
            if _socket.socket.fileno(sock) == -1:  # failed: still the block's
                self._fds[i] = fd
                self._free[i] = None
            raise
        return sock

    def _take_back(self, sock: _HeldSocket) -> None:
        """A holder handed out comes back as it left (only bound, as nothing
        was done to it: _HeldSocket._used): no system call; the lock is held."""
        i = sock._port - self.start
        if self.closed:
            sock._block = None
            _socket.socket.close(sock)
            return
        fd = _socket.socket.fileno(sock)
        if fd < 0:  # an interrupted close() already gave it back
            sock._block = None
            return
        self._fds[i] = fd
        self._free[i] = None
        _socket.socket.detach(sock)
        sock._block = None

    def readopt(self, port: int, fd: int, reset_options: bool = True) -> None:
        """Take back ``fd`` as the holder of ``port``, never unbinding the port.

        ``fd`` is a socket that holds ``port`` for this block: a holder handed
        out by socket() (its close() calls this) or one lent elsewhere, e.g.
        to a child process that has exited.  The block owns ``fd`` from the
        call on, whatever happens.  The socket stops listening and forgets
        any peer (connect(AF_UNSPEC)); its reuse options and device binding
        are cleared, a UDP one drops input again; ``reset_options`` also puts
        every option the hand-off copies back to a fresh holder's value.  A
        TCP socket with a connection cannot be undone without resetting the
        peer: a new holder is bound beside it first, then it is closed
        (graceful close, its TIME_WAIT barred to others).  On a released
        block ``fd`` is simply closed.
        """
        with _signals_held(), self._lock:
            self._readopt(port, fd, reset_options)

    def _readopt(self, port: int, fd: int, reset_options: bool) -> None:
        i = port - self.start
        self._lent.pop(i, None)
        self._given.pop(i, None)
        if self.closed or not 0 <= i < self.count or self._fds[i] >= 0:
            os.close(fd)  # released, or not a port this block gave out
            return
        self._fds[i] = fd
        try:
            calls.readopt(fd, reset_options)
        except OSError:
            self._fds[i] = -1
            try:
                calls.hold_beside(fd, self.family, self.protocol.socket_type, port,
                                  self._fds, i)
            except OSError:
                self._lost.add(i)  # bound again at the next call if it can be
                return
            finally:
                os.close(fd)
        self._free[i] = None

    def _returned_closed(self, port: int) -> None:
        """A handed-out holder was really closed (shared with a forked child)."""
        i = port - self.start
        with _signals_held(), self._lock:
            if not self.closed:
                self._lost.add(i)
                self._collect()

    def _detached(self, port: int, fd: int) -> None:
        """A holder handed out was detached (ssl's wrap_socket does that): the
        port is the caller's while ``fd`` stays open on that socket, and held
        again once it is closed (seen at a later call)."""
        try:
            inode = os.fstat(fd).st_ino
        except OSError:
            return
        with self._lock:
            self._given[port - self.start] = (fd, inode)

    def take(self, sock: Socket, host: str, port: int = 0) -> int:
        """Hand a port of the block (``port``, or any if 0) to the user's ``sock``.

        A SO_REUSEADDR set on ``sock`` is off from this bind on: a TCP socket
        gets it back as it listens (_listen), a UDP one never.
        """
        if sock.getsockname()[1]:
            raise InvalidParameter(f"bind: {sock!r} is already bound")
        packed = _args.host_address("bind", sock.family, host)
        # On a bound socket that does not listen, SO_REUSEADDR lets anyone
        # who sets it too bind the same port (Linux never finds two such
        # sockets in conflict).  Once a TCP socket listens it can no longer
        # hurt, and a restart over TIME_WAIT needs it; UDP uses it only to
        # share the port.
        reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            try:
                port = self._take(sock, host, packed, port)
            except _errors.ReservationConflict:
                if not reuse:
                    raise
                # TIME_WAIT connections of an earlier server that had it bar
                # a bind without it (the SO_REUSEPORT path binds the user's
                # socket): for this one bind the socket has it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                port = self._take(sock, host, packed, port)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        except BaseException:
            if reuse:  # a failed call changes nothing
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raise
        if reuse and sock.type == socket.SOCK_STREAM:
            _reuse_when_listening(sock)
        return port

    def _take(self, sock: Socket, host: str, packed: bytes, port: int) -> int:
        with _signals_held(), self._lock:
            i = self._pick(port)
            port = self.start + i
            fd = self._fds[i]
            try:
                self._handoff(i, fd, sock, host, packed, port)
            except BaseException:
                if self._fds[i] >= 0:
                    self._free[i] = None
                else:
                    self._lost.add(i)
                raise
            self._lent[i] = weakref.ref(sock)
            return port

    def _handoff(self, i: int, fd: int, sock: Socket, host: str, packed: bytes,
                 port: int) -> None:
        try:
            # The descriptor swap needs the holder's exact socket: same
            # family, wildcard address and (for IPv6) dual-stack.
            if (sock.family == self.family and host in _WILDCARD[self.family]
                    and not (self.family == socket.AF_INET6 and
                             sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))):
                self._fds[i] = -1  # handoff_dup consumes it
                try:
                    calls.handoff_dup(fd, sock.fileno())
                except OSError:
                    self._fds[i] = fd
                    # It may have taken some of the user's options.
                    calls.readopt(fd, True)
                    raise
                return
            calls.handoff_reuseport(fd, sock.fileno(), sock.family, packed, port, _PRIVATE_UID)
            if sock.type == socket.SOCK_STREAM:
                # TCP's listen() checks the port again and would find the
                # holder in its way; a UDP holder stays, closing the port's
                # other addresses.
                self._fds[i] = -1
                os.close(fd)
                _clear_bind_cache(port)
        except _errors.PortReservationError:
            raise  # _clear_bind_cache's, which says what failed
        except OSError as exc:
            where = f"{host!r} port {port}" if host else f"port {port}"
            raise _errors.from_errno(exc.errno, f"bind to {where}") from None

    def close(self) -> bool:
        """Release the block; False if it was already released."""
        with self._lock:
            if self.closed:
                return False
            self._close_fds()
        if self._token:  # the token property sets it before it looks at closed
            with _lock:
                _blocks.pop(self._token, None)
        return True

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self._close_fds()

    # Lending ports to a child process (Reservation.popen, _child.py).

    def lend(self, release: bool) -> list[tuple[int, int]]:
        """Lend every free port to a child about to start: ``[(port, holder fd)]``.

        The block keeps its copy of each holder (the child inherits another),
        so the port stays bound whatever the child does; the ports leave the
        free list until give_back().  With ``release`` the holders are closed
        now instead (the child binds the ports itself, with a window) and the
        list has fd -1.  InvalidParameter on a released block.
        """
        with _signals_held(), self._lock:
            if self.closed:
                raise InvalidParameter(f"popen: reservation {self.token} was released")
            self._collect()
            lent = sorted(self._free)
            self._free.clear()
            if release:
                for i in lent:
                    fd, self._fds[i] = self._fds[i], -1
                    os.close(fd)
            return [(self.start + i, self._fds[i]) for i in lent]

    def passing_to_child(self, fds: list[int]) -> contextlib.AbstractContextManager[None]:
        """Wrap the start of the child that borrows ``fds`` (lent holders):
        a fork by this thread inside keeps them open for the child's exec."""
        return _passing_to_child(fds)

    def give_back(self, ports: list[int]) -> None:
        """The child that borrowed ``ports`` has exited: each holder becomes
        the block's again (readopt: the port never unbound), or, if it was
        closed for the child, the port is held anew when it can be."""
        with _signals_held(), self._lock:
            if self.closed:
                return
            for port in ports:
                i = port - self.start
                fd, self._fds[i] = self._fds[i], -1
                if fd >= 0:
                    self._readopt(port, fd, True)
                else:
                    self._lost.add(i)
            self._collect()


class _HeldSocket(socket.socket):
    """The holder itself, handed out by Block.socket(): closing it (close(),
    ``with``, or the garbage collector) gives it back to its block, which
    takes it as the port's holder again (Block.readopt).  detach() gives the
    port to the caller for good."""

    __slots__ = ("_block", "_port", "_dirty", "_used", "_forks")
    _block: Block | None
    _port: int
    _dirty: bool  # setsockopt() was called: readopt() resets the options
    _used: bool  # anything that may have changed the holder was called
    _forks: int  # _forks when handed out: a child forked since may use it; -1: dup()

    def __init__(self, family: int = -1, type: int = -1, proto: int = 0,
                 fileno: int | None = None) -> None:
        # As socket.socket's (dup() makes one): a copy belongs to no block.
        self._block, self._port, self._dirty, self._used, self._forks = None, 0, False, True, 0
        super().__init__(family, type, proto, fileno)

    def setsockopt(self, *args: Any) -> None:
        self._dirty = self._used = True
        super().setsockopt(*args)

    # What can change a holder beyond its binding goes through one of these
    # (or through its descriptor, fileno()): after any of them its close()
    # undoes what it may have done (pr_readopt); after none it has nothing
    # to undo.
    def listen(self, *args: Any) -> None:
        self._used = True
        _listen_over_time_wait(self, _socket.socket.listen, *args)

    def connect(self, *args: Any) -> None:
        self._used = True
        super().connect(*args)

    def connect_ex(self, *args: Any) -> int:
        self._used = True
        return super().connect_ex(*args)

    def setblocking(self, flag: bool) -> None:
        self._used = True
        super().setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self._used = True
        super().settimeout(value)

    def set_inheritable(self, inheritable: bool) -> None:
        self._used = True
        super().set_inheritable(inheritable)

    def fileno(self) -> int:
        self._used = True
        return super().fileno()

    def dup(self) -> _HeldSocket:
        # The copy shares this socket: closing this one must really close
        # it (as after fork), and the port is held again once both are.
        self._forks = -1
        return super().dup()

    def detach(self) -> int:
        block, self._block = self._block, None
        fd = super().detach()
        if block is not None and fd >= 0:
            block._detached(self._port, fd)
        return fd

    def _real_close(self, _ss: type[_socket.socket] = _socket.socket) -> None:
        block = getattr(self, "_block", None)
        if block is None:
            _ss.close(self)
            return
        if self._forks != _forks:
            # A forked child may use it: really close it; the block binds the
            # port again at once.
            self._block = None
            _ss.close(self)
            block._returned_closed(self._port)
            return
        if not self._used:
            with block._lock:
                block._take_back(self)
            return
        with _signals_held(), block._lock:
            self._block = None
            block._readopt(self._port, _ss.detach(self), self._dirty)

    def __del__(self) -> None:
        # Collected while still open: back to the block at its next call
        # (the collector may run while the block's lock is held, so only
        # system calls on the socket itself happen here).
        block = getattr(self, "_block", None)
        if block is None or block.closed or _socket.socket.fileno(self) == -1:
            _socket.socket.close(self)
            return
        self._block = None
        if self._forks != _forks:  # shared: really closed, held anew when it can be
            _socket.socket.close(self)
            block._dropped.append((self._port, -1))
            return
        with _signals_held():
            fd = _socket.socket.detach(self)
            if self._used:
                # What pr_readopt undoes (a listen() above all) it undoes at
                # once; the block takes the holder back at its next call.
                try:
                    calls.readopt(fd, False)
                except OSError:
                    pass  # a connection: the block replaces it then
            block._dropped.append((self._port, fd))


def _family_for(host: str, default: int) -> int:
    """family=None: the holders' family, unless ``host`` is only IPv4."""
    if host and ":" not in host:
        try:
            socket.inet_pton(socket.AF_INET, host)
            return socket.AF_INET
        except OSError:
            pass
        try:
            socket.getaddrinfo(host, None, default)
        except (OSError, UnicodeError):
            return socket.AF_INET  # a name with no address of the holders' family
    return default


_rcvbuf: list[int] = []


def _udp_rcvbuf() -> int:
    """A fresh UDP socket's receive buffer, as setsockopt takes it."""
    if not _rcvbuf:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            size = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        _rcvbuf.append(size // 2 if _LINUX else size)  # Linux reports it doubled
    return _rcvbuf[0]


def _check_persistent(protocol: Protocol, start: int, count: int) -> None:
    """A specific runtime request must not overlap ports in the kernel's
    ip_local_reserved_ports, where persistent reservations live."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            text = f.read()
    except OSError:  # no /proc (a sandbox): no persistent reservations either
        return
    last = start + count - 1
    for lo, hi in parse_port_list(text):
        if lo <= last and start <= hi:
            raise _errors.ReservationConflict(
                f"reserve: {protocol.value.upper()} ports {start}..{last} overlap the "
                f"persistent reservation (ip_local_reserved_ports) {lo}..{hi}")


# After a SO_REUSEPORT hand-off Linux's bind bucket remembers that bind
# (tb->fastreuseport, with its uid and address: inet_csk_update_fastreuse)
# and lets a later SO_REUSEPORT bind by the same uid onto that address skip
# the conflict check, whatever the flags say now.  Any bind of the port
# without SO_REUSEPORT resets it: one on a loopback address the user's
# socket does not cover, closed at once.
_CACHE_RESETTERS = ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.255.255.254"),
                    (socket.AF_INET, "127.255.255.253"))


def _clear_bind_cache(port: int) -> None:
    failed: set[int | None] = set()
    for family, host in _CACHE_RESETTERS:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((host, port))
                return
        except OSError as exc:
            failed.add(exc.errno)
    if failed & {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}:
        # A loopback address the user's socket leaves free is missing: `lo`
        # is down (as in a new network namespace; Linux then still binds
        # 127/8 but not ::1, and a socket on 0.0.0.0 covers 127/8) or has
        # no IPv6.  The system's own error, named plainly.
        raise _errors.PortReservationError(
            f"bind to port {port}: the loopback interface is down or unavailable (no ::1 "
            f"to bind beside a socket on 0.0.0.0); this hand-off binds the port there once, "
            f"to close it to later SO_REUSEPORT binds of your uid (ip link set lo up)",
            errno=errno.EADDRNOTAVAIL, winerror=_errors.WSAEADDRNOTAVAIL)
    raise NotSupported(f"bind to port {port}: no loopback address is free to reset the "
                       f"kernel's SO_REUSEPORT cache")


# TCP sockets whose SO_REUSEADDR take() held back, and socket.socket.listen
# while there are any: it sets the option again as such a socket listens.
# Only listen() through Python's socket objects is seen; a socket listened
# on otherwise (a C library on its descriptor) keeps it off, as if the user
# had never set it.
_reuse_on_listen: weakref.WeakSet[socket.socket] = weakref.WeakSet()
_listen_lock = threading.Lock()
_plain_listen = socket.socket.listen


def _reuse_when_listening(sock: socket.socket) -> None:
    global _plain_listen
    with _listen_lock:
        _reuse_on_listen.add(sock)
        if socket.socket.listen is not _listen:
            _plain_listen = socket.socket.listen
            socket.socket.listen = _listen  # type: ignore[method-assign,assignment]


def _listen_over_time_wait(sock: socket.socket, listen: Any, *args: int) -> None:
    """``listen(sock, *args)`` for a server socket on a reserved port, which
    comes without SO_REUSEADDR (see Block.take).  TIME_WAIT connections of an
    earlier server that had it bar a listen() without it (listen() checks
    the port again): for that call it is set just before.  Then it stays
    set: each connection copies the option as it is made, and its TIME_WAIT
    must have it for the port's next server to listen beside."""
    setsockopt = _socket.socket.setsockopt
    try:
        listen(sock, *args)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listen(sock, *args)
        except BaseException:
            setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            raise
    setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def _listen(self: socket.socket, *args: int) -> None:
    if self not in _reuse_on_listen:
        _plain_listen(self, *args)
    else:
        _listen_over_time_wait(self, _plain_listen, *args)
    with _listen_lock:
        _reuse_on_listen.discard(self)
        if not _reuse_on_listen and socket.socket.listen is _listen:
            socket.socket.listen = _plain_listen  # type: ignore[method-assign]


_WILDCARD: dict[int, tuple[str, str]] = {socket.AF_INET6: ("", "::"),
                                         socket.AF_INET: ("", "0.0.0.0")}
# Owner of both sockets during a SO_REUSEPORT hand-off on Linux, when we may
# chown sockets (root): a uid no process runs as, so nobody can join that bind
# through Linux's bind-bucket cache (see pr_handoff_reuseport).
_PRIVATE_UID = 2**31 - 2 if _LINUX and os.geteuid() == 0 else -1

_forks = 0  # forks this process made (_after_fork_in_parent)

# Every block ever made and not yet collected, for fork (registered before it
# holds anything).  Weak references that remove themselves: a WeakSet's
# bookkeeping costs a tenth of reserve(1).
_every_block: set[weakref.ref[Block]] = set()


# (thread, holders) while that thread starts a child that borrows the holders
# (Reservation.popen): subprocess runs the fork hooks below in the child
# before its exec when given a preexec_fn, and the holders must reach the exec.
_passing: tuple[int, frozenset[int]] = (0, frozenset())


@contextlib.contextmanager
def _passing_to_child(fds: list[int]) -> Iterator[None]:
    """Within this scope, a fork by this thread keeps ``fds`` open in the child."""
    global _passing
    _passing = (threading.get_ident(), frozenset(fds))
    try:
        yield
    finally:
        _passing = (0, frozenset())


def _after_fork_in_child() -> None:
    """A forked child holds nothing of its parent's runtime reservations."""
    global _lock, _MAIN_THREAD, _listen_lock, _depth, _mask, _token_pool
    _lock = threading.Lock()  # another thread may have held it at fork time
    _listen_lock = threading.Lock()
    if threading.get_ident() != _MAIN_THREAD:
        # The forking thread is the child's main one, with its own signal
        # mask: the sections the parent's main thread was in are not its.
        _MAIN_THREAD, _depth, _mask = threading.get_ident(), 0, None
    _token_pool = []  # the parent's unused tokens, which it still hands out
    thread, keep = _passing
    if thread != _MAIN_THREAD:
        keep = frozenset()
    for ref in list(_every_block):
        block = ref()
        if block is None:
            continue
        block._lock = threading.Lock()
        if not block.closed:
            for i in range(block.count):
                if block._fds[i] in keep:
                    block._fds[i] = -1  # the exec that follows takes it
            block._close_fds()
    _blocks.clear()


def _after_fork_in_parent() -> None:
    # Holders handed out before the fork may now be used by the child too:
    # closing them in the parent must really close them, not undo their
    # listen() under the child (_HeldSocket._real_close).
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child,
                    after_in_parent=_after_fork_in_parent)


# The engine interface (see _engine.py).  Arguments are checked by the caller.

def reserve(protocol: Protocol, start: int, count: int) -> Block:
    return Block(protocol, start, count)


def _owned_by(block: Block, sock: socket.socket) -> bool:
    return block.owner is not None and block.owner() is sock


def acquire(sock: socket.socket, start: int, count: int) -> PortReservationInstance:
    block = Block(_protocol_of(sock), start, count)
    # As on Windows the reservation lives as long as the socket; we keep only
    # a weak reference so that the socket can be collected.
    block.owner = weakref.ref(sock)
    block.finalizer = weakref.finalize(sock, block.close)
    return PortReservationInstance(block.start, block.count, block.token)


def release(sock: socket.socket, token: int) -> None:
    block = _blocks.get(token)
    if block is None or not _owned_by(block, sock):
        raise InvalidParameter(
            f"release_port_reservation: token {token} is not a reservation held by {sock!r}")
    assert block.finalizer is not None
    if not block.close():  # another thread released it first
        raise InvalidParameter(
            f"release_port_reservation: token {token} was already released")
    block.finalizer.detach()


def _protocol_of(sock: socket.socket) -> Protocol:
    return Protocol.TCP if sock.type == socket.SOCK_STREAM else Protocol.UDP


def _resolve(token: int, call: str) -> _AnyBlock:
    block = _blocks.get(token)
    if block is None and _LINUX:
        block = _persistent_store().block_for_token(token)
    if block is None:
        raise ReservationNotFound(f"{call}: no reservation has token {token}")
    return block


def associate(sock: socket.socket, token: int) -> None:
    block = _resolve(token, "associate_port_reservation")
    if block.protocol is not _protocol_of(sock):
        raise InvalidParameter(f"associate_port_reservation: {sock!r} is not a "
                               f"{block.protocol.value.upper()} socket")
    if sock.getsockname()[1]:
        raise InvalidParameter(f"associate_port_reservation: {sock!r} is already bound")
    try:
        # Linux 6.3+: a plain bind((host, 0)) or connect() on this socket can
        # only pick a port of the block (all held, so it fails) - never one
        # outside it.
        with _signals_held():  # the ctypes layer wraps the user's descriptor meanwhile
            calls.set_local_port_range(sock.fileno(), block.start,
                                       block.start + block.count - 1)
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            raise _errors.from_errno(exc.errno, "associate_port_reservation") from None
    _associated[sock] = token


def bind_associated(sock: socket.socket, address: tuple[Any, ...]) -> None:
    token = _associated.get(sock)
    if token is None:
        sock.bind(address)
        return
    _resolve(token, "bind_associated").take(sock, address[0], address[1])
    del _associated[sock]


def bind_token(sock: socket.socket, token: int, host: str) -> int:
    associate(sock, token)
    try:
        bind_associated(sock, (host, 0))
    except BaseException:
        # A failed call changes nothing: not associated, no port range.
        _associated.pop(sock, None)
        try:
            with _signals_held():
                calls.set_local_port_range(sock.fileno(), 0, 0)
        except OSError:
            pass
        raise
    return sock.getsockname()[1]


def _persistent_store() -> ModuleType:
    if not _LINUX:
        raise NotSupported(f"persistent reservations need Linux's ip_local_reserved_ports; "
                           f"{sys.platform} has no equivalent")
    return _store


def create_persistent(protocol: Protocol, start: int, count: int) -> int:
    return _persistent_store().create(protocol, start, count)


def delete_persistent(protocol: Protocol, start: int, count: int) -> None:
    _persistent_store().delete(protocol, start, count)


def lookup_persistent(protocol: Protocol, start: int, count: int) -> int:
    return _persistent_store().lookup(protocol, start, count)


def list_persistent(protocol: Protocol | None) -> list[PersistentReservation]:
    return _persistent_store().list_all(protocol)


def restore() -> list[PersistentReservation]:
    return _persistent_store().restore()
