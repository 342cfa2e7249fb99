"""Runtime port reservations on Linux, built from holder sockets.

Linux has no reservation call, so a reserved port is one *holder*: a socket
bound to the port on [::] with IPV6_V6ONLY=0 (or 0.0.0.0 on a host without
IPv6), never listened on and without reuse options.  While it is open no
other process can bind the port on any address, and the kernel never picks
it for bind(port 0), connect() or sendto().  The kernel closes holders when
the process dies, so a crash frees the block.

A port is handed to a user's socket by swapping the holder in for the user's
descriptor (no window at all) where family and address allow, and otherwise
by a one-bind SO_REUSEPORT overlap, after which a UDP holder stays to keep
the port's other addresses closed (a TCP one cannot: listen() would fail).
When that socket is closed the port is held again on a later bind(), if
nobody took it in between (TIME_WAIT, or another process in that moment):
then it is skipped until it can be held.
The measurements behind these choices are summed up in README.md.

The same engine runs on macOS with what POSIX offers there: no socket dump
(blocks are found by trying binds), no reserved-ports list, no persistent
reservations; README.md, "On macOS", says what that costs.
"""

from __future__ import annotations

import sys

assert sys.platform != "win32"  # POSIX only; also tells mypy to skip this module there

import ctypes
import errno
import os
import random
import resource
import socket
import struct
import threading
import weakref

from . import _errors
from ._backend import calls
from ._errors import (
    InvalidParameter,
    NotSupported,
    ReservationExhausted,
    ReservationNotFound,
)
from ._records import PortReservationInstance, Protocol

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
    while True:
        token = _random.getrandbits(64)
        if token and token not in _blocks:
            return token


def parse_port_list(text: str) -> list[tuple[int, int]]:
    """'8080,9000-9010' -> [(8080, 8080), (9000, 9010)]."""
    spans = []
    for part in text.replace("\n", "").split(","):
        if part:
            lo, _, hi = part.partition("-")
            spans.append((int(lo), int(hi or lo)))
    return spans


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


def _hold(type_: int, start: int, count: int, fds) -> tuple[int, int]:
    """calls.hold, falling back to IPv4 holders on a host without IPv6."""
    global _family
    n, err = calls.hold(_family, type_, start, count, fds)
    if n != count and err == errno.EAFNOSUPPORT and _family == socket.AF_INET6:
        _family = socket.AF_INET
        n, err = calls.hold(_family, type_, start, count, fds)
    return n, (0 if n == count else err)


def _hold_block(protocol: Protocol, start: int, count: int, fds) -> int:
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


def _hold_wildcard(protocol: Protocol, count: int, fds) -> int:
    """Find and hold a free block of ``count`` ports; return its start."""
    global _family
    type_ = protocol.socket_type
    if count == 1:  # the kernel's own choice is the fastest search
        try:
            fds[0], port = calls.hold_any(_family, type_)
            return port
        except OSError as exc:
            if exc.errno != errno.EAFNOSUPPORT or _family != socket.AF_INET6:
                raise _errors.from_errno(exc.errno, "reserve") from None
            _family = socket.AF_INET
            return _hold_wildcard(protocol, count, fds)
    try:
        taken = calls.bound_ports(_IPPROTO[protocol])
    except OSError:  # no sock_diag (old kernel, seccomp): the binds still check
        taken = bytearray(65536)
    if _LINUX:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            for lo, hi in parse_port_list(f.read()):
                taken[lo:hi + 1] = b"\1" * (hi - lo + 1)
    need = bytes(count)
    eph_lo, eph_hi = calls.port_range()
    # Ephemeral range first, as Windows does; then all unprivileged ports.
    for lo, hi in ((eph_lo, eph_hi), (1024, 65535)):
        # A random starting point keeps concurrent searchers apart.
        pos = _random.randint(lo, hi)
        for first in (pos, lo):
            while True:
                start = taken.find(need, first, hi + 1)
                if start < 0:
                    break
                n, err = _hold(type_, start, count, fds)
                if n == count:
                    return start
                if err not in (errno.EADDRINUSE, errno.EACCES):
                    raise _errors.from_errno(err, "reserve")
                taken[start + n] = 1
                first = start + n + 1
    raise _errors.ReservationConflict(
        f"reserve: no free block of {count} consecutive {protocol.value.upper()} ports")


class Block:
    """A held block: one holder socket per port not handed out (and beside a
    UDP socket that took its port on another address or family)."""

    def __init__(self, protocol: Protocol, start: int, count: int) -> None:
        fds = calls.new_fds(count)
        start = _hold_block(protocol, start, count, fds)
        self.protocol, self.start, self.count, self._fds = protocol, start, count, fds
        self._free = list(range(count - 1, -1, -1))  # indexes still held; lowest last
        self._users: dict[int, weakref.ref] = {}  # index -> socket it was handed to
        self._lock = threading.Lock()
        self.closed = False
        # Set by acquire(): the socket whose lifetime bounds the reservation.
        self.owner: weakref.ref[socket.socket] | None = None
        self.finalizer: weakref.finalize | None = None
        with _lock:
            self.token = _new_token()
            _blocks[self.token] = self

    def take(self, sock: socket.socket, host: str, port: int = 0) -> int:
        """Hand a port of the block (``port``, or any if 0) to ``sock``."""
        if sock.getsockname()[1]:
            raise InvalidParameter(f"bind: {sock!r} is already bound")
        with self._lock:
            if self.closed:
                raise InvalidParameter(f"bind: reservation {self.token} was released")
            if port:
                i = port - self.start
                if not 0 <= i < self.count:
                    raise InvalidParameter(f"bind: port {port} is not in block "
                                           f"{self.start}..{self.start + self.count - 1}")
                if i in self._users:
                    self._reclaim()
                if i not in self._free:  # handed out, or lent to a child
                    raise ReservationExhausted(f"bind: port {port} is in use")
                self._free.remove(i)
            else:
                if not self._free:
                    self._reclaim()
                if not self._free:
                    raise ReservationExhausted(
                        f"bind: every port of {self.start}..{self.start + self.count - 1} "
                        f"is held by an open socket")
                i = self._free.pop()
            try:
                holder_gone = _handoff(self._fds[i], sock, host, self.start + i)
            except BaseException:
                self._free.append(i)
                raise
            if holder_gone:
                self._fds[i] = -1
            self._users[i] = weakref.ref(sock)
            return self.start + i

    def _reclaim(self) -> None:
        """Hold again the ports whose sockets have been closed."""
        one = calls.new_fds(1)
        for i, ref in list(self._users.items()):
            user = ref()
            if user is not None and user.fileno() != -1:
                continue
            if self._fds[i] >= 0:  # the holder kept beside the user's socket
                os.close(self._fds[i])
                self._fds[i] = -1
            if _hold(self.protocol.socket_type, self.start + i, 1, one)[0] == 1:
                self._fds[i] = one[0]
                self._free.append(i)
                del self._users[i]
        self._free.sort(reverse=True)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            calls.close_all(self._fds, self.count)
        with _lock:
            _blocks.pop(self.token, None)

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            calls.close_all(self._fds, self.count)

    # Lending ports to a child process (Reservation.popen).  give_back() is
    # written against what a holder can go through in a child; the engine's
    # re-adopt primitive (issue 11) is meant to take its place.

    def lend(self, release: bool) -> list[tuple[int, int]]:
        """Lend every held port to a child about to start: ``[(port, holder fd)]``.

        The ports leave the free list until give_back().  With ``release``
        the holders are closed now (the child binds the ports itself, with a
        window) and the list has fd -1."""
        with self._lock:
            if self.closed:
                raise InvalidParameter(f"popen: reservation {self.token} was released")
            self._reclaim()
            lent = sorted(self._free)
            self._free.clear()
            if release:
                for i in lent:
                    os.close(self._fds[i])
                    self._fds[i] = -1
            return [(self.start + i, self._fds[i]) for i in lent]

    def give_back(self, ports: list[int]) -> None:
        """The child that borrowed ``ports`` has exited: hold them again."""
        with self._lock:
            if self.closed:
                return
            for port in ports:
                i = port - self.start
                self._fds[i] = _readopt(self._fds[i], self.protocol, port)
                if self._fds[i] >= 0:
                    self._free.append(i)
            self._free.sort(reverse=True)


def _packed(family: int, host: str) -> bytes:
    if not host:
        return bytes(16 if family == socket.AF_INET6 else 4)
    try:
        return socket.inet_pton(family, host)
    except OSError:
        info = socket.getaddrinfo(host, None, family)
        return socket.inet_pton(family, str(info[0][4][0]))


_WILDCARD = {socket.AF_INET6: ("", "::"), socket.AF_INET: ("", "0.0.0.0")}
# Owner of both sockets during a SO_REUSEPORT hand-off on Linux, when we may
# chown sockets (root): a uid no process runs as, so nobody can join that bind
# through Linux's bind-bucket cache (see pr_handoff_reuseport).
_PRIVATE_UID = 2**31 - 2 if _LINUX and os.geteuid() == 0 else -1


def _handoff(holder: int, sock: socket.socket, host: str, port: int) -> bool:
    """Give the holder's port to ``sock``; True if the holder is gone."""
    try:
        # The descriptor swap needs the holder's exact socket: same family,
        # wildcard address and (for IPv6) dual-stack.
        if (sock.family == _family and host in _WILDCARD[_family]
                and not (_family == socket.AF_INET6 and
                         sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))):
            calls.handoff_dup(holder, sock.fileno())
            return True
        calls.handoff_reuseport(holder, sock.fileno(), sock.family,
                                _packed(sock.family, host), port, _PRIVATE_UID)
        if sock.type == socket.SOCK_STREAM:
            # TCP's listen() checks the port again and would find the holder
            # in its way; a UDP holder stays, closing the other addresses.
            os.close(holder)
            return True
        return False
    except OSError as exc:
        raise _errors.from_errno(exc.errno, f"bind to port {port}") from None


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
    block.finalizer.detach()
    block.close()


def _protocol_of(sock: socket.socket) -> Protocol:
    return Protocol.TCP if sock.type == socket.SOCK_STREAM else Protocol.UDP


def _resolve(token: int, call: str):
    block = _blocks.get(token)
    if block is None and _LINUX:
        block = _persistent().block_for_token(token)
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
        calls.set_local_port_range(sock.fileno(), block.start, block.start + block.count - 1)
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            raise _errors.from_errno(exc.errno, "associate_port_reservation") from None
    _associated[sock] = token


def bind_associated(sock: socket.socket, address) -> None:
    token = _associated.get(sock)
    if token is None:
        sock.bind(address)
        return
    _resolve(token, "bind_associated").take(sock, address[0], address[1])
    del _associated[sock]


def bind_token(sock: socket.socket, token: int, host: str) -> int:
    associate(sock, token)
    bind_associated(sock, (host, 0))
    return sock.getsockname()[1]


def _persistent():
    if not _LINUX:
        raise NotSupported(f"persistent reservations need Linux's ip_local_reserved_ports; "
                           f"{sys.platform} has no equivalent")
    from . import _persistent
    return _persistent


def create_persistent(protocol, start, count):
    return _persistent().create(protocol, start, count)


def delete_persistent(protocol, start, count):
    _persistent().delete(protocol, start, count)


def lookup_persistent(protocol, start, count):
    return _persistent().lookup(protocol, start, count)


def list_persistent(protocol):
    return _persistent().list_all(protocol)


def restore():
    return _persistent().restore()


# A classic BPF program of one instruction, "return 0": drop every datagram.
_SO_ATTACH_FILTER = 26
_DROP_INSN = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0), 8)
_DROP_ALL = struct.pack("HxxxxxxP", 1, ctypes.addressof(_DROP_INSN))


def _hold_one(protocol: Protocol, port: int) -> int:
    one = calls.new_fds(1)
    return one[0] if _hold(protocol.socket_type, port, 1, one)[0] == 1 else -1


def _readopt(fd: int, protocol: Protocol, port: int) -> int:
    """Make a holder lent to a child (or -1: closed before it started) a
    plain holder again; return the descriptor that now holds ``port``, or -1
    if it could not be held."""
    if fd < 0:
        return _hold_one(protocol, port)
    sock = socket.socket(fileno=fd)
    try:
        for opt in (socket.SO_REUSEADDR, socket.SO_REUSEPORT):
            sock.setsockopt(socket.SOL_SOCKET, opt, 0)
        if protocol is Protocol.UDP:
            if _LINUX:
                sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _DROP_ALL)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            return sock.detach()
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return sock.detach()
        # The child listened on it.  shutdown() would stop that but lets go
        # of a port the kernel chose for bind(0), so a fresh holder joins
        # the port first (the SO_REUSEPORT hand-off) and this one is closed.
        fresh = socket.socket(_family, socket.SOCK_STREAM)
        try:
            if _family == socket.AF_INET6:
                fresh.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            calls.handoff_reuseport(fd, fresh.fileno(), _family, _packed(_family, ""),
                                    port, _PRIVATE_UID)
        except OSError:
            fresh.close()
            return sock.detach()  # still listening, but the port stays ours
        sock.close()
        return fresh.detach()
    except OSError:
        sock.close()
        return _hold_one(protocol, port)
