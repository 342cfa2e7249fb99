"""The pytest plugin (docs/API.md section 5), checked by running real pytest
sessions with pytester and pytest-xdist against the real kernel.

Each inner suite writes what it saw to files; the outer test then checks
from other processes that the ports were held during the test and are free
after it, and counts what teardown left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import LINUX, can_bind, netns_prefix, open_fds

pytestmark = pytest.mark.skipif(not LINUX, reason="the proofs read Linux's /proc")
pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).parent
FIXTURES = ["reservation", "reserved_tcp_port", "reserved_udp_port", "reserved_tcp_socket",
            "reserved_udp_socket", "reserved_popen"]

# A child that binds the number it is given by itself, says "ready", then
# serves its pid to each connection until it is terminated.
SERVER = """
import os, socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    conn.sendall(str(os.getpid()).encode())
    conn.close()
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    """pytester with tests/ importable (helpers.py) and a file for results."""
    path = [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    pytester.syspathinsert(TESTS_DIR)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    out = pytester.path / "seen.json"
    monkeypatch.setenv("SEEN", str(out))
    return pytester


def seen(pytester) -> list:
    """What the inner tests recorded (one JSON document per line)."""
    path = pytester.path / "seen.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


RECORD = """
import json, os
def record(**what):
    with open(os.environ["SEEN"], "a") as f:
        f.write(json.dumps(what) + "\\n")
"""


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: its descriptors are closed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def children_of_this_process() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def test_fixtures_are_registered_and_p_no_disables_them(suite):
    result = suite.runpytest_subprocess("--fixtures")
    listed = result.stdout.str()
    for name in FIXTURES:
        assert re.search(rf"^{name}\b", listed, re.M), name
    suite.makepyfile(test_one="def test_port(reserved_tcp_port):\n"
                              "    assert reserved_tcp_port > 0\n")
    suite.runpytest_subprocess().assert_outcomes(passed=1)
    result = suite.runpytest_subprocess("-p", "no:portreserve")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'reserved_tcp_port' not found*"])


def test_plugin_imports_nothing_at_load():
    # The entry point loads portreserve.pytest_plugin; the fixtures import
    # the rest when a test first asks for one.
    code = """
        import sys, pytest, portreserve
        before = set(sys.modules)
        import portreserve.pytest_plugin
        print(sorted(set(sys.modules) - before))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['portreserve.pytest_plugin']"


@pytest.mark.parametrize("outcome", ["pass", "fail", "error"])
def test_reservation_factory_holds_then_releases(suite, outcome):
    suite.makepyfile(RECORD + f"""
import pytest
from helpers import can_bind

def test_factory(reservation):
    tcp = reservation(3)
    udp = reservation(2, protocol="udp")
    record(tcp=list(tcp.ports), udp=list(udp.ports))
    assert all(not can_bind(p) and not can_bind(p, host="::") for p in tcp.ports)
    assert all(not can_bind(p, udp=True) for p in udp.ports)
    with pytest.raises(LookupError):
        reservation.of(tcp.start)
    if {outcome!r} == "fail":
        assert False, "the test fails"
    if {outcome!r} == "error":
        raise RuntimeError("the test breaks")
""")
    result = suite.runpytest_subprocess()
    result.assert_outcomes(**{"passed" if outcome == "pass" else "failed": 1})
    [what] = seen(suite)
    assert all(can_bind(p) for p in what["tcp"])
    assert all(can_bind(p, udp=True) for p in what["udp"])


def test_port_fixtures_serve_this_process_only(suite):
    suite.makepyfile(RECORD + """
import asyncio, http.server, socket, threading, urllib.request
from helpers import can_bind

def test_tcp(reserved_tcp_port, reservation):
    port = reserved_tcp_port
    assert type(port) is int
    record(tcp=port)
    # Nobody else can take it, on any address, whatever options they set.
    for host in ("0.0.0.0", "127.0.0.1", "::", "::1"):
        assert not can_bind(port, host=host)
    assert not can_bind(port, host="::", reuse=True)
    # This process binds the number and gets it, again after a restart.
    for _ in range(2):
        with socket.create_server(("127.0.0.1", port)) as srv:
            assert srv.getsockname()[1] == port
            assert not can_bind(port, host="127.0.0.1", reuse=True)
    # asyncio, on the wildcard address.
    async def serve():
        server = await asyncio.start_server(lambda r, w: w.close(), port=port)
        async with server:
            assert {s.getsockname()[1] for s in server.sockets} == {port}
    asyncio.run(serve())
    # http.server last: its exchange leaves the port in TIME_WAIT, through
    # which a later hand-off does not go (the engine's rule, README).
    handler = http.server.SimpleHTTPRequestHandler
    with http.server.HTTPServer(("127.0.0.1", port), handler) as srv:
        assert srv.server_address[1] == port
        thread = threading.Thread(target=srv.handle_request)
        thread.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            assert reply.status == 200
        thread.join()
        assert not can_bind(port, host="127.0.0.1", reuse=True)
    assert reservation.of(port).start == port

def test_udp(reserved_udp_port):
    port = reserved_udp_port
    record(udp=port)
    assert not can_bind(port, udp=True) and not can_bind(port, host="::", udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.sendto(b"ping", ("127.0.0.1", port))
        assert sock.recv(8) == b"ping"
        assert not can_bind(port, host="0.0.0.0", udp=True, reuse=True)
""")
    suite.runpytest_subprocess().assert_outcomes(passed=2)
    what = {k: v for d in seen(suite) for k, v in d.items()}
    # SO_REUSEADDR: the HTTP exchange left a TIME_WAIT entry on the port.
    assert can_bind(what["tcp"], reuse=True) and can_bind(what["tcp"], host="::", reuse=True)
    assert can_bind(what["udp"], udp=True)


def test_socket_fixtures_are_bound_not_listening(suite):
    suite.makepyfile(RECORD + """
import socket
from helpers import can_bind

def test_sockets(reserved_tcp_socket, reserved_udp_socket):
    tcp, udp = reserved_tcp_socket, reserved_udp_socket
    assert tcp.type == socket.SOCK_STREAM and udp.type == socket.SOCK_DGRAM
    assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    record(tcp=tcp.getsockname()[1], udp=udp.getsockname()[1])
    assert not can_bind(tcp.getsockname()[1], host="::")
    assert not can_bind(udp.getsockname()[1], host="::", udp=True)
    tcp.listen()
    with socket.create_connection(("127.0.0.1", tcp.getsockname()[1]), timeout=30):
        pass
""")
    suite.runpytest_subprocess().assert_outcomes(passed=1)
    [what] = seen(suite)
    # Closed and released: the ports are free (no connection was accepted,
    # so nothing lingers in TIME_WAIT on the listening side's port).
    assert can_bind(what["udp"], udp=True)
    assert can_bind(what["tcp"], reuse=True)


CHILD_TESTS = RECORD + f"""
import select, signal, socket, subprocess, sys
import pytest
from helpers import can_bind

SERVER = {SERVER!r}

def fetch(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        data = conn.recv(64)
        # Close with a reset: no TIME_WAIT entry outlives the test on the port.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\1\\0\\0\\0\\0\\0\\0\\0")
        return data

def started(proc):
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready and proc.stdout.readline() == b"ready\\n", proc.poll()

def test_child_by_number(reserved_popen):
    proc, res = reserved_popen([sys.executable, "-c", SERVER, "{{port}}"], stdout=subprocess.PIPE)
    record(pid=proc.pid, port=res.start)
    started(proc)
    assert fetch(res.start) == str(proc.pid).encode()
    assert not can_bind(res.start, host="::", reuse=True)

def test_child_gets_reserved_tcp_port(reserved_tcp_port, reserved_popen, reservation):
    # The number in the command line, as a suite moving from unused_tcp_port writes it.
    proc, res = reserved_popen([sys.executable, "-c", SERVER, str(reserved_tcp_port)],
                               stdout=subprocess.PIPE)
    assert res is reservation.of(reserved_tcp_port)
    record(pid=proc.pid, port=reserved_tcp_port)
    started(proc)
    assert fetch(reserved_tcp_port) == str(proc.pid).encode()
    # Not named in the command line: a block of its own.
    other, block = reserved_popen([sys.executable, "-c", SERVER, "{{port1}}"], count=2,
                                  stdout=subprocess.PIPE)
    assert reserved_tcp_port not in block.ports
    record(pid=other.pid, port=block.start + 1)
    started(other)
    assert fetch(block.start + 1) == str(other.pid).encode()

def test_child_by_socket_activation(reserved_popen):
    code = "import os, socket; s = socket.socket(fileno=3); print('ready', flush=True); " \\
           "assert os.environ['LISTEN_PID'] == str(os.getpid())\\n" \\
           "while True: c, _ = s.accept(); c.sendall(str(os.getpid()).encode()); c.close()"
    proc, res = reserved_popen([sys.executable, "-c", code], listen_fds=True,
                               stdout=subprocess.PIPE)
    record(pid=proc.pid, port=res.start)
    started(proc)
    assert fetch(res.start) == str(proc.pid).encode()

def test_child_then_fail(reserved_popen):
    proc, res = reserved_popen([sys.executable, "-c", SERVER, "{{port}}"], stdout=subprocess.PIPE)
    record(pid=proc.pid, port=res.start)
    started(proc)
    assert False, "the test fails with its child running"

def test_child_that_ignores_sigterm(reserved_popen):
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" + SERVER
    proc, res = reserved_popen([sys.executable, "-c", code, "{{port}}"], protocol="tcp",
                               stdout=subprocess.PIPE)
    record(pid=proc.pid, port=res.start)
    started(proc)
"""


def free_soon(port, tries=10):
    """can_bind, tried a few times: other tests running beside this one pick
    ports at random from the same range, and may hold this one a moment."""
    for _ in range(tries):
        if can_bind(port):
            return True
        time.sleep(0.2)
    return False


def test_popen_children_get_their_ports_and_are_reaped(suite):
    suite.makepyfile(CHILD_TESTS)
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=4, failed=1)
    children = seen(suite)
    assert len(children) == 6
    for what in children:
        assert gone(what["pid"]), what
        assert free_soon(what["port"]), (what, children, subprocess.run(
            ["ss", "-tanpe", f"sport = :{what['port']}"], capture_output=True, text=True).stdout)


def test_udp_child_gets_reserved_udp_port(suite):
    suite.makepyfile(RECORD + '''
import socket, subprocess, sys
from helpers import can_bind

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
data, peer = s.recvfrom(64)
s.sendto(data, peer)
"""

def test_udp_child(reserved_udp_port, reserved_popen):
    proc, res = reserved_popen([sys.executable, "-c", ECHO, str(reserved_udp_port)],
                               protocol="udp", stdout=subprocess.PIPE)
    assert res.start == reserved_udp_port and res.protocol == "udp"
    record(pid=proc.pid, port=reserved_udp_port)
    assert proc.stdout.readline() == b"ready\\n"
    assert not can_bind(reserved_udp_port, host="::", udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(30)
        sock.sendto(b"ping", ("127.0.0.1", reserved_udp_port))
        assert sock.recv(64) == b"ping"
    assert proc.wait(30) == 0
''')
    suite.runpytest_subprocess().assert_outcomes(passed=1)
    [what] = seen(suite)
    assert gone(what["pid"]) and can_bind(what["port"], udp=True)


def test_interrupted_session_reaps_children_and_releases(suite):
    suite.makepyfile(RECORD + f"""
import select, subprocess, sys
SERVER = {SERVER!r}

def test_interrupted(reserved_popen, reserved_tcp_port, reservation):
    proc, res = reserved_popen([sys.executable, "-c", SERVER, "{{port}}"], stdout=subprocess.PIPE)
    block = reservation(3)
    record(pid=proc.pid, ports=[res.start, *block.ports])
    select.select([proc.stdout], [], [], 60)
    raise KeyboardInterrupt  # what Ctrl-C does in the middle of a test
""")
    result = suite.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    [what] = seen(suite)
    assert gone(what["pid"])
    assert all(can_bind(p) for p in what["ports"])


def test_teardown_leaves_no_descriptors_threads_or_children(suite):
    suite.makepyfile(CHILD_TESTS.replace("test_child_that_ignores_sigterm", "_skip_slow_one") + """
def test_all_fixtures(reservation, reserved_tcp_port, reserved_udp_port, reserved_tcp_socket,
                      reserved_udp_socket, reserved_popen):
    reservation(5)
    with socket.create_server(("127.0.0.1", reserved_tcp_port)):
        pass
    reserved_popen([sys.executable, "-c", "import time; time.sleep(60)"], protocol="udp")

def test_interrupted(reserved_popen, reserved_tcp_port):
    reserved_popen([sys.executable, "-c", "import time; time.sleep(60)"])
    raise KeyboardInterrupt
""")
    original_bind = socket.socket.bind

    def counts():
        return (len(open_fds()), threading.active_count(), len(os.listdir("/proc/self/task")),
                children_of_this_process())

    def run():
        # In this process, so that what teardown leaves behind is ours to count.
        return suite.inline_run("-p", "no:cacheprovider", no_reraise_ctrlc=True)

    run()  # the first run does the one-time imports
    before = counts()
    for _ in range(2):
        result = run()
        assert result.ret == pytest.ExitCode.INTERRUPTED
        passed, skipped, failed = result.listoutcomes()
        assert (len(passed), len(failed)) == (4, 1)  # test_child_then_fail; then the interrupt
        fds, threads, tasks, children = counts()
        # Threads of earlier tests in this worker (an idle pool's) may end meanwhile.
        assert (fds, children) == (before[0], before[3])
        assert threads <= before[1] and tasks <= before[2]
    assert socket.socket.bind is original_bind  # the hand-off is off again


def test_coexists_with_pytest_asyncio_and_anyio(suite):
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("anyio")
    suite.makepyfile(RECORD + """
import asyncio, socket
import anyio
import pytest
from helpers import can_bind

@pytest.mark.asyncio
async def test_asyncio(reserved_tcp_port, unused_tcp_port, unused_tcp_port_factory,
                       reserved_udp_port):
    record(port=reserved_tcp_port)
    assert unused_tcp_port != reserved_tcp_port and unused_tcp_port_factory() != reserved_tcp_port
    server = await asyncio.start_server(lambda r, w: w.write(b"hi"), "127.0.0.1", reserved_tcp_port)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", reserved_tcp_port)
        assert await reader.read(2) == b"hi"
        writer.close()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", reserved_udp_port))
    assert transport.get_extra_info("sockname")[1] == reserved_udp_port
    transport.close()

@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_anyio(reserved_tcp_port, free_tcp_port, free_udp_port, reserved_popen):
    record(port=reserved_tcp_port)
    assert free_tcp_port != reserved_tcp_port
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=reserved_tcp_port)
    async with listener:
        assert listener.extra(anyio.abc.SocketAttribute.local_port) == reserved_tcp_port
        assert not can_bind(reserved_tcp_port, host="127.0.0.1", reuse=True)
""")
    result = suite.runpytest_subprocess("-p", "asyncio", "-p", "anyio")
    result.assert_outcomes(passed=2)
    for what in seen(suite):
        assert can_bind(what["port"])


def readme_pytest_section() -> str:
    text = (TESTS_DIR.parent / "README.md").read_text()
    return text[text.index("\n## pytest\n"):text.index("\n## What is enforced")]


def test_readme_example_runs(suite):
    pytest.importorskip("pytest_asyncio")
    section = readme_pytest_section()
    start = section.index("```python\n") + len("```python\n")
    suite.makepyfile(test_readme=section[start:section.index("```", start)])
    suite.runpytest_subprocess().assert_outcomes(passed=2)


def test_suite_moves_from_unused_tcp_port_in_one_line(suite):
    pytest.importorskip("pytest_asyncio")
    [line] = [line for line in readme_pytest_section().splitlines()
              if line.startswith("from portreserve.pytest_plugin import")]
    suite.makeconftest(line)
    # A test written for pytest-asyncio's fixture, unchanged but for Popen.
    suite.makepyfile(RECORD + f"""
import socket, subprocess, sys
from helpers import can_bind
SERVER = {SERVER!r}

def test_old(unused_tcp_port, reserved_popen):
    record(port=unused_tcp_port)
    assert not can_bind(unused_tcp_port, host="::", reuse=True)  # held, not just free
    with socket.create_server(("127.0.0.1", unused_tcp_port)):
        pass
    proc, res = reserved_popen([sys.executable, "-c", SERVER, str(unused_tcp_port)],
                               stdout=subprocess.PIPE)
    assert res.start == unused_tcp_port and proc.stdout.readline() == b"ready\\n"
""")
    suite.runpytest_subprocess().assert_outcomes(passed=1)
    [what] = seen(suite)
    assert can_bind(what["port"])


@pytest.mark.skipif(os.environ.get("PORTRESERVE_SKIP_RACE") == "1", reason="asked to skip")
def test_xdist_suite_never_loses_a_port():
    # 200 tests, 4 workers, 3 runs, each test starting a child by number and
    # an in-process server on reserved_tcp_port while another process keeps
    # grabbing ports (tests/plugin_race.py, in a private network namespace).
    pytest.importorskip("xdist")
    netns_prefix()  # skips where no namespace can be made
    result = subprocess.run([sys.executable, str(TESTS_DIR / "plugin_race.py"),
                             "--fixture", "reserved", "--runs", "3"],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-5000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    outcomes = [(r["passed"], r["failed"], r["errors"]) for r in runs]
    assert outcomes == [(200, 0, 0)] * 3, result.stderr[-5000:]


KILL_TESTS = RECORD + f"""
import json, os, pathlib, select, socket, subprocess, sys
import pytest
from helpers import can_bind

SERVER = {SERVER!r}
DIR = pathlib.Path(os.environ["SEEN"]).parent

def wait_for(path):
    for _ in range(1200):  # 120 s at most
        if path.exists():
            return json.loads(path.read_text() or "{{}}")
        select.select([], [], [], 0.1)
    pytest.fail(f"{{path}} never came")

def test_victim(reserved_tcp_port, reserved_udp_port, reservation, reserved_tcp_socket):
    block = reservation(4)
    server = socket.create_server(("127.0.0.1", reserved_tcp_port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", reserved_udp_port))
    (DIR / "victim.json").write_text(json.dumps(dict(
        pid=os.getpid(), worker=os.environ["PYTEST_XDIST_WORKER"],
        tcp=[reserved_tcp_port, *block.ports, reserved_tcp_socket.getsockname()[1]],
        udp=[reserved_udp_port])))
    wait_for(DIR / "never")  # killed with SIGKILL while waiting here

def test_survivor():
    victim = wait_for(DIR / "victim.json")
    assert victim["worker"] != os.environ["PYTEST_XDIST_WORKER"]
    wait_for(DIR / "killed")
    # At once, no retry: every port of the dead worker binds.
    tcp = [can_bind(p, host="0.0.0.0") for p in victim["tcp"]]
    udp = [can_bind(p, host="0.0.0.0", udp=True) for p in victim["udp"]]
    record(tcp=tcp, udp=udp)
    assert all(tcp) and all(udp)
"""


def test_sigkilled_worker_frees_its_ports_at_once(suite):
    pytest.importorskip("xdist")
    suite.makepyfile(test_kill=KILL_TESTS)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "xdist", "-n", "2",
                             "-p", "no:cacheprovider", "-q", "test_kill.py"],
                            cwd=suite.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        victim_file = suite.path / "victim.json"
        for _ in range(1200):
            if victim_file.exists() and victim_file.read_text():
                break
            time.sleep(0.1)
        victim = json.loads(victim_file.read_text())
        os.kill(victim["pid"], signal.SIGKILL)
        for _ in range(600):
            if gone(victim["pid"]):
                break
            time.sleep(0.05)
        assert gone(victim["pid"])
        (suite.path / "killed").write_text("")
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "crashed" in output, output
    [what] = seen(suite)
    assert all(what["tcp"]) and all(what["udp"]), output
