"""The pytest plugin's race proof: a generated suite under pytest-xdist
while another process keeps grabbing ports.

It runs itself in a private network namespace (unshare(1); root, or a user
namespace otherwise) and narrows that namespace's ip_local_port_range, so
that the grabber and the suite compete for the same ports; the host's
settings are never touched.  tests/test_plugin.py runs the plugin side in
every CI; the comparison is run by hand:

    python tests/plugin_race.py --fixture reserved --runs 3
    python tests/plugin_race.py --fixture unused --runs 1

Every test starts a real server on its port twice: a child process that
binds the number itself, then a server in the test process.  With
``--fixture reserved`` the port comes from ``reserved_tcp_port`` and the
child from ``reserved_popen``; with ``--fixture unused`` from pytest-asyncio's
``unused_tcp_port`` and ``subprocess.Popen``, the bind-close-hand-on pattern
the plugin replaces.  Meanwhile the grabber binds ports with bind(0) and by
number (loopback only).  The last line printed is JSON: failures per run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

# A narrow range makes the suite and the grabber meet often; wide enough that
# what the grabber holds at once (_RING) never exhausts it.
PORT_RANGE = (40000, 40999)
_RING = 120              # ports the grabber holds at once, oldest let go first
_GRABBER_ITERATIONS = 2_000_000  # bound on the grabber's loop (minutes of work)

SUITE = '''
import os, select, socket, subprocess, sys

import pytest

TESTS = int(os.environ["RACE_TESTS"])
RESERVED = os.environ["RACE_FIXTURE"] == "reserved"

# The child binds the number it is given, says so, serves its pid once.
CHILD = """
import os, socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
conn, _ = srv.accept()
conn.sendall(str(os.getpid()).encode())
try:
    conn.recv(1)  # until the client resets the connection: no TIME_WAIT on this port
except ConnectionResetError:
    pass
"""


@pytest.fixture
def port(request):
    return request.getfixturevalue("reserved_tcp_port" if RESERVED else "unused_tcp_port")


@pytest.fixture
def start_child(request):
    if RESERVED:
        popen = request.getfixturevalue("reserved_popen")
        yield lambda args: popen(args, stdout=subprocess.PIPE)[0]
        return
    children = []
    def start(args):
        children.append(subprocess.Popen(args, stdout=subprocess.PIPE))
        return children[-1]
    yield start
    for proc in children:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def fetch(port):
    """Connect, read what the server says, end with a reset (no TIME_WAIT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        data = conn.recv(64)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\1\\0\\0\\0\\0\\0\\0\\0")
    return data


@pytest.mark.parametrize("i", range(TESTS))
def test_servers_on_the_port(i, port, start_child):
    if RESERVED:  # the backend asked for is the one the workers use
        import portreserve
        assert portreserve.backend == (os.environ.get("PORTRESERVE_BACKEND") or "cffi")
    # A child started by number binds the port itself.
    child = start_child([sys.executable, "-S", "-c", CHILD, str(port)])
    ready, _, _ = select.select([child.stdout], [], [], 60)
    assert ready and child.stdout.readline() == b"ready\\n", f"child exited {child.wait()}"
    assert fetch(port) == str(child.pid).encode()
    assert child.wait(60) == 0
    # Then a server in this process, on the same number.
    with socket.create_server(("127.0.0.1", port)) as srv:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            peer, _ = srv.accept()
            with peer:
                peer.sendall(b"in-process")
                assert conn.recv(64) == b"in-process"
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\1\\0\\0\\0\\0\\0\\0\\0")
'''

GRABBER = f'''
import collections, os, socket, sys
stop = sys.argv[1]
lo, hi = {PORT_RANGE}
held = collections.deque()
port = lo
grabbed = 0
for n in range({_GRABBER_ITERATIONS}):
    if n % 64 == 0 and os.path.exists(stop):
        break
    family, host = (socket.AF_INET, "127.0.0.1") if n % 3 else (socket.AF_INET6, "::1")
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Every fourth try lets the kernel choose, the others sweep the range by number.
        if n % 4 == 0:
            s.bind((host, 0))
        else:
            s.bind((host, port))
            port = lo if port == hi else port + 1
        s.listen()
        grabbed += 1
    except OSError:
        s.close()
        if n % 4:
            port = lo if port == hi else port + 1
        continue
    held.append(s)
    if len(held) > {_RING}:
        held.popleft().close()
print(grabbed, "ports grabbed", file=sys.stderr)
'''


def run_suite(fixture: str, tests: int, workers: int, workdir: str) -> dict:
    """One pytest -n run of the generated suite; the outcome counts."""
    env = dict(os.environ, RACE_TESTS=str(tests), RACE_FIXTURE=fixture)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
         "-p", "xdist", "-W", "ignore::DeprecationWarning", "test_race_suite.py"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    counts = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|error|errors)", tail)}
    counts["errors"] = counts.pop("error", 0) + counts.get("errors", 0)
    counts.setdefault("passed", 0)
    counts.setdefault("failed", 0)
    counts["returncode"] = result.returncode
    # Which failures were a port taken by someone else (the race itself).
    reports = re.split(r"\n_{3,} test_servers_on_the_port\[\d+\] _{3,}\n", result.stdout)[1:]
    counts["address_in_use"] = sum("Address already in use" in r for r in reports)
    ran = counts["passed"] + counts["failed"] + counts["errors"]
    if result.returncode not in (0, 1) or ran != tests:
        sys.stderr.write(result.stdout[-5000:] + result.stderr[-5000:])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixture", choices=("reserved", "unused"), required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not args.in_netns:  # start again in a network namespace of our own
        prefix = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "-rn"]
        return subprocess.run([*prefix, sys.executable, *sys.argv, "--in-netns"]).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write("%d %d" % PORT_RANGE)

    results = []
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(workdir, "test_race_suite.py"), "w") as f:
            f.write(SUITE)
        stop = os.path.join(workdir, "stop")
        for _ in range(args.runs):
            grabber = subprocess.Popen([sys.executable, "-c", textwrap.dedent(GRABBER), stop])
            try:
                started = time.monotonic()
                counts = run_suite(args.fixture, args.tests, args.workers, workdir)
                counts["seconds"] = round(time.monotonic() - started, 1)
            finally:
                open(stop, "w").close()
                try:
                    grabber.wait(60)
                except subprocess.TimeoutExpired:
                    grabber.kill()
                    grabber.wait()
                os.unlink(stop)
            results.append(counts)
            print(json.dumps(counts), file=sys.stderr, flush=True)
    print(json.dumps({"fixture": args.fixture, "runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
