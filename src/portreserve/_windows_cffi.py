"""Windows system calls through the compiled shim (csrc/pr_windows.c).

Same functions as _windows_ctypes.py.  Nothing here raises for a system
failure: each call returns the Windows code the shim captured (0 = success),
and _windows.py turns it into the right exception.  An op is an opaque
handle; ops returned by iocp_get are the same objects op_new gave (cffi
pointers compare and hash by address).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._pr_cffi import ffi, lib

if TYPE_CHECKING:
    from ._interfaces import Op

SIO_ACQUIRE_PORT_RESERVATION = lib.pr_sio_acquire_port_reservation
SIO_RELEASE_PORT_RESERVATION = lib.pr_sio_release_port_reservation
SIO_ASSOCIATE_PORT_RESERVATION = lib.pr_sio_associate_port_reservation
INSTANCE_SIZE = lib.pr_sizeof_instance  # INET_PORT_RESERVATION_INSTANCE, from the SDK
NOTIFY_EVENT, NOTIFY_IOCP = lib.PR_NOTIFY_EVENT, lib.PR_NOTIFY_IOCP
INFINITE = 0xFFFFFFFF


def encode_port_range(start_port: int, number_of_ports: int) -> bytes:
    out = ffi.new("unsigned char[4]")
    lib.pr_encode_port_range(start_port, number_of_ports, out)
    return ffi.buffer(out)[:]


def encode_token(token: int) -> bytes:
    out = ffi.new("unsigned char[8]")
    lib.pr_encode_token(token, out)
    return ffi.buffer(out)[:]


def decode_instance(data: bytes) -> tuple[int, int, int]:
    if len(data) != INSTANCE_SIZE:  # the C reads exactly that many
        raise ValueError(f"decode_instance: {len(data)} bytes, not {INSTANCE_SIZE}")
    out = ffi.new("pr_instance *")
    lib.pr_decode_instance(data, out)
    return out.start_port, out.number_of_ports, out.token


def acquire(s: int, start_port: int, number_of_ports: int) -> tuple[int, tuple[int, int, int]]:
    out = ffi.new("pr_instance *")
    err = lib.pr_acquire(s, start_port, number_of_ports, out)
    return err, (out.start_port, out.number_of_ports, out.token)


def release(s: int, token: int) -> int:
    return lib.pr_release(s, token)


def associate(s: int, token: int) -> int:
    return lib.pr_associate(s, token)


def persistent_create(udp: bool, start_port: int, number_of_ports: int) -> tuple[int, int]:
    token = ffi.new("uint64_t *")
    err = lib.pr_persistent_create(udp, start_port, number_of_ports, token)
    return err, token[0]


def persistent_delete(udp: bool, start_port: int, number_of_ports: int) -> int:
    return lib.pr_persistent_delete(udp, start_port, number_of_ports)


def persistent_lookup(udp: bool, start_port: int, number_of_ports: int) -> tuple[int, int]:
    token = ffi.new("uint64_t *")
    err = lib.pr_persistent_lookup(udp, start_port, number_of_ports, token)
    return err, token[0]


# ---- overlapped engine (the C in pr_windows.c owns the lifetimes) ----------

def op_new(notify: int, code: int, in_data: bytes, out_size: int) -> Op:
    """A new op, or raises OSError (winerror set) when none can be made."""
    err = ffi.new("uint32_t *")
    op = lib.pr_op_new(notify, code, in_data, len(in_data), out_size, err)
    if op == ffi.NULL:
        raise OSError(0, "pr_op_new failed", None, err[0])
    return op


def op_start(op: Op, s: int) -> int:
    return lib.pr_op_start(op, s)


def op_result(op: Op) -> tuple[int, int] | None:
    """(status, bytes) once the op has finished, else None."""
    out = ffi.new("uint32_t[2]")
    if lib.pr_op_result(op, out, out + 1):
        return out[0], out[1]
    return None


def op_wait(op: Op, timeout_ms: int = INFINITE) -> int:
    return lib.pr_op_wait(op, timeout_ms)


def op_cancel(op: Op) -> int:
    return lib.pr_op_cancel(op)


def op_out(op: Op, size: int) -> bytes:
    buf = ffi.new("unsigned char[]", size)
    n = lib.pr_op_out(op, buf, size)
    return ffi.buffer(buf, n)[:]


def op_free(op: Op) -> None:
    lib.pr_op_free(op)


def iocp_new() -> tuple[int, int]:
    iocp = ffi.new("uintptr_t *")
    err = lib.pr_iocp_new(iocp)
    return err, iocp[0]


def iocp_attach(iocp: int, s: int) -> int:
    return lib.pr_iocp_attach(iocp, s)


def iocp_get(iocp: int, timeout_ms: int, max_ops: int = 64) -> tuple[int, list[Op]]:
    max_ops = max(1, min(max_ops, 64))
    ops = ffi.new("pr_op *[]", max_ops)
    count = ffi.new("uint32_t *")
    err = lib.pr_iocp_get(iocp, timeout_ms, ops, max_ops, count)
    return err, [ops[i] for i in range(count[0])]


def iocp_post(iocp: int) -> int:
    return lib.pr_iocp_post(iocp)


def iocp_close(iocp: int) -> int:
    return lib.pr_iocp_close(iocp)
