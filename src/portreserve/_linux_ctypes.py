"""POSIX system calls with no compiled code of ours.

Same functions and behaviour as _linux_cffi.py (contract: csrc/pr_linux.h),
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

from typing import NoReturn

import _socket
import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys

assert sys.platform != "win32"  # POSIX only; also tells mypy to skip this module there

_LINUX = sys.platform.startswith("linux")
# Linux values the socket module does not name (asm-generic/socket.h, in.h).
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_RCVBUFFORCE = 33
IP_LOCAL_PORT_RANGE = 51  # Linux 6.3
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3

_SOL, _V6, _TCP = socket.SOL_SOCKET, socket.IPPROTO_IPV6, socket.IPPROTO_TCP
_STREAM, _DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM
_WILDCARD: dict[int, str] = {socket.AF_INET6: "::", socket.AF_INET: "0.0.0.0"}

# One BPF instruction, BPF_RET|BPF_K with k=0: accept zero bytes of every
# packet.  The kernel copies the program at setsockopt time.
_DROP_ALL = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0), 8)
_DROP_ALL_PROG = struct.pack("@HP", 1, ctypes.addressof(_DROP_ALL))

# Options a user may have set on a fresh socket before binding it; the holder
# takes them over before it replaces the user's descriptor (as the shim).
# Names this system lacks are left out (TCP_KEEPALIVE is macOS's TCP_KEEPIDLE).
_COPIED = tuple(
    (level, getattr(socket, name)) for level, names in (
        (_SOL, ("SO_REUSEADDR", "SO_REUSEPORT", "SO_KEEPALIVE", "SO_BROADCAST",
                "SO_OOBINLINE", "SO_SNDBUF", "SO_RCVLOWAT", "SO_PRIORITY", "SO_MARK")),
        (_V6, ("IPV6_UNICAST_HOPS", "IPV6_TCLASS")),
        (_TCP, ("TCP_NODELAY", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT",
                "TCP_KEEPIDLE" if hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE")),
    ) for name in names if hasattr(socket, name))


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


def new_fds(count: int) -> list[int]:
    """A list for ``count`` descriptors, each -1."""
    return [-1] * count


def hold(family: int, type: int, start: int, count: int, fds) -> tuple[int, int]:
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
            fds[i] = s.detach()
    except BaseException as exc:
        # As the shim: a failed hold leaves nothing held.  Unlike the shim's
        # loop, ours can also be interrupted (KeyboardInterrupt).
        close_all(fds, i)
        fds[:i] = [-1] * i
        if not isinstance(exc, OSError):
            raise
        return i, exc.errno or 0
    return count, 0


def hold_any(family: int, type: int) -> tuple[int, int]:
    s = _open_holder(family, type)
    try:
        s.bind((_WILDCARD[family], 0))
        port = s.getsockname()[1]
    except BaseException:
        s.close()
        raise
    return s.detach(), port


def close_all(fds, count: int) -> None:
    for fd in fds[:count]:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:  # as close(2) in the shim: nothing to do about it
                pass


def bound_ports(protocol: int) -> bytearray:
    """Ports with a socket of ``protocol`` bound, any state, IPv4 and IPv6."""
    if not sys.platform.startswith("linux"):  # spelled out so that mypy sees it
        _raise(errno.ENOSYS)  # no sock_diag: as the shim
    taken = bytearray(65536)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            _dump(nl, family, protocol, taken)
    return taken


def _dump(nl: _socket.socket, family: int, protocol: int, taken: bytearray) -> None:
    # nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte
    # sockid) asking for every state, TIME_WAIT included.
    request = struct.pack("=IHHII BBBxI48x", 72, SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, 0, 0,
                          family, protocol, 0, 0xFFFFFFFF)
    nl.sendto(request, (0, 0))
    buf = bytearray(65536)  # fewer, fuller reads than the shim's 8 KiB
    view = memoryview(buf)
    head = struct.Struct("=IH").unpack_from
    sport = struct.Struct("!H").unpack_from
    while True:
        try:
            n = nl.recv_into(view)
        except InterruptedError:
            continue
        pos = 0
        while pos + 16 <= n:
            length, kind = head(buf, pos)
            if length < 16 or pos + length > n:
                break
            if kind == SOCK_DIAG_BY_FAMILY:
                # inet_diag_msg: 4 bytes of family/state/timer/retrans, then
                # the source port in network order.
                taken[sport(buf, pos + 20)[0]] = 1
            elif kind == NLMSG_DONE:
                return
            elif kind == NLMSG_ERROR:
                error = -struct.unpack_from("=i", buf, pos + 16)[0]
                _raise(error or errno.EPROTO)  # as the shim
            pos += (length + 3) & ~3


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


def _copy_options(src: _socket.socket, dst: _socket.socket) -> None:
    type = src.getsockopt(_SOL, socket.SO_TYPE)
    # IPv6 options fail (EOPNOTSUPP) on the AF_INET holders of a host
    # without IPv6.  Python reads the address by its own family: 4 items
    # for AF_INET6.
    v6 = len(src.getsockname()) == 4
    for level, name in _COPIED:
        if (level == _TCP and type != _STREAM) or (level == _V6 and not v6):
            continue
        a = src.getsockopt(level, name)
        b = dst.getsockopt(level, name)
        if a != b:
            if name == socket.SO_SNDBUF and level == _SOL:
                a = _to_set(a)
            dst.setsockopt(level, name, a)
    la = src.getsockopt(_SOL, socket.SO_LINGER, 8)
    if la != dst.getsockopt(_SOL, socket.SO_LINGER, 8):
        dst.setsockopt(_SOL, socket.SO_LINGER, la)
    if type == _DGRAM and _LINUX:
        # Undo the drop-all filter.  The value is ignored, but since Linux
        # 4.x setsockopt rejects an option shorter than an int (EINVAL).
        dst.setsockopt(_SOL, SO_DETACH_FILTER, 0)
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


def _quietly(call, *args) -> None:
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
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
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
