"""Hand-off of reserved ports to sockets, checked against the real kernel.

Each test is one input that a port picker's users meet (a socket closed and
reused, fork, a restarting server, other uids, odd hosts) and has another
process really try to take the port at each step: of our uid, of another
uid (as root), with and without SO_REUSEADDR / SO_REUSEPORT.  Both backends
run these (PORTRESERVE_BACKEND is inherited by every child).
"""

import errno
import gc
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

import portreserve
from portreserve import InvalidParameter, PortReservationError, ReservationConflict, lowlevel

from helpers import LINUX, ROOT, bound_here, import_paths, in_netns, open_fds, run_python

pytestmark = pytest.mark.skipif(not LINUX, reason="Linux's bind rules")
as_root = pytest.mark.skipif(not ROOT, reason="needs root (another uid, a namespace)")

NOBODY = 65534
PROTOCOLS = ["tcp", "udp"]
V6ONLY = (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)

# Every way another process may try for a port: each host, each reuse
# option, a v6-only and a dual-stack [::], and listen() after a TCP bind.
ATTACK = """
import socket, sys
port, udp = {port}, {udp}
won = []
for host in ("0.0.0.0", "127.0.0.1", "::", "::1", "dual"):
    for reuse in ("", "addr", "port", "both"):
        family = socket.AF_INET if "." in host else socket.AF_INET6
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, host != "dual")
        if reuse in ("addr", "both"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse in ("port", "both"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("::" if host == "dual" else host, port))
            if not udp:
                s.listen()
            won.append(host + "/" + (reuse or "plain"))
        except OSError:
            pass
        s.close()
print(" ".join(won))
"""


def takers(port, *, udp=False, user=None):
    """What another process (of ``user``, or ours) could bind of ``port``."""
    result = run_python(ATTACK.format(port=port, udp=udp), user=user)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def nobody_takes(port, *, udp=False):
    assert takers(port, udp=udp) == []
    if ROOT:
        assert takers(port, udp=udp, user=NOBODY) == []
    return True


# A process that keeps trying to bind one port (all hosts, reuse options) until
# told to stop; it prints what it ever got.
RACER = """
import socket, sys, select
port, udp = int(sys.argv[1]), sys.argv[2] == "udp"
kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
tries = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1"),
         (socket.AF_INET6, "::"), (socket.AF_INET6, "::1")]
won = set()
print("ready", flush=True)
for i in range(2_000_000):  # bounded; stopped through stdin long before
    if i % 64 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
    family, host = tries[i % 4]
    s = socket.socket(family, kind)
    if i % 8 >= 4:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port))
        if not udp:
            s.listen()
        won.add(host)
    except OSError:
        pass
    s.close()
print(" ".join(sorted(won)) or "nothing", flush=True)
"""


class Racer:
    """Another process that tries to take ``port`` for as long as it runs."""

    def __init__(self, port, protocol, user=None):
        kwargs = {"user": user, "group": user, "extra_groups": []} if user else {}
        python = "/usr/bin/python3" if user else sys.executable
        self.proc = subprocess.Popen([python, "-c", RACER, str(port), protocol],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, **kwargs)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        out, _ = self.proc.communicate("stop\n", timeout=60)
        return out.strip()


# ---- 1, 4: Reservation.socket() is the holder, and comes back on close ------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_socket_is_the_holder_itself_and_closing_it_leaves_no_window(protocol):
    udp = protocol == "udp"
    with portreserve.reserve(1, protocol=protocol) as res:
        before = len(open_fds())
        s = res.socket()
        assert len(open_fds()) == before  # the holder moved into the socket: no copy
        assert s.family == socket.AF_INET6 and s.getsockopt(*V6ONLY) == 0
        assert s.getsockname()[1] == res.start
        if not udp:
            s.listen()
        assert nobody_takes(res.start, udp=udp)
        s.close()
        # No call on the reservation since: the port must be held already.
        assert nobody_takes(res.start, udp=udp)
        again = res.socket()
        assert again.getsockname()[1] == res.start
        again.close()
    assert takers(res.start, udp=udp)  # released: free again


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closed_socket_port_is_held_again_on_a_two_port_block(protocol):
    udp = protocol == "udp"
    with portreserve.reserve(2, protocol=protocol) as res:
        a = res.socket()
        port = a.getsockname()[1]
        a.close()
        assert nobody_takes(port, udp=udp)
        b, c = res.socket(), res.socket()
        assert {b.getsockname()[1], c.getsockname()[1]} == set(res.ports)
        b.close()
        c.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_racing_process_never_gets_the_port_through_socket_cycles(protocol):
    udp = protocol == "udp"
    with portreserve.reserve(1, protocol=protocol) as res:
        racers = [Racer(res.start, protocol)]
        if ROOT:
            racers.append(Racer(res.start, protocol, user=NOBODY))
        try:
            for i in range(300):
                with res.socket() as s:
                    if not udp and i % 2:
                        s.listen()
                        # Set after listen(): on a socket that does not listen
                        # it would let others share the port, on Linux as for
                        # any socket.  Closing must clear it.
                        if i % 3 == 0:
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        finally:
            results = [r.stop() for r in racers]
    assert results == ["nothing"] * len(racers)


def test_socket_used_as_server_comes_back_stopped_listening_and_restarts():
    with portreserve.reserve(1) as res:
        for _ in range(3):
            s = res.socket()
            s.listen()  # again over the TIME_WAIT of the round before
            client = socket.create_connection(("127.0.0.1", res.start), timeout=5)
            conn, _ = s.accept()
            conn.close()  # the server closes first: TIME_WAIT on the reserved port
            client.close()
            s.close()
            with socket.socket() as probe:  # the holder no longer listens
                assert probe.connect_ex(("127.0.0.1", res.start)) == errno.ECONNREFUSED
            assert nobody_takes(res.start)


def test_connected_socket_is_replaced_by_a_holder_on_close():
    with portreserve.reserve(1) as res, socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        s = res.socket()
        s.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        conn, _ = server.accept()
        s.sendall(b"bye")
        s.close()  # a graceful close: the peer reads the data, then EOF
        conn.settimeout(5)
        assert conn.recv(10) == b"bye" and conn.recv(10) == b""
        conn.close()
        assert nobody_takes(res.start)
        again = res.socket()  # held again, TIME_WAIT or not
        assert again.getsockname()[1] == res.start
        again.close()


def test_options_the_user_set_are_reset_when_the_socket_comes_back():
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(0)
        s.listen()
        assert takers(res.start)  # SO_REUSEPORT: our uid may join, as the user chose
        s.close()
        assert nobody_takes(res.start)  # reuse options and listen() undone
        again = res.socket()
        assert not again.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not again.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert not again.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert os.get_blocking(again.fileno())
        again.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_socket_with_options_set_is_taken_back_itself(protocol, monkeypatch):
    # Not replaced by a new holder (that path has a one-bind window).
    from portreserve._backend import calls
    failures = []
    readopt = calls.readopt

    def spy(fd, reset_options):
        try:
            readopt(fd, reset_options)
        except OSError as exc:
            failures.append(exc)
            raise

    monkeypatch.setattr(calls, "readopt", spy)
    with portreserve.reserve(1, protocol=protocol) as res:
        s = res.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, b"\x02" + bytes(15))
        s.close()
        assert failures == []
        assert nobody_takes(res.start, udp=protocol == "udp")
        again = res.socket()
        assert again.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY) == 0
        assert again.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)
        again.close()


def test_udp_socket_comes_back_deaf_and_drained():
    with portreserve.reserve(1, protocol="udp") as res:
        s = res.socket()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"one", ("127.0.0.1", res.start))
            s.settimeout(5)
            assert s.recvfrom(10)[0] == b"one"
            sender.sendto(b"left over", ("127.0.0.1", res.start))
            s.close()
            sender.sendto(b"while held", ("127.0.0.1", res.start))
            again = res.socket()
            sender.sendto(b"fresh", ("127.0.0.1", res.start))
            again.settimeout(5)
            assert again.recvfrom(20)[0] == b"fresh"
            again.close()


def test_readopt_takes_back_a_detached_holder():
    # The primitive other hand-offs (a holder lent to a child process) use.
    with portreserve.reserve(1) as res:
        block = res._block
        s = res.socket()
        fd = s.detach()  # given away: the block no longer hands it out
        with pytest.raises(portreserve.ReservationExhausted):
            res.socket()
        block.readopt(res.start, fd)
        assert nobody_takes(res.start)
        again = res.socket()
        assert again.getsockname()[1] == res.start
        again.close()


def test_copies_of_a_held_socket_are_plain_sockets():
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.listen()
        copy = s.dup()
        copy.close()  # closes only the copy
        with socket.create_connection(("127.0.0.1", res.start), timeout=5):
            s.accept()[0].close()
        s.close()
        assert nobody_takes(res.start)
        res.socket().close()


def test_socket_closed_after_release_frees_its_port():
    res = portreserve.reserve(1)
    s = res.socket()
    res.release()
    assert not takers(res.start)  # still bound by the socket
    s.close()
    assert takers(res.start)


def test_garbage_collected_socket_comes_back():
    with portreserve.reserve(1) as res:
        res.socket()  # dropped at once
        gc.collect()
        assert nobody_takes(res.start)
        res.socket().close()


# ---- 2: fork ----------------------------------------------------------------

def test_forked_child_holds_nothing_and_hands_out_nothing():
    res = portreserve.reserve(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            try:
                res.socket(socket.AF_INET6)
                os.write(w, b"got a socket")
            except InvalidParameter:
                os.write(w, b"released")
        finally:
            os._exit(0)
    os.close(w)
    try:
        s = res.socket(socket.AF_INET6)
        s.listen()
        assert os.read(r, 100) == b"released"
    finally:
        os.waitpid(pid, 0)
        os.close(r)
    s.close()
    res.release()
    assert takers(res.start)


def _wait_for(conn):
    """Until "done": answer a list of ports with those this process has bound."""
    while (ports := conn.recv()) != "done":
        conn.send([p for p in ports if bound_here(p)])


def test_multiprocessing_fork_child_keeps_no_port_busy():
    ctx = multiprocessing.get_context("fork")
    res = portreserve.reserve(2)
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_wait_for, args=(child_end,))
    child.start()

    def held(port):  # by a descriptor of ours or of the child
        parent_end.send([port])
        return bound_here(port) + parent_end.recv()

    try:
        res.release()
        for port in res.ports:  # while the child lives
            assert held(port) == []
            # Other test runs share the host: one may take the port before
            # the taker binds; it is still ours to give only if we hold it.
            assert takers(port) or held(port) == [], port
    finally:
        parent_end.send("done")
        child.join(30)
        parent_end.close()
        child_end.close()


def test_socket_shared_with_a_forked_child_keeps_listening_there():
    # The pre-fork server: the parent closes its copy, the child serves.
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.listen()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            try:
                os.read(r, 1)
                conn, _ = s.accept()
                conn.sendall(b"child")
                conn.recv(1)  # the client closes first: no TIME_WAIT on the port
                conn.close()
            finally:
                os._exit(0)
        s.close()  # really closed: the child's copy still listens
        os.write(w, b"x")
        with socket.create_connection(("127.0.0.1", res.start), timeout=5) as c:
            assert c.recv(10) == b"child"
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
        again = res.socket()  # the child is gone: the port is held again
        assert again.getsockname()[1] == res.start
        again.close()
        assert nobody_takes(res.start)


# ---- 3: the default family --------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_default_socket_is_dual_stack_and_closes_every_address(protocol):
    udp = protocol == "udp"
    with portreserve.reserve(1, protocol=protocol) as res:
        s = res.socket()
        assert s.family == socket.AF_INET6 and s.getsockopt(*V6ONLY) == 0
        if not udp:
            s.listen()
        assert nobody_takes(res.start, udp=udp)
        s.close()


V4_PROBE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1]))); print("bound")
except OSError as e:
    print(e.errno)
"""


def test_bindv6only_host_still_gets_a_dual_stack_socket():
    in_netns(f"""
        import socket, subprocess, sys, portreserve
        with open('/proc/sys/net/ipv6/bindv6only', 'w') as f:
            f.write('1')
        res = portreserve.reserve(1)
        for host in ("", "::"):
            s = res.socket(socket.AF_INET6, host)
            assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            s.listen()
            probe = subprocess.run([sys.executable, "-c", {V4_PROBE!r}, str(res.start)],
                                   capture_output=True, text=True)
            assert probe.stdout.strip() == "98", probe.stdout + probe.stderr
            s.close()
    """)


# ---- 5: SO_REUSEPORT hand-off as a non-root owner ---------------------------

OWNER = """
import socket, subprocess, sys
sys.path[:0] = {paths!r}
import portreserve
ATTACK = {attack!r}
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, ""),
                     (socket.AF_INET6, "::1")):
    res = portreserve.reserve(1)
    s = socket.socket(family)
    port = res.bind(s, host)
    out = subprocess.run([sys.executable, "-c", ATTACK, str(port), host or "0.0.0.0"],
                         capture_output=True, text=True).stdout.strip()
    s.listen()
    print(host or "any", out)
    s.close()
    res.release()
"""

REUSEPORT_ATTACK = """
import socket, sys
port, host = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind((host, port)); s.listen(); print("taken")
except OSError as e:
    print("refused", e.errno)
"""


@pytest.mark.parametrize("user", [None, pytest.param(NOBODY, marks=as_root)])
def test_same_uid_reuseport_process_cannot_take_over_after_bind(user):
    code = OWNER.format(paths=import_paths(), attack=REUSEPORT_ATTACK)
    result = run_python(code, user=user)
    if user and ("No module named" in result.stderr or "Permission denied" in result.stderr):
        pytest.skip(f"uid {user} cannot import this build: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["127.0.0.1 refused 98", "any refused 98", "::1 refused 98"], lines


# ---- SO_REUSEADDR the user set before the hand-off -----------------------

def _bind_by(entry, res, sock, host):
    if entry == "Reservation.bind":
        return res.bind(sock, host)
    if entry == "portreserve.bind":
        return portreserve.bind(sock, res.token, host)
    lowlevel.associate_port_reservation(sock, res.token)
    lowlevel.bind_associated(sock, (host, 0))
    return sock.getsockname()[1]


def _plain_bind_leaves(family, host, udp):
    """What others can take of a port bound plainly (no reuse options) on
    ``(host, port)`` by a socket of ``family``: the standard to meet."""
    with portreserve.reserve(1, protocol="udp" if udp else "tcp") as res:
        port = res.start  # free once released
    with socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as plain:
        if family == socket.AF_INET6:
            plain.setsockopt(*V6ONLY, 0)
        plain.bind((host, port))
        return {user: set(takers(port, udp=udp, user=user))
                for user in ([None, NOBODY] if ROOT else [None])}


PLAIN_LISTEN = socket.socket.listen

# Every address for Reservation.bind; the other entry points once per path
# (descriptor swap, SO_REUSEPORT bind).
REUSEADDR_CASES = [
    ("Reservation.bind", family, host)
    for family, host in ((socket.AF_INET6, ""), (socket.AF_INET, ""),
                         (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))] + [
    (entry, family, host) for entry in ("portreserve.bind", "lowlevel.bind_associated")
    for family, host in ((socket.AF_INET6, ""), (socket.AF_INET, "127.0.0.1"))]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("entry, family, host", REUSEADDR_CASES)
def test_reuseaddr_set_before_bind_leaves_the_port_as_closed_as_a_plain_bind(
        entry, family, host, protocol):
    """A socket that set SO_REUSEADDR (as servers do, for restarts) gets its
    port from the reservation; from then until it listens, another process
    that sets SO_REUSEADDR too (of our uid or another) takes nothing a plain
    bind would not let it take.  A TCP socket has the option again once it
    listens; a UDP one never gets it back."""
    udp = protocol == "udp"
    standard = _plain_bind_leaves(family, host, udp)
    with portreserve.reserve(2, protocol=protocol) as res:
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port = _bind_by(entry, res, s, host)
        assert port in res.ports
        for user, allowed in standard.items():
            got = set(takers(port, udp=udp, user=user))
            assert got <= allowed, (user, sorted(got - allowed))
        if not udp:
            gc.collect()  # no socket of an earlier test still waits to listen
            s.listen()
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
            # socket.socket.listen sets it only while a socket waits for it
            assert socket.socket.listen is PLAIN_LISTEN
            for user, allowed in standard.items():
                assert set(takers(port, udp=udp, user=user)) <= allowed
        else:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        s.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reuseaddr_failed_bind_changes_nothing(protocol):
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with portreserve.reserve(1, protocol=protocol) as res, res.socket() as held:
        with socket.socket(socket.AF_INET6, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(portreserve.ReservationExhausted):
                res.bind(s)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert held.getsockname()[1] == res.start


REUSEADDR_OWNER = """
import socket, subprocess, sys
sys.path[:0] = {paths!r}
import portreserve
ATTACK = {attack!r}
for protocol in ("tcp", "udp"):
    res = portreserve.reserve(1, protocol=protocol)
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if protocol == "tcp"
                      else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = res.bind(s)
    out = subprocess.run([sys.executable, "-c", ATTACK.format(port=port, udp=protocol == "udp")],
                         capture_output=True, text=True).stdout.split()
    print(protocol, " ".join(out) or "nothing")
    s.close()
    res.release()
"""


@pytest.mark.parametrize("user", [None, pytest.param(NOBODY, marks=as_root)])
def test_reuseaddr_set_before_bind_as_a_non_root_owner(user):
    # The owner and the intruder of one uid (another than root's, as root).
    code = REUSEADDR_OWNER.format(paths=import_paths(), attack=ATTACK)
    result = run_python(code, user=user)
    if user and ("No module named" in result.stderr or "Permission denied" in result.stderr):
        pytest.skip(f"uid {user} cannot import this build: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tcp nothing", "udp nothing"], result.stdout


# ---- 6: server restart and TIME_WAIT ----------------------------------------

def _serve_once(server, family_host):
    client = socket.create_connection(family_host, timeout=5)
    conn, _ = server.accept()
    conn.close()  # the server closes first: TIME_WAIT on the reserved port
    client.close()


def test_server_restarts_at_once_and_the_port_stays_closed():
    with portreserve.reserve(1) as res:
        for round_ in range(3):
            server = res.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.listen()  # at once, TIME_WAIT of the round before or not
            _serve_once(server, ("127.0.0.1", res.start))
            server.close()
            assert "held" in repr(res)
            assert nobody_takes(res.start)


@pytest.mark.parametrize("family, host", [(socket.AF_INET6, ""), (socket.AF_INET, "127.0.0.1")])
def test_own_server_socket_restarts_from_the_reservation(family, host):
    # The user's own socket: held again at the next call, TIME_WAIT and all
    # (SO_REUSEADDR, held back until listen(), still reaches the TIME_WAIT
    # connections, and the next bind and listen() get past them).
    with portreserve.reserve(1) as res:
        for round_ in range(3):
            server = socket.socket(family)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            assert res.bind(server, host) == res.start
            server.listen()
            _serve_once(server, (host or "::1", res.start))
            server.close()
            res.socket().close()  # the next call holds it again
            assert nobody_takes(res.start)


# ---- 7: runtime inside persistent -------------------------------------------

@as_root
def test_specific_runtime_request_over_a_persistent_block_conflicts(tmp_path):
    os.chmod(tmp_path, 0o700)
    out = in_netns(f"""
        import os
        os.environ["PORTRESERVE_STATE_DIR"] = {str(tmp_path)!r}
        import portreserve
        token = portreserve.create_persistent(50000, 2)
        for start, count in ((50000, 1), (50001, 1), (49999, 2), (49990, 20)):
            for protocol in ("tcp", "udp"):
                try:
                    portreserve.reserve(count, start=start, protocol=protocol)
                    print("granted", start, count, protocol)
                except portreserve.ReservationConflict as exc:
                    assert exc.errno == 98 and exc.winerror == 10048
                    assert "50000" in str(exc), exc
        portreserve.reserve(1, start=50002).release()  # beside it: fine
        print("ok")
    """)
    assert out.split() == ["ok"], out


# ---- 9: host errors ---------------------------------------------------------

def _check(exc_info, cls, err, winerror, host):
    exc = exc_info.value
    assert type(exc) is cls, exc
    assert (exc.errno, exc.winerror) == (err, winerror), exc
    assert repr(host) in str(exc), exc


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_host_errors_name_the_host_and_change_nothing(protocol):
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with portreserve.reserve(1, protocol=protocol) as res:
        with socket.socket(socket.AF_INET, kind) as s:
            with pytest.raises(InvalidParameter) as info:
                res.bind(s, "::1")
            _check(info, InvalidParameter, errno.EINVAL, 10022, "::1")
            with pytest.raises(PortReservationError) as info:
                res.bind(s, "192.0.2.1")
            _check(info, PortReservationError, errno.EADDRNOTAVAIL, 10049, "192.0.2.1")
            with pytest.raises(PortReservationError) as info:
                portreserve.bind(s, res.token, "192.0.2.1")
            _check(info, PortReservationError, errno.EADDRNOTAVAIL, 10049, "192.0.2.1")
            assert s.getsockname()[1] == 0
        try:
            socket.getaddrinfo("localhost", None, socket.AF_INET6)
            v6_localhost = True
        except socket.gaierror:
            v6_localhost = False
        if not v6_localhost:
            with socket.socket(socket.AF_INET6, kind) as s:
                with pytest.raises(InvalidParameter) as info:
                    res.bind(s, "localhost")
                _check(info, InvalidParameter, errno.EINVAL, 10022, "localhost")
        with pytest.raises(InvalidParameter) as info:
            res.socket(12345)
        assert "12345" in str(info.value)
        # nothing was used up
        s = res.socket()
        assert s.getsockname()[1] == res.start
        s.close()


# ---- issue 16: interrupts, threads, failed binds, options -------------------

INTERRUPTED = """
import gc, os, random, signal, socket, sys
import portreserve

def fds():
    return len(os.listdir("/proc/self/fd"))

def interrupt(*_):
    raise KeyboardInterrupt

kept = []
def cycle(i):
    res = portreserve.reserve(3 + i % 3, protocol=("tcp", "udp")[i % 2])
    kept.append(res)
    s = res.socket()
    kept.append(s)
    u = socket.socket(socket.AF_INET6, res.protocol.socket_type)
    kept.append(u)
    res.bind(u)
    w = socket.socket(socket.AF_INET, res.protocol.socket_type)
    kept.append(w)
    portreserve.bind(w, res.token, "127.0.0.1")
    s.close()
    u.close()
    w.close()
    res.socket().close()
    res.release()
    one = portreserve.reserve(1)  # the single-port path moves holders without a signal section
    kept.append(one)
    t = one.socket()
    kept.append(t)
    if i % 2:
        t.listen()
    t.close()
    one.release()
    big = portreserve.reserve(64)  # long loops of holders made and closed
    kept.append(big)
    big.release()

import time
began = time.perf_counter()
for i in range(50):  # warm up: imports, caches; and how long a cycle takes
    cycle(i)
span = (time.perf_counter() - began) / 50
kept.clear()
gc.collect()
base = fds()
rng = random.Random({seed})
hits = 0
signal.signal(signal.SIGALRM, interrupt)
for i in range({rounds}):
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, span))  # one shot, anywhere in the cycle
            cycle(i)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except KeyboardInterrupt:
        hits += 1
signal.signal(signal.SIGALRM, signal.SIG_DFL)
for obj in kept:
    obj.close()
kept.clear()
gc.collect()
print(hits, base, fds())
"""


def test_interrupts_at_random_points_leave_no_descriptor_behind():
    result = run_python(INTERRUPTED.format(seed=random.randrange(1 << 30), rounds=1500),
                        timeout=300)
    assert result.returncode == 0, result.stderr
    hits, base, after = map(int, result.stdout.split())
    assert hits > 50, "the timer hardly ever struck inside a cycle"
    assert after == base


def test_two_threads_releasing_one_reservation_exactly_one_wins():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can
    try:
        _release_race()
    finally:
        sys.setswitchinterval(interval)


def _release_race():
    for _ in range(200):
        res = portreserve.reserve(2)
        barrier = threading.Barrier(2)
        outcomes = []

        def release():
            barrier.wait()
            try:
                res.release()
                outcomes.append("ok")
            except InvalidParameter:
                outcomes.append("invalid")

        threads = [threading.Thread(target=release) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["invalid", "ok"]


IP_LOCAL_PORT_RANGE = 51


@pytest.mark.parametrize("host", ["", "192.0.2.1"])
def test_failed_bind_by_token_leaves_the_socket_unchanged(host):
    with portreserve.reserve(1) as res:
        held = res.socket()
        with socket.socket(socket.AF_INET) as s:
            with pytest.raises(PortReservationError):
                portreserve.bind(s, res.token, host)  # exhausted, or a bad host
            assert s.getsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE) == 0
            s.bind(("127.0.0.1", 0))  # a plain bind works as on any socket
            assert s.getsockname()[1] not in res.ports
        with socket.socket(socket.AF_INET) as s:
            lowlevel.bind_associated(s, ("127.0.0.1", 0))  # not associated: plain
        held.close()


def _options(sock):
    names = [
        (socket.SOL_SOCKET, socket.SO_RCVTIMEO), (socket.SOL_SOCKET, socket.SO_SNDTIMEO),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.SOL_SOCKET, socket.SO_PRIORITY),
        (socket.SOL_SOCKET, socket.SO_LINGER),
        (socket.SOL_SOCKET, 25),  # SO_BINDTODEVICE
        (socket.IPPROTO_IP, socket.IP_TOS), (socket.IPPROTO_IP, socket.IP_TTL),
        (socket.IPPROTO_IP, 15),  # IP_FREEBIND
        (socket.IPPROTO_IPV6, socket.IPV6_TCLASS), (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
        (socket.IPPROTO_TCP, socket.TCP_MAXSEG), (socket.IPPROTO_TCP, socket.TCP_CONGESTION),
        (socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT), (socket.IPPROTO_TCP, socket.TCP_FASTOPEN),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        (socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT),
    ]
    if ROOT:
        names.append((socket.IPPROTO_IP, 19))  # IP_TRANSPARENT
    return {(level, name): sock.getsockopt(level, name, 64) for level, name in names}


def test_hand_off_keeps_every_option_the_user_set():
    with portreserve.reserve(1) as res:
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.SOL_SOCKET, 25, b"lo")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, b"\x02" + bytes(15))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, b"\x03" + bytes(15))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 17)
        s.setsockopt(socket.IPPROTO_IP, 15, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0x20)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 9)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 8)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 9000)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 4096)
        if ROOT:
            s.setsockopt(socket.IPPROTO_IP, 19, 1)
        wanted = _options(s)
        assert len(wanted) == 19 + ROOT
        assert res.bind(s) == res.start
        assert _options(s) == wanted
        # ... but SO_REUSEADDR, held back until the socket listens
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        s.listen()
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        s.close()


# ---- a fresh user's findings on Reservation.socket() ------------------------

def assert_held_again(res):
    """The one-port reservation hands out its port again, and keeps it closed."""
    again = res.socket()
    assert again.getsockname()[1] == res.start
    again.close()
    assert nobody_takes(res.start)


CLOSE_INTERRUPTED = """
import os, random, signal, time
import portreserve

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt)
before = set(os.listdir("/proc/self/fd"))
rng = random.Random({seed})
hits = 0
for _ in range(2000):
    res = portreserve.reserve(1)
    s = res.socket()
    try:
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-5))
        s.close()
        time.sleep(1e-4)
    except KeyboardInterrupt:
        hits += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    s.close()  # again, as a user would after the interrupt
    res.close()
print(hits, len(set(os.listdir("/proc/self/fd")) - before))
"""


def test_close_interrupted_and_called_again_leaves_nothing():
    result = run_python(CLOSE_INTERRUPTED.format(seed=random.randrange(1 << 30)), timeout=300)
    assert result.returncode == 0, result.stderr
    hits, left = map(int, result.stdout.split())
    assert hits > 20, "the timer hardly ever struck"
    assert left == 0


def test_collected_listening_socket_stops_listening_at_once():
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.listen()
        del s
        gc.collect()
        with socket.socket() as probe:  # no call on the reservation since
            assert probe.connect_ex(("127.0.0.1", res.start)) == errno.ECONNREFUSED
        assert nobody_takes(res.start)


REUSEPORT_ONLY = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, {addr})
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("::1", {port}))
    print("bound")
except OSError as exc:
    print(exc.errno)
"""


@as_root
def test_reuse_options_of_a_handed_back_socket_leave_no_opening_in_the_kernel_cache():
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # As the user chose: while it is set, others who set it share the port.
        beside = run_python(REUSEPORT_ONLY.format(addr=1, port=res.start), user=NOBODY)
        assert beside.stdout.strip() == "bound", beside.stderr
        s.close()
        after = run_python(REUSEPORT_ONLY.format(addr=0, port=res.start), user=NOBODY)
        assert after.stdout.strip() == str(errno.EADDRINUSE), after.stderr
        assert nobody_takes(res.start)


def test_a_dup_of_the_held_socket_keeps_listening_and_the_port_comes_back_after():
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.listen()
        copy = s.dup()
        s.close()  # the copy still serves: nothing is undone under it
        with socket.create_connection(("127.0.0.1", res.start), timeout=5):
            copy.accept()[0].close()
        with pytest.raises(portreserve.ReservationExhausted):
            res.socket()
        copy.close()
        assert_held_again(res)  # once the copy is closed too


def test_detached_holder_is_held_again_once_its_descriptor_is_closed():
    # ssl's wrap_socket() detaches the socket it wraps; closing the TLS
    # socket must not leave the reservation without its port for good.
    with portreserve.reserve(1) as res:
        s = res.socket()
        s.listen()
        fd = s.detach()
        with pytest.raises(portreserve.ReservationExhausted):
            res.socket()
        assert nobody_takes(res.start)  # the caller's socket holds it
        os.close(fd)
        assert_held_again(res)
