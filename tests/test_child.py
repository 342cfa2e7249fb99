"""Handing reserved ports to code that binds them itself (docs/API.md 1b): child
processes by number and by socket activation, `portreserve run`, and the
in-process hand-off.

The race tests start a hammer first: another process (our uid, and uid 65534
as root) that binds the port in a loop on every address with every reuse
option.  Then the child starts up, binds the port by number and serves a
request, and exits; the hammer must never have won, and afterwards the port
is held by the reservation again.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import portreserve
from portreserve import _child

from helpers import LINUX, ROOT, _python_for, can_bind, open_fds

pytestmark = pytest.mark.skipif(not LINUX, reason="the Linux hand-off")
NOBODY = 65534
HERE = Path(__file__).parent
README = HERE.parent / "README.md"

# Binds the port on every address with every reuse option, over and over,
# until SIGUSR1 comes (or the bounds run out).  Prints WON for any bind (and
# listen, for TCP) that succeeded.
HAMMER = r"""
import signal, socket, sys, time
port, udp = int(sys.argv[1]), sys.argv[2] == "udp"
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
targets = [(socket.AF_INET, "0.0.0.0", None), (socket.AF_INET, "127.0.0.1", None),
           (socket.AF_INET6, "::", 0), (socket.AF_INET6, "::", 1), (socket.AF_INET6, "::1", 1)]
options = [(), (socket.SO_REUSEADDR,), (socket.SO_REUSEPORT,),
           (socket.SO_REUSEADDR, socket.SO_REUSEPORT)]
print("ready", flush=True)
rounds, deadline = 0, time.monotonic() + 120
while rounds < 100000 and time.monotonic() < deadline:
    rounds += 1
    done = bool(stop)
    for family, host, v6only in targets:
        for opts in options:
            s = socket.socket(family, kind)
            try:
                if v6only is not None:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
                for o in opts:
                    s.setsockopt(socket.SOL_SOCKET, o, 1)
                s.bind((host, port))
                if not udp:
                    s.listen()
                print("WON", host, v6only, opts, flush=True)
            except OSError:
                pass
            finally:
                s.close()
    if done:
        break
    time.sleep(0.001)  # leave the machine's cores some room for the server
print("rounds", rounds, flush=True)
"""


class Hammer:
    """Hammer processes (our uid, and uid 65534 when we are root)."""

    def __init__(self, tmp_path: Path, port: int, protocol: str = "tcp") -> None:
        users = [None, NOBODY] if ROOT else [None]
        self.procs = []
        for user in users:
            kwargs = {"user": user, "group": user, "extra_groups": []} if user else {}
            proc = subprocess.Popen([_python_for(user), "-c", HAMMER, str(port), protocol],
                                    stdout=subprocess.PIPE, text=True, **kwargs)
            self.procs.append(proc)
            assert proc.stdout.readline() == "ready\n"

    def finish(self) -> None:
        """Stop them and check that none ever bound the port."""
        for proc in self.procs:
            proc.send_signal(signal.SIGUSR1)
        for proc in self.procs:
            out, _ = proc.communicate(timeout=150)
            assert "WON" not in out, out
            assert re.search(r"rounds [1-9]", out), out


def serves(port: int, proc: subprocess.Popen | None = None, host: str = "127.0.0.1") -> bytes:
    """The first bytes an HTTP GET on (host, port) returns, retrying while the
    server starts (bounded)."""
    for _ in range(300):
        try:
            with socket.create_connection((host, port), timeout=5) as c:
                c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                return c.recv(64)
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}")
            time.sleep(0.05)
    raise AssertionError(f"nothing serves on port {port}")


def held_again(res: portreserve.Reservation) -> None:
    """Every port is blocked for others and every port can be handed out."""
    for port in res.ports:
        assert not can_bind(port, host="0.0.0.0")
        assert not can_bind(port, host="::1", reuse=True)
    socks = [res.socket(socket.AF_INET6) for _ in res.ports]
    assert sorted(s.getsockname()[1] for s in socks) == list(res.ports)
    for s in socks:
        s.close()


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    return proc.wait(timeout=30)


SERVERS = {
    "python -m http.server": lambda d: [sys.executable, "-m", "http.server", "{port}",
                                        "--directory", d],
    "python http.server on [::]": lambda d: [sys.executable, "-m", "http.server", "{port}",
                                             "--bind", "::", "--directory", d],
    "busybox httpd": lambda d: ["busybox", "httpd", "-f", "-p", "{port}", "-h", d],
    "socat on 127.0.0.1": lambda d: ["socat", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                                     "SYSTEM:echo HTTP/1.0 200 OK; exec cat >/dev/null"],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_child_by_number_race(server, tmp_path):
    args = SERVERS[server](str(tmp_path))
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed (apt-get install {args[0]})")
    (tmp_path / "index.html").write_text("hello")
    with portreserve.reserve(1) as res:
        hammer = Hammer(tmp_path, res.start)
        child = res.popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert serves(res.start, child).startswith(b"HTTP/1.")
        stop(child)
        hammer.finish()
        held_again(res)


@pytest.mark.parametrize("host", ["::", "127.0.0.1"])
def test_child_bound_before_listen_is_closed(host):
    """Between the child's bind() and its listen(), with SO_REUSEADDR set as
    servers do, no other process can bind the port, with any option."""
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.socket(socket.AF_INET6 if ":" in {host!r} else socket.AF_INET)
        if ":" in {host!r}:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(({host!r}, int(sys.argv[1])))
        print("bound", flush=True)
        sys.stdin.readline()
        s.listen()
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        print("listening", flush=True)
        sys.stdin.readline()
    """)
    with portreserve.reserve(1) as res:
        child = res.popen([sys.executable, "-c", code, "{port}"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "bound\n"
        for other in ("0.0.0.0", "127.0.0.1", "::", "::1"):
            assert not can_bind(res.start, host=other, reuse=True)
            assert not can_bind(res.start, host=other)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "listening\n"
        assert not can_bind(res.start, host="0.0.0.0", reuse=True)
        child.stdin.close()
        assert child.wait(timeout=30) == 0
        held_again(res)


def test_child_not_binding_and_grandchildren(tmp_path):
    """A child that binds one port of two and starts grandchildren (fork and
    fork+exec with every descriptor inherited): they hold none of the ports,
    and once the child exits both ports are the reservation's again."""
    child_code = textwrap.dedent("""
        import os, socket, subprocess, sys, time
        report = '''
        import os, socket, sys
        lo, hi = map(int, os.environ["PORTRESERVE_PORTS"].split("-"))
        held = []
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            if lo <= s.getsockname()[1] <= hi:
                held.append(s.getsockname()[1])
            s.close()
        print("grandchild", held, os.environ.get("PORTRESERVE_PRELOAD"),
              "_preload" in os.environ.get("LD_PRELOAD", ""), flush=True)
        '''
        srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
        subprocess.run([sys.executable, "-c", report], close_fds=False, check=True)
        pid = os.fork()
        if pid == 0:
            os.execv(sys.executable, [sys.executable, "-c", report])
        os.waitpid(pid, 0)
        # one that outlives the child
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"],
                         close_fds=False, stdout=subprocess.DEVNULL)
        print("child done", flush=True)
    """)
    with portreserve.reserve(2) as res:
        child = res.popen([sys.executable, "-c", child_code, "{port1}"],
                          stdout=subprocess.PIPE, text=True)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        assert out.count("grandchild [] None False") == 2, out
        assert "child done" in out
        held_again(res)


def test_listen_fds_python_child_race(tmp_path):
    """The child adopts descriptors 3 and 4 as the protocol says."""
    code = textwrap.dedent("""
        import os, socket, sys
        from http.server import HTTPServer, BaseHTTPRequestHandler
        assert os.environ["LISTEN_PID"] == str(os.getpid()), os.environ["LISTEN_PID"]
        n = int(os.environ["LISTEN_FDS"])
        names = os.environ["LISTEN_FDNAMES"].split(":")
        socks = [socket.socket(fileno=3 + i) for i in range(n)]
        assert [str(s.getsockname()[1]) for s in socks] == names
        assert [s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in socks] == [1] * n
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"fd")
        srv = HTTPServer(("", 0), H, bind_and_activate=False)
        srv.socket.close()
        srv.socket = socks[1]
        srv.serve_forever()
    """)
    with portreserve.reserve(2) as res:
        hammer = Hammer(tmp_path, res.start + 1)
        child = res.popen([sys.executable, "-c", code], listen_fds=True)
        assert serves(res.start + 1, child).startswith(b"HTTP/1.0 200")
        assert stop(child) == -signal.SIGTERM
        hammer.finish()
        held_again(res)


def test_listen_fds_uvicorn(tmp_path):
    pytest.importorskip("uvicorn")
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"uvicorn"})
    """))
    with portreserve.reserve(1) as res:
        hammer = Hammer(tmp_path, res.start)
        child = res.popen([sys.executable, "-m", "uvicorn", "--fd", "3", "app:app"],
                          listen_fds=True, cwd=tmp_path, stderr=subprocess.DEVNULL)
        assert serves(res.start, child).startswith(b"HTTP/1.1 200")
        stop(child)
        hammer.finish()
        held_again(res)


def test_run_from_a_shell_race(tmp_path):
    """`portreserve run` started by a shell; the child waits for our signal,
    then execs a server that binds the port by number."""
    go = tmp_path / "go"
    start = portreserve.reserve(1)
    port = start.start
    start.close()
    script = (f"while [ ! -e {go} ]; do sleep 0.05; done; "
              f"exec {sys.executable} -m http.server {{port}} --directory {tmp_path}")
    shell = subprocess.Popen(
        f"exec {sys.executable} -m portreserve run --start {port} -- sh -c '{script}'",
        shell=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    for _ in range(200):  # until run holds the port
        if not can_bind(port, host="0.0.0.0"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("portreserve run never held the port")
    hammer = Hammer(tmp_path, port)
    go.touch()
    assert serves(port, shell).startswith(b"HTTP/1.0")
    hammer.finish()  # before run exits: then it releases the port
    shell.send_signal(signal.SIGTERM)  # forwarded to the server
    assert shell.wait(timeout=30) == 128 + signal.SIGTERM
    assert can_bind(port, host="0.0.0.0")  # released with run


def test_run_exit_status_and_placeholders():
    code = ("import os, sys; print(sys.argv[1:], os.environ['PORT'], "
            "os.environ['PORTRESERVE_PORTS']); sys.exit(7)")
    out = subprocess.run([sys.executable, "-m", "portreserve", "run", "--count", "2", "--",
                          sys.executable, "-c", code, "{port}", "--x={port1}", "{x}", "{}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 7, out.stderr
    m = re.fullmatch(r"\['(\d+)', '--x=(\d+)', '\{x\}', '\{\}'\] (\d+) (\d+)-(\d+)\n", out.stdout)
    assert m, out.stdout
    first, second, port, lo, hi = map(int, m.groups())
    assert second == first + 1 and port == lo == first and hi == second


def test_only_canonical_placeholders_are_replaced():
    """{port}, {port0}, {port1}...: decimal indexes without leading zeros.
    Any other spelling ({port01}, {port00}, other digits) is text, left as
    it is, as every other text with braces (docs/API.md 1b)."""
    args = ["{port01}", "{port00}", "{port1}", "{port0}", "{port}", "{port\u0661}",
            "--x={port01}:{port1}", "{port+1}", "{port 1}"]
    code = "import sys; print(sys.argv[1:])"
    out = subprocess.run([sys.executable, "-m", "portreserve", "run", "--count", "2", "--",
                          sys.executable, "-c", code, *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = eval(out.stdout)
    first, second = int(got[3]), int(got[2])
    assert second == first + 1 and got[4] == str(first)
    assert got == ["{port01}", "{port00}", str(second), str(first), str(first), "{port\u0661}",
                   f"--x={{port01}}:{second}", "{port+1}", "{port 1}"]
    assert _child.substitute("{port10}x{port010}", list(range(11))) == "10x{port010}"


def test_cli_version_and_reserve_says_released():
    out = subprocess.run([sys.executable, "-m", "portreserve", "--version"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == f"portreserve {portreserve.__version__}"
    out = subprocess.run([sys.executable, "-m", "portreserve", "reserve", "1"],
                         capture_output=True, text=True)
    assert "released" in out.stderr and "portreserve run" in out.stderr
    out = subprocess.run([sys.executable, "-m", "portreserve", "reserve", "--help"],
                         capture_output=True, text=True)
    assert "released" in out.stdout and "portreserve run" in out.stdout


def test_bad_placeholder_changes_nothing():
    with portreserve.reserve(2) as res:
        before = open_fds()
        with pytest.raises(portreserve.InvalidParameter, match=r"\{port2\}"):
            res.popen(["true", "{port2}"])
        with pytest.raises(FileNotFoundError):
            res.popen(["no-such-program-here", "{port}"])
        assert open_fds() == before
        held_again(res)
    with pytest.raises(portreserve.InvalidParameter):
        res.popen(["true"])


def test_udp_child_by_number(tmp_path):
    code = textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", int(sys.argv[1])))
        data, peer = s.recvfrom(100)
        s.sendto(data.upper(), peer)
    """)
    with portreserve.reserve(1, protocol="udp") as res:
        hammer = Hammer(tmp_path, res.start, "udp")
        child = res.popen([sys.executable, "-c", code, "{port}"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(0.2)
            for _ in range(100):
                c.sendto(b"ping", ("127.0.0.1", res.start))
                try:
                    assert c.recv(100) == b"PING"
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("no answer")
        assert child.wait(timeout=30) == 0
        hammer.finish()
        for port in res.ports:
            assert not can_bind(port, udp=True)


def test_released_fallback_still_gives_the_port(monkeypatch):
    """Where the preload library cannot apply, the child still gets the port
    (released just before it starts) and the port is held again after."""
    monkeypatch.setattr(_child, "preload_library", lambda: None)
    with portreserve.reserve(1) as res:
        child = res.popen([sys.executable, "-m", "http.server", "{port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert serves(res.start, child).startswith(b"HTTP/1.0")
        stop(child)
        held_again(res)


def test_static_and_setuid_programs_are_detected(tmp_path):
    assert _child._dynamic(sys.executable)
    assert _child._dynamic("/bin/sh")
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n")
    assert _child._dynamic(str(script))
    assert not _child._dynamic(str(tmp_path))
    data = tmp_path / "d"
    data.write_bytes(b"\x7fELF" + bytes(60))
    assert not _child._dynamic(str(data))
    copy = tmp_path / "suid"
    shutil.copy(sys.executable, copy)
    os.chmod(copy, 0o4755)
    assert not _child._dynamic(str(copy))


# ---- in this process ---------------------------------------------------------

def test_handoff_http_server_and_create_server():
    from http.server import BaseHTTPRequestHandler, HTTPServer
    with portreserve.reserve(2) as res:
        with pytest.raises(OSError):
            socket.create_server(("", res.start))  # without the hand-off
        with res.handoff() as same:
            assert same is res
            with res.handoff():  # re-entrant
                srv = HTTPServer(("", res.start), BaseHTTPRequestHandler)
            other = socket.create_server(("::", res.start + 1), family=socket.AF_INET6,
                                         dualstack_ipv6=True)
            unrelated = socket.create_server(("127.0.0.1", 0))  # untouched
        assert srv.server_address[1] == res.start
        assert not can_bind(res.start + 1, host="0.0.0.0", reuse=True)
        assert socket.socket.bind is socket.socket.__mro__[1].bind  # patch removed
        srv.server_close()
        other.close()
        unrelated.close()
        again = [res.socket(socket.AF_INET6) for _ in res.ports]  # both ports come back
        assert not can_bind(res.start, host="0.0.0.0")
        for s in again:
            s.close()


@pytest.mark.parametrize("host", ["", "::", "127.0.0.1"])
def test_handoff_bound_before_listen_is_closed(host):
    """A server socket with SO_REUSEADDR (as socketserver and asyncio set it)
    bound through handoff(): until it listens nobody else can bind the port,
    and once it listens it has SO_REUSEADDR again."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with portreserve.reserve(1) as res, res.handoff():
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, res.start))
        # the addresses the socket covers (an IPv4 one leaves IPv6 to the
        # engine's rules: README, "What is enforced")
        covered = {"::": ("0.0.0.0", "127.0.0.1", "::1"), "": ("0.0.0.0", "127.0.0.1"),
                   "127.0.0.1": ("127.0.0.1",)}[host]
        for other in covered:
            assert not can_bind(res.start, host=other, reuse=True)
        s.listen()
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not can_bind(res.start, host="127.0.0.1", reuse=True)
        s.close()


def test_handoff_asyncio_and_threads():
    import threading
    with portreserve.reserve(4) as res, res.handoff():
        async def main():
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", res.start)
            port = server.sockets[0].getsockname()[1]
            server.close()
            await server.wait_closed()
            return port
        assert asyncio.run(main()) == res.start
        got, errors = [], []

        def bind_one(port):
            try:
                s = socket.socket(socket.AF_INET6)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::", port))
                got.append(s)
            except OSError as exc:
                errors.append(exc)
        threads = [threading.Thread(target=bind_one, args=(p,)) for p in res.ports[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(got) == 3
        for s in got:
            s.close()


# ---- README recipes ----------------------------------------------------------

def _recipes() -> list[str]:
    text = README.read_text()
    section = text.split("## Giving the port to the code that needs it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(len(_recipes())))
def test_readme_recipe(index, tmp_path):
    recipe = _recipes()[index]
    if "uvicorn" in recipe:
        pytest.importorskip("uvicorn")
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hi"})
    """))
    out = subprocess.run([sys.executable, "-c", recipe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not ROOT, reason="needs root to run the parent as another uid")
def test_child_by_number_as_another_user():
    """As a user without CAP_CHOWN a child binding 127.0.0.1 still gets the
    port and serves; a process of that uid without SO_REUSEPORT is kept out
    (with it, it could share the port: README's platform table)."""
    src = str(Path(portreserve.__file__).parent.parent)
    code = f"""
        import socket, subprocess, sys, time
        sys.path.insert(0, {src!r})
        try:
            import portreserve
        except ImportError as exc:
            print("cannot import", exc); sys.exit(0)
        res = portreserve.reserve(1)
        p = res.popen([sys.executable, "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", res.start), timeout=5) as c:
                    c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                    print(c.recv(12).decode())
                    break
            except OSError:
                time.sleep(0.05)
        for host in ("0.0.0.0", "127.0.0.1", "::"):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, res.start)); print("BOUND", host)
            except OSError:
                pass
            s.close()
        p.terminate(); p.wait()
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", res.start)); print("BOUND after exit")
        except OSError:
            pass
    """
    from helpers import run_python
    out = run_python(code, user=NOBODY)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("cannot import"):
        pytest.skip(out.stdout)
    assert out.stdout.startswith("HTTP/1.0 200"), out.stdout + out.stderr
    assert "BOUND" not in out.stdout, out.stdout


def test_child_by_number_with_preexec_fn(tmp_path):
    # subprocess runs the fork hooks in the child when given a preexec_fn:
    # the holders lent to the child must still reach its exec.
    (tmp_path / "index.html").write_text("hello")
    with portreserve.reserve(1) as res:
        child = res.popen(SERVERS["python -m http.server"](str(tmp_path)),
                          preexec_fn=os.setpgrp,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert serves(res.start, child).startswith(b"HTTP/1.")
        assert not can_bind(res.start, host="0.0.0.0", reuse=True)
        stop(child)
        held_again(res)


@pytest.mark.parametrize("command, status", [("/nonexistent-program", 127), ("/etc/passwd", 126)])
def test_run_of_a_command_that_cannot_start(command, status):
    # The shell's statuses and one line, as every other error of the command.
    out = subprocess.run([sys.executable, "-m", "portreserve", "run", "--", command],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == status, out.stderr
    assert out.stderr.startswith(f"portreserve: run: {command}: ") and out.stderr.count("\n") == 1


def test_handoff_of_a_released_reservation_is_refused():
    res = portreserve.reserve(1)
    res.release()
    with pytest.raises(portreserve.InvalidParameter, match="released"):
        with res.handoff():
            pass
    assert "_bind" not in repr(socket.socket.bind)  # Python's own bind is back
