"""POSIX system calls through the compiled shim (csrc/pr_posix.c).

Same functions as _posix_ctypes.py.  Fallible single calls raise OSError
with the errno the shim captured; pr_hold reports which port failed.
"""

from __future__ import annotations

import sys

assert sys.platform != "win32"  # POSIX only; also tells mypy to skip this module there

import os
from typing import TYPE_CHECKING, Any, NoReturn

from ._pr_cffi import ffi, lib

if TYPE_CHECKING:
    from ._interfaces import Fds


def _raise(err: int) -> NoReturn:
    raise OSError(err, os.strerror(err))


_INTS = ffi.typeof("int[]")
_ONE = [-1]


def new_fds(count: int) -> Fds:
    """An int array for ``count`` descriptors, each -1."""
    if count == 1:  # reserve(1): the usual call, from a list (faster)
        return ffi.new(_INTS, _ONE)
    fds = ffi.new(_INTS, count)
    ffi.memmove(fds, b"\xff" * (4 * count), 4 * count)
    return fds


def hold(family: int, type: int, start: int, count: int, fds: Fds) -> tuple[int, int]:
    """Holders for start..start+count-1 into fds; (ports held, errno)."""
    err = ffi.new("int *")
    n = lib.pr_hold(family, type, start, count, fds, err)
    return n, err[0]


def hold_one(family: int, type: int, lo: int, hi: int, reserved_fd: int, seed: int,
             fds: Fds) -> int:
    """reserve(1)'s holder on a random port, stored straight into fds[0]; its port or 0."""
    err = ffi.new("int *")
    port: int = lib.pr_hold_one(family, type, lo, hi, reserved_fd, seed, fds, err)
    if port < 0:
        _raise(err[0])
    return port


def hold_any(family: int, type: int, fds: Fds) -> int:
    """One holder on a port the kernel picks, stored straight into fds[0]; its port."""
    err = ffi.new("int *")
    port: int = lib.pr_hold_any(family, type, fds, err)
    if port < 0:
        _raise(err[0])
    return port


def close_all(fds: Fds, count: int) -> None:
    lib.pr_close_all(fds, count)


def bound_ports(protocol: int, which: int = 0, taken: bytearray | None = None) -> bytearray:
    if taken is None:
        taken = bytearray(65536)
    err = ffi.new("int *")
    if lib.pr_bound_ports(protocol, which, ffi.from_buffer(taken), err) < 0:
        _raise(err[0])
    return taken


def parse_diag(buf: bytes, taken: bytearray) -> bool:
    """One reply of a sock_diag dump into taken; True at its end (tests, fuzzing)."""
    err = ffi.new("int *")
    rc = lib.pr_parse_diag(ffi.from_buffer(buf), len(buf), ffi.from_buffer(taken), err)
    if rc < 0:
        _raise(err[0])
    return rc == 1


def handoff_dup(holder: int, user: int) -> None:
    err = ffi.new("int *")
    if lib.pr_handoff_dup(holder, user, err) < 0:
        _raise(err[0])


def handoff_reuseport(holder: int, user: int, family: int, addr: bytes, port: int,
                      private_uid: int) -> None:
    err = ffi.new("int *")
    if lib.pr_handoff_reuseport(holder, user, family, addr, port, private_uid, err) < 0:
        _raise(err[0])


def set_local_port_range(fd: int, lo: int, hi: int) -> None:
    err = ffi.new("int *")
    if lib.pr_set_local_port_range(fd, lo, hi, err) < 0:
        _raise(err[0])


def port_range() -> tuple[int, int]:
    out = ffi.new("unsigned int[2]")
    err = ffi.new("int *")
    if lib.pr_port_range(out, out + 1, err) < 0:
        _raise(err[0])
    return out[0], out[1]


def readopt(fd: int, reset_options: bool) -> None:
    err = ffi.new("int *")
    if lib.pr_readopt(fd, reset_options, err) < 0:
        _raise(err[0])


def hold_beside(fd: int, family: int, type: int, port: int, fds: Fds, index: int) -> None:
    """A new holder of ``port`` beside ``fd``, stored straight into fds[index]."""
    err = ffi.new("int *")
    if lib.pr_hold_beside(fd, family, type, port, ffi.addressof(fds, index), err) < 0:
        _raise(err[0])


def rehold(family: int, type: int, port: int, fds: Fds, index: int) -> None:
    """Hold ``port`` again into fds[index]."""
    err = ffi.new("int *")
    if lib.pr_rehold(family, type, port, ffi.addressof(fds, index), err) < 0:
        _raise(err[0])


def open_input(fd: int, rcvbuf: int) -> None:
    err = ffi.new("int *")
    if lib.pr_open_input(fd, rcvbuf, err) < 0:
        _raise(err[0])


def signal_state() -> Any:
    """Room for pr_hold_signals' saved mask."""
    return ffi.new("unsigned char[136]")


# Only the main thread blocks signals (_linux._signals_held), so one errno
# cell serves every call: no allocation on this path, taken twice a call.
_signal_err = ffi.new("int *")


def hold_signals(state: Any) -> None:
    if lib.pr_hold_signals(state, _signal_err) < 0:
        _raise(_signal_err[0])


def restore_signals(state: Any) -> None:
    if lib.pr_restore_signals(state, _signal_err) < 0:
        _raise(_signal_err[0])
