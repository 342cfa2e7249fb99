"""POSIX system calls with no compiled code of ours.

Same functions and behaviour as _posix_cffi.py (contract: csrc/pr_posix.h),
built from the socket, os and fcntl modules.  ctypes is used for what they
cannot express: the address of the drop-all filter program that Linux's
SO_ATTACH_FILTER takes inside its struct sock_fprog, and macOS's
sysctlbyname().

Sockets are _socket.socket objects, the C type under socket.socket: we
never need the Python wrapper, and skipping its __init__ saves a few
microseconds per holder.  Descriptors we hold as plain ints (the user's
socket, a detached holder) are wrapped in a throwaway one to reach
getsockopt/setsockopt/bind, and detached again so it never closes them:
a socket method call costs about a third of a ctypes foreign call, and a
hand-off makes some forty of them.  Wrapping has one side effect: with
socket.setdefaulttimeout() in force Python makes the wrapped descriptor
non-blocking, so the hand-offs read the user's file flags before wrapping
and put them back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NoReturn

import _socket
import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
import sys

assert sys.platform != "win32"  # POSIX only; also tells mypy to skip this module there

from ._port_list import parse_port_list

if TYPE_CHECKING:
    from ._interfaces import Fds

_LINUX = sys.platform.startswith("linux")
# Linux values the socket module does not name (asm-generic/socket.h, in.h).
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_RCVBUFFORCE = 33
IP_LOCAL_PORT_RANGE = 51  # Linux 6.3
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18  # the older request, both families in one dump (TCP only)
_TCPF_BOUND_INACTIVE = 1 << 13  # bound-only TCP sockets, Linux 6.9+ (see pr_bound_ports)
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3

_SOL, _V6, _TCP = socket.SOL_SOCKET, socket.IPPROTO_IPV6, socket.IPPROTO_TCP
_STREAM, _DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM
_WILDCARD: dict[int, str] = {socket.AF_INET6: "::", socket.AF_INET: "0.0.0.0"}

# One BPF instruction, BPF_RET|BPF_K with k=0: accept zero bytes of every
# packet.  The kernel copies the program at setsockopt time.
_DROP_ALL = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0), 8)
_DROP_ALL_PROG = struct.pack("@HP", 1, ctypes.addressof(_DROP_ALL))

# Options a user may set on a fresh socket before binding it; the holder takes
# over every one whose value differs from its own (as the shim, same list).
# Values are copied as bytes, whatever their type.  Linux numbers are written
# out where the socket module lacks the name; elsewhere a missing name is left out.
_IP, _UDP = socket.IPPROTO_IP, socket.IPPROTO_UDP
_OPTIONS = {
    _SOL: (("SO_REUSEADDR", 2), ("SO_REUSEPORT", 15), ("SO_KEEPALIVE", 9),
           ("SO_BROADCAST", 6), ("SO_OOBINLINE", 10), ("SO_SNDBUF", 7), ("SO_RCVLOWAT", 18),
           ("SO_LINGER", 13), ("SO_RCVTIMEO", 20), ("SO_SNDTIMEO", 21), ("SO_DONTROUTE", 5),
           ("SO_TIMESTAMP", 29)),
    _IP: (("IP_TOS", 1), ("IP_TTL", 2), ("IP_MULTICAST_TTL", 33), ("IP_MULTICAST_LOOP", 34),
          ("IP_RECVTTL", 12), ("IP_RECVTOS", 13)),
    _V6: (("IPV6_UNICAST_HOPS", 16), ("IPV6_TCLASS", 67), ("IPV6_MULTICAST_HOPS", 18),
          ("IPV6_MULTICAST_LOOP", 19)),
    _TCP: (("TCP_NODELAY", 1), ("TCP_MAXSEG", 2), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 6),
           ("TCP_KEEPIDLE" if _LINUX or hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE", 4)),
}
_LINUX_OPTIONS = {
    _SOL: (("SO_PRIORITY", 12), ("SO_MARK", 36), ("SO_BINDTODEVICE", 25),
           ("SO_TIMESTAMPNS", 35), ("SO_BUSY_POLL", 46), ("SO_INCOMING_CPU", 49),
           ("SO_MAX_PACING_RATE", 47), ("SO_PASSCRED", 16), ("SO_RXQ_OVFL", 40),
           ("SO_ZEROCOPY", 60)),
    _IP: (("IP_FREEBIND", 15), ("IP_TRANSPARENT", 19), ("IP_MTU_DISCOVER", 10),
          ("IP_RECVERR", 11), ("IP_PKTINFO", 8), ("IP_MULTICAST_ALL", 49), ("IP_NODEFRAG", 22),
          ("IP_RECVORIGDSTADDR", 20)),
    _V6: (("IPV6_RECVPKTINFO", 49), ("IPV6_RECVTCLASS", 66), ("IPV6_MTU_DISCOVER", 23), ("IPV6_RECVERR", 25), ("IPV6_FREEBIND", 78),
          ("IPV6_TRANSPARENT", 75), ("IPV6_RECVORIGDSTADDR", 74)),
    _TCP: (("TCP_CORK", 3), ("TCP_SYNCNT", 7), ("TCP_LINGER2", 8), ("TCP_DEFER_ACCEPT", 9),
           ("TCP_WINDOW_CLAMP", 10), ("TCP_QUICKACK", 12), ("TCP_CONGESTION", 13),
           ("TCP_USER_TIMEOUT", 18), ("TCP_FASTOPEN", 23), ("TCP_FASTOPEN_CONNECT", 30),
           ("TCP_NOTSENT_LOWAT", 25), ("TCP_THIN_LINEAR_TIMEOUTS", 16)),
    _UDP: (("UDP_CORK", 1), ("UDP_SEGMENT", 103), ("UDP_GRO", 104)),
}
_COPIED = tuple(
    (level, number if _LINUX else getattr(socket, name))
    for table in ((_OPTIONS, _LINUX_OPTIONS) if _LINUX else (_OPTIONS,))
    for level, names in table.items()
    for name, number in names if _LINUX or hasattr(socket, name))
_MISSING = (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL)
_libc = ctypes.CDLL(None, use_errno=True)
_UNSPEC = bytes(16)  # a struct sockaddr of family AF_UNSPEC (0)


def _raise(err: int | None) -> NoReturn:
    err = err or errno.EIO  # an OSError of the socket module always has one
    raise OSError(err, os.strerror(err))


def _wrap(fd: int, family: int = socket.AF_INET6) -> _socket.socket:
    # Family and type given so that Python does not ask the kernel; only
    # bind() reads the family (to parse the address).  The caller detaches.
    return _socket.socket(family, _STREAM, 0, fd)


def _open_holder(family: int, type: int) -> _socket.socket:
    s = _socket.socket(family, type)  # close-on-exec, as Python always does
    try:
        if family == socket.AF_INET6:
            # Dual-stack: one [::] holder blocks IPv4 and IPv6 binds alike.
            s.setsockopt(_V6, socket.IPV6_V6ONLY, 0)
        if type == _DGRAM:
            # A UDP holder must not collect datagrams sent to its port; off
            # Linux the small buffer alone bounds them and the hand-off drains it.
            if _LINUX:
                s.setsockopt(_SOL, SO_ATTACH_FILTER, _DROP_ALL_PROG)
            s.setsockopt(_SOL, socket.SO_RCVBUF, 1)
    except BaseException:
        s.close()
        raise
    return s


def _move(s: _socket.socket, fds: Fds, index: int) -> None:
    """Move the descriptor of ``s`` into fds[index].

    Python runs signal handlers after a call returns, never between plain
    stores: an exception from one, wherever it strikes, leaves the
    descriptor owned by exactly one of the two.
    """
    fds[index] = s.fileno()
    try:
        s.detach()
    except BaseException:
        if s.fileno() != -1:  # not detached: s still owns it
            fds[index] = -1
        raise


def new_fds(count: int) -> list[int]:
    """A list for ``count`` descriptors, each -1."""
    return [-1] * count


def hold(family: int, type: int, start: int, count: int, fds: Fds) -> tuple[int, int]:
    """Holders for start..start+count-1 into fds; (ports held, errno)."""
    host = _WILDCARD[family]
    i = 0
    try:
        for i in range(count):
            s = _open_holder(family, type)
            try:
                s.bind((host, start + i))
            except BaseException:
                s.close()
                raise
            _move(s, fds, i)
    except BaseException as exc:
        # As the shim: a failed hold leaves nothing held.  Unlike the shim's
        # loop, ours can also be interrupted (KeyboardInterrupt).
        close_all(fds, count)
        if not isinstance(exc, OSError):
            raise
        return i, exc.errno or 0
    return count, 0


_ONE_PORT_TRIES = 8  # as the shim


@functools.lru_cache(maxsize=16)
def _listed(text: bytes) -> list[tuple[int, int]] | None:
    """ip_local_reserved_ports' text as spans; None for text the kernel does not write."""
    try:
        return parse_port_list(text.decode("ascii"))
    except ValueError:  # UnicodeDecodeError is one
        return None


def hold_one(family: int, type: int, lo: int, hi: int, reserved_fd: int, seed: int,
             fds: Fds) -> int:
    if not 1 <= lo <= hi <= 65535:
        _raise(errno.EINVAL)
    spans: list[tuple[int, int]] = []
    if reserved_fd >= 0:
        text = os.pread(reserved_fd, 4096, 0)
        # Longer than we read, or not the kernel's: the caller's search reads it.
        listed = _listed(text) if len(text) < 4096 else None
        if listed is None:
            return 0
        spans = listed
    seed = seed or 1
    for _ in range(_ONE_PORT_TRIES):
        seed ^= (seed << 13) & 0xFFFFFFFF  # xorshift32, as the shim
        seed ^= seed >> 17
        seed ^= (seed << 5) & 0xFFFFFFFF
        port = lo + seed % (hi - lo + 1)
        if not any(a <= port <= b for a, b in spans) and _hold_at(
                family, type, port, fds, (errno.EADDRINUSE, errno.EACCES)):
            return port
    return 0


def _hold_at(family: int, type: int, port: int, fds: Fds, taken: tuple[int, ...]) -> bool:
    """One holder bound to ``port``, into fds[0]; False if its bind failed
    with an errno of ``taken`` (the port is someone else's)."""
    s = _open_holder(family, type)
    try:
        s.bind((_WILDCARD[family], port))
    except OSError as exc:
        s.close()
        if exc.errno in taken:
            return False
        raise
    except BaseException:
        s.close()
        raise
    _move(s, fds, 0)
    return True


def hold_any(family: int, type: int, fds: Fds) -> int:
    # The kernel's choice, read from a probe, then bound explicitly (as the
    # shim: only an explicitly bound port survives readopt()).  Until this
    # returns the port is not reserved: a racer only costs another try.
    for _ in range(16):
        probe = socket.socket(family, type)  # no holder options needed (as the shim)
        try:
            probe.bind((_WILDCARD[family], 0))
            port: int = probe.getsockname()[1]
        finally:
            probe.close()
        if _hold_at(family, type, port, fds, (errno.EADDRINUSE,)):
            return port
    _raise(errno.EADDRINUSE)


def close_all(fds: Fds, count: int) -> None:
    for i in range(count):
        fd = fds[i]
        if fd >= 0:
            # Marked before the close: Python runs signal handlers after a
            # call returns, never between this store and the call.
            fds[i] = -1
            try:
                os.close(fd)
            except OSError:  # as close(2) in the shim: nothing to do about it
                pass


def bound_ports(protocol: int, which: int = 0, taken: bytearray | None = None) -> bytearray:
    """Mark in ``taken`` (or a new map) the ports with a socket of ``protocol``.

    IPv4 and IPv6, every state; ``which`` 1: all but TCP sockets that are
    only bound, 2: those alone (pr_bound_ports in the shim says why).
    """
    if not sys.platform.startswith("linux"):  # spelled out so that mypy sees it
        _raise(errno.ENOSYS)  # no sock_diag: as the shim
    if taken is None:
        taken = bytearray(65536)
    if which == 2 and protocol != socket.IPPROTO_TCP:
        return taken
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        if protocol == socket.IPPROTO_TCP:
            # The older inet_diag_req: one walk for IPv4 and IPv6 together.
            states = (0xFFFFFFFF, 0xFFFFFFFF & ~_TCPF_BOUND_INACTIVE, _TCPF_BOUND_INACTIVE)[which]
            _dump(nl, struct.pack("=IHHII 4x48xII", 76, TCPDIAG_GETSOCK,
                                  NLM_F_REQUEST | NLM_F_DUMP, 0, 0, states, 0), taken)
        else:
            for family in (socket.AF_INET, socket.AF_INET6):
                # nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad,
                # states, 48-byte sockid).
                _dump(nl, struct.pack("=IHHII BBBxI48x", 72, SOCK_DIAG_BY_FAMILY,
                                      NLM_F_REQUEST | NLM_F_DUMP, 0, 0,
                                      family, protocol, 0, 0xFFFFFFFF), taken)
    return taken


def _dump(nl: _socket.socket, request: bytes, taken: bytearray) -> None:
    nl.sendto(request, (0, 0))
    buf = bytearray(32768)  # the most the kernel puts in one reply (as the shim)
    view = memoryview(buf)
    while True:
        try:
            n = nl.recv_into(view)
        except InterruptedError:
            continue
        if n == 0 or parse_diag(view[:n], taken):
            if n == 0:
                _raise(errno.EPROTO)
            return


_HEAD = struct.Struct("=IH").unpack_from
_SPORT = struct.Struct("!H").unpack_from
_CODE = struct.Struct("=i").unpack_from


def parse_diag(buf: bytes, taken: bytearray) -> bool:
    """One reply of a sock_diag dump: mark each socket's source port in taken.

    True at the end of the dump, False when more replies follow; OSError
    for an error message (its errno) or a malformed one (EPROTO).  Safe on
    any bytes, as pr_parse_diag in the shim, which it matches result for result.
    """
    n, pos = len(buf), 0
    while n - pos >= 16:
        length, kind = _HEAD(buf, pos)
        if length < 16 or length > n - pos:
            _raise(errno.EPROTO)
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            if length < 20:
                _raise(errno.EPROTO)
            code = _CODE(buf, pos + 16)[0]
            _raise(-code if -4096 < code < 0 else errno.EPROTO)  # only a real errno
        if kind == SOCK_DIAG_BY_FAMILY or kind == TCPDIAG_GETSOCK:
            # inet_diag_msg: 4 bytes of family/state/timer/retrans, then
            # the source port in network order.
            if length < 22:
                _raise(errno.EPROTO)
            taken[_SPORT(buf, pos + 20)[0]] = 1
        pos += (length + 3) & ~3
    return False


def handoff_dup(holder: int, user: int) -> None:
    if user < 0 or holder < 0:  # Python refuses them with ValueError
        _raise(errno.EBADF)
    try:
        fdflags = fcntl.fcntl(user, fcntl.F_GETFD)
        flags = fcntl.fcntl(user, fcntl.F_GETFL)  # before wrapping (module comment)
    except OSError as exc:
        _raise(exc.errno)
    try:
        u, h = _wrap(user), _wrap(holder)
        try:
            _copy_options(u, h)
        finally:
            u.detach()
            h.detach()
        fcntl.fcntl(holder, fcntl.F_SETFL, flags)
        # dup3() with O_CLOEXEC when the user's descriptor had FD_CLOEXEC.
        os.dup2(holder, user, inheritable=not fdflags & fcntl.FD_CLOEXEC)
    except OSError as exc:
        _restore_flags(user, flags)  # the user's socket stays as it was
        _raise(exc.errno)
    os.close(holder)


def _applies(level: int, family: int, type: int) -> bool:
    if level == _TCP:
        return type == _STREAM
    if level == _UDP:
        return type == _DGRAM
    if level == _V6:
        return family == socket.AF_INET6
    # IP options also rule an AF_INET6 socket's IPv4 traffic on Linux.
    return _LINUX or level != _IP or family == socket.AF_INET


def _copy_options(src: _socket.socket, dst: _socket.socket) -> None:
    type = src.getsockopt(_SOL, socket.SO_TYPE)
    # Python reads the address by its own family: 4 items for AF_INET6.
    family = socket.AF_INET6 if len(src.getsockname()) == 4 else socket.AF_INET
    for level, name in _COPIED:
        if not _applies(level, family, type):
            continue
        try:
            a = src.getsockopt(level, name, 64)
        except OSError as exc:  # an option this kernel lacks is one nobody set
            if exc.errno in _MISSING:
                continue
            raise
        if a != dst.getsockopt(level, name, 64):
            if name == socket.SO_SNDBUF and level == _SOL:
                a = struct.pack("i", _to_set(struct.unpack("i", a)[0]))
            dst.setsockopt(level, name, a)
    if type == _DGRAM and _LINUX:
        # Undo the drop-all filter.  The value is ignored, but since Linux
        # 4.x setsockopt rejects an option shorter than an int (EINVAL).
        try:
            dst.setsockopt(_SOL, SO_DETACH_FILTER, 0)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # none attached (readopt's reset)
                raise
    elif type == _DGRAM:
        # No filter here: drop what queued up while the port was held.  The
        # caller sets the file flags afterwards.
        dst.setblocking(False)
        try:
            while True:
                dst.recv(1)
        except BlockingIOError:
            pass
    # Setting SO_RCVBUF switches TCP receive-buffer autotuning off for good:
    # a TCP holder takes the user's size only when it differs; a UDP holder's
    # was shrunk to drop input and is always restored.
    rcvbuf = src.getsockopt(_SOL, socket.SO_RCVBUF)
    if type == _STREAM and rcvbuf == dst.getsockopt(_SOL, socket.SO_RCVBUF):
        return
    size = _to_set(rcvbuf)
    if _LINUX:
        try:
            dst.setsockopt(_SOL, SO_RCVBUFFORCE, size)
            return
        except OSError:  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
            pass
    dst.setsockopt(_SOL, socket.SO_RCVBUF, size)


def _to_set(reported: int) -> int:
    # Linux's getsockopt reports buffer sizes doubled; setsockopt doubles again.
    return reported // 2 if _LINUX else reported


def handoff_reuseport(holder: int, user: int, family: int, addr: bytes, port: int,
                      private_uid: int) -> None:
    if user < 0 or holder < 0:
        _raise(errno.EBADF)
    try:
        flags = _flags_before_wrap(user)
        owner = os.fstat(user).st_uid
    except OSError as exc:
        _raise(exc.errno)
    # A private owner for the one bind: see pr_handoff_reuseport in the shim.
    chowned = private_uid >= 0 and _chown(holder, private_uid) and _chown(user, private_uid)
    u, h = _wrap(user, family), _wrap(holder, family)
    try:
        had = u.getsockopt(_SOL, socket.SO_REUSEPORT)
        host = socket.inet_ntop(family, addr)
        try:
            h.setsockopt(_SOL, socket.SO_REUSEPORT, 1)
            u.setsockopt(_SOL, socket.SO_REUSEPORT, 1)
            u.bind((host, port, 0, 0) if family == socket.AF_INET6 else (host, port))
        except OSError:
            _quietly(h.setsockopt, _SOL, socket.SO_REUSEPORT, 0)
            _quietly(u.setsockopt, _SOL, socket.SO_REUSEPORT, had)
            if private_uid >= 0:
                _chown(user, owner)
            raise
        # The holder stays bound until the caller closes it; cleared flags
        # make later SO_REUSEPORT binds by others fail.
        _quietly(h.setsockopt, _SOL, socket.SO_REUSEPORT, 0)
        if not had:
            _quietly(u.setsockopt, _SOL, socket.SO_REUSEPORT, 0)
        if chowned:
            _chown(user, owner)
    except OSError as exc:
        _raise(exc.errno)
    finally:
        u.detach()
        h.detach()
        _restore_flags(user, flags)


def _chown(fd: int, uid: int) -> bool:
    try:
        os.fchown(fd, uid, -1)
        return True
    except OSError:
        return False


def _flags_before_wrap(fd: int) -> int | None:
    """The file flags that wrapping may change (module comment), or None."""
    if socket.getdefaulttimeout() is None:
        return None
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _restore_flags(fd: int, flags: int | None) -> None:
    if flags is not None:
        _quietly(fcntl.fcntl, fd, fcntl.F_SETFL, flags)


def _quietly(call: Callable[..., object], *args: object) -> None:
    # Best-effort undo steps, unchecked as in the shim.
    try:
        call(*args)
    except OSError:
        pass


def set_local_port_range(fd: int, lo: int, hi: int) -> None:
    if not _LINUX:
        _raise(errno.ENOPROTOOPT)  # as the shim
    try:
        if fd < 0:
            _raise(errno.EBADF)
        flags = _flags_before_wrap(fd)
        s = _wrap(fd)
        try:
            # An unsigned int: hi << 16 does not fit the C int Python passes.
            s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("=I", hi << 16 | lo))
        finally:
            s.detach()
            _restore_flags(fd, flags)
    except OSError as exc:
        _raise(exc.errno)


def port_range() -> tuple[int, int]:
    """The range the kernel picks automatic ports from."""
    if _LINUX:
        # A file object owns its descriptor from the start: reserve(1) reads
        # this without a signal section.
        with open("/proc/sys/net/ipv4/ip_local_port_range", "rb") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for name in (b"net.inet.ip.portrange.first", b"net.inet.ip.portrange.last"):
        value, size = ctypes.c_int(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
        if libc.sysctlbyname(name, ctypes.byref(value), ctypes.byref(size), None,
                             ctypes.c_size_t(0)) < 0:
            _raise(ctypes.get_errno())
        out.append(value.value)
    return out[0], out[1]


def _disconnect(fd: int, listening: bool = True) -> None:
    # connect(AF_UNSPEC): Python's connect() cannot express it.  Elsewhere
    # (XNU) it may be refused: harmless unless the socket listens.
    if _libc.connect(fd, _UNSPEC, len(_UNSPEC)) < 0 and listening:
        _raise(ctypes.get_errno())


def readopt(fd: int, reset_options: bool) -> None:
    """Make fd a holder again, keeping its port bound (as pr_readopt)."""
    if fd < 0:
        _raise(errno.EBADF)
    try:
        s = _wrap(fd)
        try:
            type = s.getsockopt(_SOL, socket.SO_TYPE)
            family = socket.AF_INET6 if len(s.getsockname()) == 4 else socket.AF_INET
            if type == _STREAM:
                try:
                    s.getpeername()
                    _raise(errno.EISCONN)  # a connection cannot be undone without a reset
                except OSError as exc:
                    if exc.errno != errno.ENOTCONN:
                        raise
            reuseport = s.getsockopt(_SOL, socket.SO_REUSEPORT)
            reuseaddr = s.getsockopt(_SOL, socket.SO_REUSEADDR)
            if reuseaddr:  # cleared only where set, as the shim
                s.setsockopt(_SOL, socket.SO_REUSEADDR, 0)
            if reuseport:
                s.setsockopt(_SOL, socket.SO_REUSEPORT, 0)
            if _LINUX and s.getsockopt(_SOL, 25, 16).strip(b"\0"):  # SO_BINDTODEVICE
                s.setsockopt(_SOL, 25, b"")
            if reset_options:
                fresh = _open_holder(family, type)
                try:
                    _copy_options(fresh, s)
                finally:
                    fresh.close()
            listening = s.getsockopt(_SOL, socket.SO_ACCEPTCONN)
        finally:
            s.detach()
        _disconnect(fd, bool(listening))
        if type == _STREAM and (reuseport or reuseaddr):
            # Reset Linux's bind-bucket cache (see pr_readopt); best effort.
            s = _wrap(fd)
            try:
                s.listen(1)
            except OSError:
                pass
            else:
                _disconnect(fd)
            finally:
                s.detach()
        os.set_blocking(fd, True)
        os.set_inheritable(fd, False)
        if type == _DGRAM:
            h = _wrap(fd)
            try:
                if _LINUX:
                    h.setsockopt(_SOL, SO_ATTACH_FILTER, _DROP_ALL_PROG)
                h.setsockopt(_SOL, socket.SO_RCVBUF, 1)
                for _ in range(65536):  # what queued up before the filter
                    h.recv(1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            finally:
                h.detach()
    except OSError as exc:
        _raise(exc.errno)


def hold_beside(fd: int, family: int, type: int, port: int, fds: Fds,
                index: int) -> None:
    """A new holder of ``port`` beside ``fd``, into fds[index] (as pr_hold_beside)."""
    if fd < 0:
        _raise(errno.EBADF)
    u = _wrap(fd)
    try:
        had = u.getsockopt(_SOL, socket.SO_REUSEADDR)
        h = _open_holder(family, type)
        try:
            h.setsockopt(_SOL, socket.SO_REUSEADDR, 1)
            u.setsockopt(_SOL, socket.SO_REUSEADDR, 1)
            h.bind((_WILDCARD[family], port))
            h.setsockopt(_SOL, socket.SO_REUSEADDR, 0)
        except BaseException:
            h.close()
            raise
        finally:
            _quietly(u.setsockopt, _SOL, socket.SO_REUSEADDR, had)
        _move(h, fds, index)
    except OSError as exc:
        _raise(exc.errno)
    finally:
        u.detach()


def rehold(family: int, type: int, port: int, fds: Fds, index: int) -> None:
    """Hold ``port`` again into fds[index] (as pr_rehold, which explains it)."""
    h = _open_holder(family, type)
    try:
        try:
            h.bind((_WILDCARD[family], port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or type != _STREAM:
                raise
            h.setsockopt(_SOL, socket.SO_REUSEADDR, 1)
            h.bind((_WILDCARD[family], port))
            h.listen(1)
            h.setsockopt(_SOL, socket.SO_REUSEADDR, 0)
            _disconnect(h.fileno())
    except OSError as exc:
        h.close()
        _raise(exc.errno)
    except BaseException:
        h.close()
        raise
    _move(h, fds, index)


def open_input(fd: int, rcvbuf: int) -> None:
    """Undo a UDP holder's deafness for the user it is handed to (as pr_open_input)."""
    if fd < 0:
        _raise(errno.EBADF)
    s = _wrap(fd)
    try:
        if _LINUX:
            s.setsockopt(_SOL, SO_DETACH_FILTER, 0)  # an int, as in _copy_options
        else:
            try:
                for _ in range(65536):  # what queued up while the port was held
                    s.recv(1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        s.setsockopt(_SOL, socket.SO_RCVBUF, rcvbuf)
    except OSError as exc:
        _raise(exc.errno)
    finally:
        s.detach()


_SIG_BLOCK, _SIG_SETMASK = (0, 2) if _LINUX else (1, 3)
_ALL = ctypes.create_string_buffer(b"\xff" * 128, 128)  # sigfillset, as far as it matters


def signal_state() -> Any:
    """Room for hold_signals' saved mask: a flag byte, then the mask (as the shim)."""
    return ctypes.create_string_buffer(136)


def hold_signals(state: Any) -> None:
    # In three steps, each leaving ``state`` right for restore_signals()
    # whenever a handler's exception strikes: read the mask, mark it saved,
    # block (the mask saved is the one before).
    mask = ctypes.byref(state, 8)
    if _libc.sigprocmask(_SIG_BLOCK, None, mask) < 0:
        _raise(ctypes.get_errno())
    state[0] = b"\1"
    if _libc.sigprocmask(_SIG_BLOCK, _ALL, None) < 0:
        _raise(ctypes.get_errno())


def restore_signals(state: Any) -> None:
    if state[0] == b"\0":
        return
    if _libc.sigprocmask(_SIG_SETMASK, ctypes.byref(state, 8), None) < 0:
        _raise(ctypes.get_errno())
    state[0] = b"\0"
