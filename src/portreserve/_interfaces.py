"""The two internal interfaces, written down once.

portreserve has three layers (docs/API.md is the contract of the top one):

    public API (_reservation, _persistent, lowlevel, _overlapped, aio, _cli)
        |  checks arguments, then calls
    engine: one per OS, chosen once in _engine.py            -> ``Engine``
        |  _posix.py (Linux and macOS) or _windows.py
        |  keeps the policy: lifetimes, hand-offs, error classes
    system-call layer: one per OS, chosen once in _backend.py -> ``PosixCalls``
        |  _posix_cffi.py / _posix_ctypes.py                     or ``WindowsCalls``
        |  _windows_cffi.py / _windows_ctypes.py
        |  makes the calls of csrc/pr_posix.h or csrc/pr_windows.h, no policy

Both engines of a platform family and both system-call layers of an OS
implement these Protocols as modules; mypy checks that where the choice is
made (_engine.py, _backend.py), and tests/test_contracts.py checks names,
parameters and defaults at run time.  Changing an interface means changing
it here first.

Beside them, the overlapped calls (_overlapped.py, aio) run on one overlapped
engine per system, chosen once in _overlapped.py -> ``OverlappedEngine``:
_overlapped_iocp.py on Windows, _overlapped_threads.py elsewhere.  The same
holds: mypy checks the chosen module in _overlapped.py, the contract test both.

Conventions shared by every member: ports are ints in host byte order;
tokens are non-zero unsigned 64-bit ints; arguments reach an engine already
checked (_args.py), so engines only raise for what the system refuses, as
the classes of docs/API.md section 3.
"""

from __future__ import annotations

import socket
import typing
from collections.abc import MutableSequence
from socket import socket as Socket  # for annotations inside Block, whose socket() hides the module
from typing import Any

from ._errors import from_errno
from ._overlapped_types import Overlapped, PortBase
from ._records import PersistentReservation, PortReservationInstance, Protocol

#: The descriptor array of the POSIX layers: a cffi ``int[]`` or a list of
#: ints, made by ``new_fds`` and read or written only by index or slice.
#: Slots that hold no descriptor are -1.
Fds = MutableSequence[int]

#: An overlapped operation of the Windows layers: a cffi ``pr_op *`` or a
#: ctypes-layer object.  Opaque above the layer; only ``op_*``/``port_*`` touch it.
Op = Any


@typing.runtime_checkable
class Block(typing.Protocol):
    """A block of consecutive ports held by this process, as engines return it.

    Runtime blocks come from ``Engine.reserve``; on Linux a persistent token
    also resolves to a block (with nothing held: plain binds).
    """

    @property
    def protocol(self) -> Protocol: ...

    @property
    def start(self) -> int:
        """First port of the block (host byte order)."""

    @property
    def count(self) -> int:
        """Number of ports, 1..65535."""

    @property
    def token(self) -> int:
        """The opaque non-zero 64-bit token that names the block."""

    @property
    def closed(self) -> bool:
        """True once the block was given back."""

    def take(self, sock: socket.socket, host: str, port: int = 0) -> int:
        """Bind the unbound ``sock`` to ``(host, port)``, ``port`` from the block
        (0: any port of it no open socket holds); return the port.

        Raises InvalidParameter (closed block, port outside it, bound socket),
        ReservationExhausted (no port left), or the class of the system's error.
        """

    def socket(self, family: int | None = None, host: str = "", port: int = 0) -> Socket:
        """A socket of the block's type bound to ``(host, port)``, ``port`` as
        for ``take`` (Reservation.socket; arguments checked by the caller).

        ``family`` is AF_INET, AF_INET6 (made dual-stack: IPV6_V6ONLY=0) or
        None: the family that carries the whole guarantee (AF_INET6 where the
        host has IPv6).  An engine that can hand out the socket holding the
        port does so; the others bind a new one through ``take``
        (``socket_from_take``).  Raises as ``take`` does, and the class of the
        system's error when no socket can be made.
        """

    def close(self) -> bool | None:
        """Give the block back; idempotent.  Sockets bound from it keep their ports.

        An engine may return False when the block was already closed (so of
        two threads releasing it, exactly one sees success), else True or None.
        """


def socket_from_take(block: Block, family: int | None, host: str, port: int) -> Socket:
    """``Block.socket`` for an engine that cannot hand out what holds a port:
    a new socket of the block's type, dual-stack if AF_INET6, bound through
    ``block.take``; closed again if that fails."""
    if family is None:
        family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    try:
        sock = socket.socket(family, block.protocol.socket_type)
    except OSError as exc:  # no descriptor left, no IPv6
        raise from_errno(exc.errno, "Reservation.socket") from None
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        block.take(sock, host, port)
    except BaseException:
        sock.close()
        raise
    return sock


@typing.runtime_checkable
class Engine(typing.Protocol):
    """What a per-OS engine module offers the public layer.

    Implemented by _posix.py (Linux, macOS) and _windows.py.  Every argument
    has been checked by the caller: protocols are ``Protocol`` members,
    blocks lie inside 1..65535 (``start`` 0 only where a wildcard is allowed),
    sockets are open TCP or UDP sockets of AF_INET or AF_INET6.
    """

    def reserve(self, protocol: Protocol, start: int, count: int) -> Block:
        """A runtime block of ``count`` ports from ``start`` (0: anywhere free),
        owned by this process (SIO_ACQUIRE_PORT_RESERVATION on an internal socket)."""

    def acquire(self, sock: socket.socket, start: int, count: int) -> PortReservationInstance:
        """SIO_ACQUIRE_PORT_RESERVATION on ``sock``: the block lives as long as ``sock``."""

    def release(self, sock: socket.socket, token: int) -> None:
        """SIO_RELEASE_PORT_RESERVATION of a block acquired on ``sock``."""

    def associate(self, sock: socket.socket, token: int) -> None:
        """SIO_ASSOCIATE_PORT_RESERVATION: the next bind of ``sock`` takes a port of ``token``."""

    def bind_associated(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        """``sock.bind(address)``, from the associated block if there is one."""

    def bind_token(self, sock: socket.socket, token: int, host: str) -> int:
        """Associate, then bind to ``(host, 0)``; the port bound."""

    def create_persistent(self, protocol: Protocol, start: int, count: int) -> int:
        """Create{Tcp,Udp}PersistentPortReservation; the token."""

    def delete_persistent(self, protocol: Protocol, start: int, count: int) -> None:
        """Delete{Tcp,Udp}PersistentPortReservation of exactly that block."""

    def lookup_persistent(self, protocol: Protocol, start: int, count: int) -> int:
        """Lookup{Tcp,Udp}PersistentPortReservation; the token."""

    def list_persistent(self, protocol: Protocol | None) -> list[PersistentReservation]:
        """Every persistent reservation of ``protocol`` (None: both)."""

    def restore(self) -> list[PersistentReservation]:
        """Re-apply saved persistent reservations after a reboot; list them all."""


@typing.runtime_checkable
class PosixCalls(typing.Protocol):
    """The POSIX system-call layer: csrc/pr_posix.h, one function per pr_ call.

    Implemented by _posix_cffi.py (the compiled shim) and _posix_ctypes.py.
    Single calls raise OSError with the errno of the failing system call;
    ``hold`` reports instead, as it says.  Descriptors are close-on-exec.
    """

    def new_fds(self, count: int) -> Fds:
        """An array of ``count`` descriptor slots, each -1."""

    def hold(self, family: int, type: int, start: int, count: int,
             fds: Fds) -> tuple[int, int]:
        """pr_hold: holders for ``start .. start+count-1`` into ``fds``.

        Returns ``(count, 0)``, or ``(i, errno)`` when port ``start+i`` failed:
        then nothing is held and ``fds[0..count-1]`` are -1 again.
        """

    def hold_one(self, family: int, type: int, lo: int, hi: int, reserved_fd: int,
                 seed: int, fds: Fds) -> int:
        """pr_hold_one: one holder, into ``fds[0]``, on a random port (from the
        32-bit ``seed``) of ``lo..hi`` outside ip_local_reserved_ports (that
        sysctl open, or -1); returns the port, or 0 when the caller must
        search."""

    def hold_any(self, family: int, type: int, fds: Fds) -> int:
        """pr_hold_any: one holder on a port the kernel picks, into ``fds[0]``;
        returns the port."""

    def close_all(self, fds: Fds, count: int) -> None:
        """pr_close_all: close every descriptor >= 0 of ``fds[0..count-1]``."""

    def bound_ports(self, protocol: int, which: int = 0,
                    taken: bytearray | None = None) -> bytearray:
        """pr_bound_ports: 65536 bytes (``taken``, or new), 1 where a socket of
        ``protocol`` (IPPROTO_TCP/UDP) is bound; ``which`` 1: all but TCP
        sockets only bound, 2: those alone.  OSError(ENOSYS) off Linux."""

    def parse_diag(self, buf: bytes, taken: bytearray) -> bool:
        """pr_parse_diag: one sock_diag reply into ``taken``; True at the
        dump's end; OSError for an error message or malformed bytes."""

    def handoff_dup(self, holder: int, user: int) -> None:
        """pr_handoff_dup: the holder replaces the user's descriptor (no window)."""

    def handoff_reuseport(self, holder: int, user: int, family: int, addr: bytes,
                          port: int, private_uid: int) -> None:
        """pr_handoff_reuseport: bind ``user`` to ``(addr, port)`` beside the holder."""

    def set_local_port_range(self, fd: int, lo: int, hi: int) -> None:
        """pr_set_local_port_range: IP_LOCAL_PORT_RANGE (Linux 6.3+); ENOPROTOOPT elsewhere."""

    def port_range(self) -> tuple[int, int]:
        """pr_port_range: the kernel's ephemeral range ``(lo, hi)``, inclusive."""

    def readopt(self, fd: int, reset_options: bool) -> None:
        """pr_readopt: make ``fd``, a socket that held its port for a user, a
        holder again without unbinding the port; OSError(EISCONN) for a TCP
        socket with a peer."""

    def hold_beside(self, fd: int, family: int, type: int, port: int, fds: Fds,
                    index: int) -> None:
        """pr_hold_beside: a new holder of ``port`` beside ``fd`` (bound there,
        not listening), into ``fds[index]``."""

    def rehold(self, family: int, type: int, port: int, fds: Fds, index: int) -> None:
        """pr_rehold: hold ``port`` again into ``fds[index]`` after the user's
        socket on it was closed (TIME_WAIT it left included)."""

    def open_input(self, fd: int, rcvbuf: int) -> None:
        """pr_open_input: a UDP holder handed out receives again (``rcvbuf`` as
        setsockopt takes it)."""

    def signal_state(self) -> Any:
        """Room for hold_signals' saved signal mask."""

    def hold_signals(self, state: Any) -> None:
        """pr_hold_signals: block every signal of the calling thread, saving its
        mask in ``state``."""

    def restore_signals(self, state: Any) -> None:
        """pr_restore_signals: put the saved mask back (once; nothing if none saved)."""


@typing.runtime_checkable
class WindowsCalls(typing.Protocol):
    """The Windows system-call layer: csrc/pr_windows.h.

    Implemented by _windows_cffi.py (the compiled shim) and _windows_ctypes.py.
    Nothing raises for a system failure: calls return the Windows error code
    of the failing call (0 = success), first in a tuple when there is a
    result.  ``s`` is a SOCKET (``sock.fileno()``); ``udp`` picks the Udp form
    of the iphlpapi functions; timeouts are in milliseconds (``INFINITE``).
    """

    SIO_ACQUIRE_PORT_RESERVATION: int
    SIO_RELEASE_PORT_RESERVATION: int
    SIO_ASSOCIATE_PORT_RESERVATION: int
    INSTANCE_SIZE: int
    NOTIFY_EVENT: int
    NOTIFY_IOCP: int
    INFINITE: int

    def encode_port_range(self, start_port: int, number_of_ports: int) -> bytes:
        """INET_PORT_RANGE, StartPort in network byte order."""

    def encode_token(self, token: int) -> bytes:
        """INET_PORT_RESERVATION_TOKEN."""

    def decode_instance(self, data: bytes) -> tuple[int, int, int]:
        """INET_PORT_RESERVATION_INSTANCE -> (start_port, number_of_ports, token)."""

    def acquire(self, s: int, start_port: int,
                number_of_ports: int) -> tuple[int, tuple[int, int, int]]:
        """SIO_ACQUIRE_PORT_RESERVATION: (error, (start_port, number_of_ports, token))."""

    def release(self, s: int, token: int) -> int:
        """SIO_RELEASE_PORT_RESERVATION."""

    def associate(self, s: int, token: int) -> int:
        """SIO_ASSOCIATE_PORT_RESERVATION."""

    def persistent_create(self, udp: bool, start_port: int,
                          number_of_ports: int) -> tuple[int, int]:
        """CreatePersistent{Tcp,Udp}PortReservation: (error, token)."""

    def persistent_delete(self, udp: bool, start_port: int, number_of_ports: int) -> int:
        """DeletePersistent{Tcp,Udp}PortReservation."""

    def persistent_lookup(self, udp: bool, start_port: int,
                          number_of_ports: int) -> tuple[int, int]:
        """LookupPersistent{Tcp,Udp}PortReservation: (error, token)."""

    # Overlapped WSAIoctl: an op is one call with its WSAOVERLAPPED and
    # buffers, owned by the layer until its completion has been consumed;
    # an iocp is an I/O completion port handle.
    def op_new(self, notify: int, code: int, in_data: bytes, out_size: int) -> Op:
        """A new op notified by an event or an IOCP (``notify``); MemoryError/OSError."""

    def op_start(self, op: Op, s: int) -> int:
        """Issue the overlapped WSAIoctl; 0 or WSA_IO_PENDING when under way."""

    def op_result(self, op: Op) -> tuple[int, int] | None:
        """(status, bytes) once the op has finished, else None."""

    def op_wait(self, op: Op, timeout_ms: int = 0xFFFFFFFF) -> int:
        """Wait for an event op to finish."""

    def op_cancel(self, op: Op) -> int:
        """CancelIoEx on the op."""

    def op_out(self, op: Op, size: int) -> bytes:
        """The op's output buffer, at most ``size`` bytes."""

    def op_free(self, op: Op) -> None:
        """Give the op back (freed once the system is done with it)."""

    def iocp_new(self) -> tuple[int, int]:
        """CreateIoCompletionPort: (error, handle)."""

    def iocp_attach(self, iocp: int, s: int) -> int:
        """Associate socket ``s`` with the IOCP."""

    def iocp_get(self, iocp: int, timeout_ms: int,
                 max_ops: int = 64) -> tuple[int, list[Op]]:
        """GetQueuedCompletionStatusEx: (error, finished ops)."""

    def iocp_post(self, iocp: int) -> int:
        """PostQueuedCompletionStatus: wake a waiting ``iocp_get``."""

    def iocp_close(self, iocp: int) -> int:
        """CloseHandle on the IOCP."""


@typing.runtime_checkable
class OverlappedEngine(typing.Protocol):
    """What an overlapped engine module offers _overlapped.py (see _overlapped_types.py).

    Implemented by _overlapped_iocp.py (Windows) and _overlapped_threads.py.
    ``call`` is the public call's name, for messages.  Every argument has
    been checked by the caller except ``port``: None, or this engine's
    ``CompletionPort`` (anything else raises TypeError; a closed one,
    InvalidParameter).  ``key`` is any object, handed back with the
    completion.  The calls return at once; the outcome is the operation's,
    and it is queued on ``port`` (if given) when the operation finishes.
    """

    @property
    def CompletionPort(self) -> type[PortBase]:
        """The engine's completion port class: ``CompletionPort(concurrency=0)``."""

    def acquire(self, call: str, sock: socket.socket, start_port: int, number_of_ports: int,
                port: PortBase | None, key: Any) -> Overlapped[PortReservationInstance]:
        """SIO_ACQUIRE_PORT_RESERVATION on ``sock``, overlapped."""

    def release(self, call: str, sock: socket.socket, token: int,
                port: PortBase | None, key: Any) -> Overlapped[None]:
        """SIO_RELEASE_PORT_RESERVATION of a block acquired on ``sock``, overlapped."""

    def associate(self, call: str, sock: socket.socket, token: int,
                  port: PortBase | None, key: Any) -> Overlapped[None]:
        """SIO_ASSOCIATE_PORT_RESERVATION on ``sock``, overlapped."""
