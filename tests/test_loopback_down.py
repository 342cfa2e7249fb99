"""A hand-off that needs the loopback interface, in a network namespace whose
`lo` is down.

A TCP socket bound from the block on another family or a specific address
gets its port through an SO_REUSEPORT bind; after it, one bind on a free
loopback address its socket does not cover resets the kernel's bind-bucket
cache, which would let a process of the same uid that sets SO_REUSEPORT join
the port later (README, "What is enforced").  For a socket on 0.0.0.0 that
address is ::1, which needs lo up; without it the error says so: a
PortReservationError with EADDRNOTAVAIL (99, winerror 10049
WSAEADDRNOTAVAIL), naming the port and the loopback interface.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT, _python_for, import_paths, netns_prefix

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="private network namespaces")
NOBODY = 65534

CODE = """
import socket, sys
sys.path[:0] = {paths!r}
import portreserve
for host in ("", "0.0.0.0", "127.0.0.1"):
    with portreserve.reserve(1) as res, socket.socket() as s:
        try:
            res.bind(s, host)
            print("bound")
        except portreserve.PortReservationError as exc:
            print(type(exc).__name__, exc.errno, exc.winerror, res.start, exc.strerror)
"""


@pytest.mark.parametrize("user", [None, pytest.param(NOBODY, marks=pytest.mark.skipif(
    not ROOT, reason="setpriv to another uid needs root"))])
def test_loopback_down_is_named(user):
    command = netns_prefix()  # lo stays down
    if user is not None:  # as the uid the cache matters for (a non-root owner)
        command += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    command += [_python_for(user), "-c", CODE.format(paths=import_paths())]
    r = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if user is not None and ("No module named" in r.stderr or "Permission denied" in r.stderr):
        pytest.skip(f"uid {user} cannot import this build: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    # On 127.0.0.1 the cache is reset on 127.255.255.254, which Linux binds
    # with lo down; a socket on 0.0.0.0 covers it, and ::1 needs lo up.
    assert lines[2] == "bound", lines
    for line in lines[:2]:
        cls, errno, winerror, port, message = line.split(" ", 4)
        assert (cls, errno, winerror) == ("PortReservationError", "99", "10049"), line
        assert f"port {port}" in message and "loopback" in message and "down" in message, line
