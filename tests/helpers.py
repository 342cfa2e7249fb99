"""Test helpers: run Python in another process, or in a private network namespace.

Anything that writes /proc/sys/net/... must run through in_netns(), never in
the test process: the host's network settings are never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Iterator

import pytest

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # never on Windows
LINUX = sys.platform.startswith("linux")


def _python_for(user: int | None) -> str:
    """An interpreter that ``user`` may run.

    Ours may live under a private home (pyenv in /root); another uid then gets
    the system's python3, enough for code that needs only the standard library.
    """
    if user is None or os.access(sys.executable, os.X_OK) and not ROOT:
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    pytest.skip("no python3 that another uid can run")


def run_python(code: str, *, user: int | None = None, timeout: float = 60,
               prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (optionally as uid ``user``)."""
    kwargs = {}
    if user is not None:
        kwargs = {"user": user, "group": user, "extra_groups": []}
    return subprocess.run([*(prefix or []), _python_for(user), "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def netns_prefix() -> list[str]:
    """The command prefix that gives a child a private network namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    # As root a plain new net namespace; otherwise a user namespace maps us
    # to root inside it, which is enough to write that namespace's sysctls.
    prefix = ["unshare", "--net"] if ROOT else ["unshare", "-rn"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.decode().strip()}")
    return prefix


def in_netns(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a private network namespace with loopback up; return stdout.

    The code runs after ``import portreserve``; it fails the test on any error.
    """
    setup = ("import subprocess\n"
             "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n")
    result = run_python(setup + textwrap.dedent(code), timeout=timeout, prefix=netns_prefix())
    assert result.returncode == 0, f"namespace child failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def can_bind(port: int, *, host: str = "127.0.0.1", udp: bool = False,
             user: int | None = None, reuse: bool = False) -> bool:
    """Whether another process (optionally as uid ``user``) can bind (host, port)."""
    code = f"""
        import socket, sys
        family = socket.AF_INET6 if ':' in {host!r} else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM if {udp} else socket.SOCK_STREAM)
        if {reuse}:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(({host!r}, {port}))
        except OSError as e:
            print(e.errno); sys.exit(3)
        print('bound')
    """
    result = run_python(code, user=user)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode == 0


def own_sockets() -> Iterator[tuple[int, socket.socket]]:
    """Each socket of this process: (its descriptor, a socket object on a dup
    of it, closed again once the caller moves on)."""
    for name in open_fds():
        try:
            fd = os.dup(int(name))
        except OSError:  # the listing's own descriptor, closed by now
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket
            os.close(fd)
            continue
        with sock:
            yield int(name), sock


def bound_here(port: int, *, udp: bool = False) -> list[int]:
    """Descriptors of this process bound to ``port`` (TCP, or UDP), any address."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    found = []
    for fd, sock in own_sockets():
        try:
            if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == kind
                    and sock.getsockname()[1] == port):
                found.append(fd)
        except OSError:
            pass
    return found


def freed(port: int, *, host: str = "127.0.0.1", udp: bool = False,
          user: int | None = None) -> bool:
    """Whether this process gave ``port`` back: another process can bind it.

    For a port released by this process (no children involved).  Other test
    runs share the host and reserve blocks too, so one may take the port
    between our release and the other process's bind; the port is then
    still given back if no descriptor of ours is bound to it, before and
    after the try.  One of ours bound to it fails the check either way.
    """
    if bound_here(port, udp=udp):
        return False
    return can_bind(port, host=host, udp=udp, user=user) or not bound_here(port, udp=udp)


def open_fds() -> set[str]:
    """This process's open descriptors."""
    return set(os.listdir("/proc/self/fd" if LINUX else "/dev/fd"))


def free_block(count: int) -> int:
    """The start of a block of ``count`` ports that is free right now."""
    import portreserve
    with portreserve.reserve(count) as res:
        return res.start


def import_paths() -> list[str]:
    """Where this build of portreserve (and cffi's backend) is imported from:
    the sys.path a child of another uid needs to import the same build."""
    import portreserve
    paths = [os.path.dirname(os.path.dirname(portreserve.__file__))]
    try:
        import _cffi_backend
        paths.append(os.path.dirname(_cffi_backend.__file__))
    except ImportError:
        pass
    return paths
