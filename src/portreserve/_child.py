"""Reservation.popen: a child process that gets the block's ports (docs/API.md section 1b).

Three ways, chosen per child:

- ``listen_fds=True``: the holders themselves, listening (TCP), become the
  child's descriptors 3, 4, ... under the systemd socket-activation protocol.
  A tiny Python step between fork and the program moves them there and sets
  LISTEN_PID to its own pid, which the program keeps through exec.
- By number, on Linux, for a dynamically linked program that is not setuid:
  the child inherits the holders and our LD_PRELOAD library
  (csrc/pr_preload.c) serves its bind() of a reserved port from them.
- Otherwise the holders are closed just before the child starts, and it
  binds the ports as any program would (README states that window).

In the first two the parent keeps its copy of each holder, so the port is
bound at every moment; when the child exits the holders come back to the
block (Block.give_back).  The child is a subprocess.Popen whose wait() and
poll() do that once they see it exit.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ._errors import InvalidParameter, NotSupported, PortReservationError
from ._records import Protocol

if TYPE_CHECKING:
    from ._reservation import Reservation

#: What Popen takes as ``args``.
Args = Union[str, bytes, "os.PathLike[str]", Sequence[Any]]

# {port}, {port0}, {port1}...: only canonical decimal indexes.  Any other
# spelling ({port01}, {port00}, non-ASCII digits) is text, as every other
# text with braces: a leading zero could mean either index.
_PLACEHOLDER = re.compile(r"\{port(0|[1-9][0-9]*)?\}")

# Runs in the child before the program: descriptors to 3.., LISTEN_PID, exec.
_ACTIVATE = """\
import fcntl, os, sys
n = int(sys.argv[1]); fds = [int(a) for a in sys.argv[2:2 + n]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + n) for fd in fds]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
for fd in high + [fd for fd in fds if fd >= 3 + n]:
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
try:
    os.execvp(sys.argv[2 + n], sys.argv[3 + n:])
except OSError as exc:
    sys.stderr.write(f"portreserve: cannot run {sys.argv[2 + n]}: {exc}\\n")
    os._exit(127)
"""


def substitute(args: Args, ports: list[int]) -> Args:
    """``{port}`` and ``{portN}`` replaced in ``args`` (a string or a sequence).

    ``N`` is a decimal index without leading zeros (``{port0}``, ``{port12}``);
    ``{port01}`` and any other spelling stay as they are, as all other text.
    InvalidParameter for an index past the block, naming the placeholder.
    """
    def one(text: Any) -> Any:
        if not isinstance(text, str):
            return text

        def repl(m: re.Match[str]) -> str:
            i = int(m.group(1) or 0)
            if i >= len(ports):
                raise InvalidParameter(f"popen: {m.group(0)} in {text!r} names no port of "
                                       f"the block ({len(ports)} port(s))")
            return str(ports[i])
        return _PLACEHOLDER.sub(repl, text)
    if isinstance(args, (str, bytes, os.PathLike)):
        return one(args)
    return [one(a) for a in args]


def preload_library() -> str | None:
    """The LD_PRELOAD library shipped in the package, if this system uses it."""
    if not sys.platform.startswith("linux"):
        return None
    found = sorted(Path(__file__).parent.glob("_preload*.so"))
    # LD_PRELOAD splits on spaces and colons.
    if not found or any(c in str(found[0]) for c in " :"):
        return None
    return str(found[0])


def _dynamic(path: str, depth: int = 0) -> bool:
    """Whether the dynamic linker will load LD_PRELOAD into ``path``: an ELF
    file with an interpreter and no setuid/setgid bit, or a script whose
    interpreter is one."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:2] == b"#!" and depth == 0:
                line = (head + f.readline())[2:].split(b"\n")[0].split()
                return bool(line) and _dynamic(os.fsdecode(line[0]), 1)
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID) or head[:4] != b"\x7fELF":
                return False
            wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
            import struct
            if wide:
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            return any(struct.unpack_from(order + "I", table, k * phentsize)[0] == 3  # PT_INTERP
                       for k in range(len(table) // max(phentsize, 1)))
    except (OSError, ValueError, IndexError):
        return False


def _program(args: Args, kwargs: dict[str, Any],
             env: dict[str, str]) -> tuple[list[Any], str]:
    """The argv Popen would run and the file it would execute."""
    if kwargs.get("shell"):
        shell = kwargs.get("executable") or "/bin/sh"
        argv = ([shell, "-c", args] if isinstance(args, (str, bytes))
                else [shell, "-c", *list(args)])  # type: ignore[arg-type]
        return argv, shell
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    if not argv:
        raise InvalidParameter("popen: empty command")
    program = os.fsdecode(kwargs.get("executable") or argv[0])
    if os.sep not in program:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        program = found
    return argv, program


class ReservedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """A child that borrowed ports of a reservation; they return to the block
    when wait() or poll() sees the child exit."""

    _give_back: Callable[[], None] | None = None

    def poll(self) -> int | None:
        code = super().poll()
        if code is not None:
            self._returned()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        self._returned()
        return code

    def _returned(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


def _listening(fd: int, protocol: Protocol) -> None:
    """Make a holder the socket a socket-activated program expects."""
    sock = socket.socket(fileno=fd)
    try:
        if protocol is Protocol.TCP:
            sock.listen(socket.SOMAXCONN)
        else:  # undo what keeps a holder from receiving
            if sys.platform.startswith("linux"):
                sock.setsockopt(socket.SOL_SOCKET, 27, 0)  # SO_DETACH_FILTER
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 212992)
    finally:
        sock.detach()


def popen(reservation: Reservation, args: Args, *, listen_fds: bool = False,
          **kwargs: Any) -> ReservedPopen:
    block: Any = reservation._block  # on POSIX the engine's Block, with lend()/give_back()
    ports = list(range(block.start, block.start + block.count))
    args = substitute(args, ports)
    env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
    env["PORT"] = str(ports[0])
    env["PORTRESERVE_PORTS"] = f"{ports[0]}-{ports[-1]}"
    kwargs["env"] = env
    if sys.platform == "win32":  # Windows cannot lend single ports of a reservation
        return _popen_released(reservation, args, listen_fds, kwargs)
    argv, program = _program(args, kwargs, env)
    library = None if listen_fds else preload_library()
    by_number = library is not None and _dynamic(program)
    lent = block.lend(release=not (listen_fds or by_number))
    fds = [fd for _, fd in lent]
    run: Any
    try:
        if listen_fds:
            for fd in fds:
                _listening(fd, block.protocol)
            env["LISTEN_FDS"] = str(len(fds))
            env["LISTEN_FDNAMES"] = ":".join(str(p) for p, _ in lent)
            env.pop("LISTEN_PID", None)
            run = [sys.executable, "-I", "-S", "-c", _ACTIVATE, str(len(fds)),
                   *map(str, fds), program, *argv]
            kwargs.pop("executable", None)
            kwargs.pop("shell", None)
        elif by_number:
            env["LD_PRELOAD"] = ":".join(filter(None, [library, env.get("LD_PRELOAD")]))
            env["PORTRESERVE_PRELOAD"] = " ".join(
                [str(os.getpid()), str(block.protocol.socket_type)] +
                [f"{p}:{fd}" for p, fd in lent])
            run = args
        else:
            run = args
        if listen_fds or by_number:
            kwargs["pass_fds"] = tuple(kwargs.get("pass_fds", ())) + tuple(fds)
        with block.passing_to_child(fds):
            proc = ReservedPopen(run, **kwargs)
    except BaseException:
        block.give_back([p for p, _ in lent])
        raise
    proc.args = args
    proc._give_back = lambda: block.give_back([p for p, _ in lent])
    return proc


def _popen_released(reservation: Reservation, args: Args, listen_fds: bool,
                    kwargs: dict[str, Any]) -> ReservedPopen:
    """Windows: a reservation cannot lend single ports, so the whole block is
    released just before the child starts and reserved again (a new token)
    when it has exited.  A child that cooperates can instead take a bound
    socket through socket.share() (README)."""
    if listen_fds:
        raise NotSupported("popen: listen_fds needs POSIX descriptor passing; on Windows "
                           "give the child Reservation.socket().share(pid)")
    block = reservation._block

    def give_back() -> None:
        from ._engine import engine
        try:
            reservation._block = engine.reserve(block.protocol, block.start, block.count)
        except PortReservationError:
            pass  # taken in the meantime: the reservation stays released

    block.close()
    try:
        proc = ReservedPopen(args, **kwargs)
    except BaseException:
        give_back()
        raise
    proc.args = args
    proc._give_back = give_back
    return proc
