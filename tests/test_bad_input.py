"""Bad input, every public entry point: the documented class, nothing changed.

The table is tests/bad_input_cases.py (over 200 cases: the high-level calls,
Reservation's methods, lowlevel, the overlapped and asyncio forms, completion
ports, persistent calls and the command line).  It runs once, in a child with
its own state directory (on Linux in a private network namespace, so that a
case that wrongly got through could change neither the host's reserved list
nor its store); each case is then one test here.  The errors are the same on
Linux and Windows (docs/API.md section 3), so the same table runs on both; what
"no state change" can observe differs (see bad_input_cases.py).  The suite
runs for each backend (PORTRESERVE_BACKEND), and the child inherits it.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from helpers import run_python, netns_prefix

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(
    not LINUX and sys.platform != "win32",
    reason="the state snapshot is written for Linux and Windows (macOS: not yet)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bad_input_cases  # noqa: E402

CASES = bad_input_cases.cases()


def test_the_table_is_large_enough():
    assert len(CASES) >= 200
    assert len({c["id"] for c in CASES}) == len(CASES)  # one test per case


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    state_dir = str(tmp_path_factory.mktemp("bad-input") / "state")
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"""
        import os, sys
        os.environ["PORTRESERVE_STATE_DIR"] = {state_dir!r}
        sys.path.insert(0, {here!r})
        import subprocess
        if {LINUX}:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        import bad_input_cases
        bad_input_cases.main()
    """
    r = run_python(code, prefix=netns_prefix() if LINUX else None, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    out["no store was made"] = os.listdir(state_dir) if os.path.exists(state_dir) else None
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, results):
    result = results[case["id"]]
    if isinstance(result, dict):
        pytest.skip(result["skip"])
    assert result is None, result


def test_no_state_directory_was_made(results):
    assert results["no store was made"] is None


# With the descriptor table full, every entry point still raises a documented
# class (here: a PortReservationError with EMFILE), never a plain OSError.
FULL_TABLE = """
    import asyncio, os, resource, socket, sys
    import portreserve
    from portreserve import lowlevel
    from portreserve._engine import engine
    res = portreserve.reserve(2)
    sock, sock6, other = socket.socket(), socket.socket(socket.AF_INET6), socket.socket()
    inst = lowlevel.acquire_port_reservation(sock6, 0, 2)
    cport = portreserve.CompletionPort()
    loop = asyncio.new_event_loop()
    portreserve.aio  # imported now: a first import needs descriptors itself
    # Hard limit too: the engine raises the soft limit to the hard one on EMFILE.
    limit = len(os.listdir("/proc/self/fd")) + 40
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    calls = {
        "reserve": lambda: portreserve.reserve(3),
        "reserve(1)": lambda: portreserve.reserve(1, protocol="udp"),
        "Reservation.socket": lambda: res.socket(socket.AF_INET),  # a new socket, not the holder
        "create_persistent": lambda: portreserve.create_persistent(5000, 2),
        "lookup_persistent": lambda: portreserve.lookup_persistent(5000, 2),
        "delete_persistent": lambda: portreserve.delete_persistent(5000, 2),
        "list_persistent": lambda: portreserve.list_persistent(),
        "restore": lambda: engine.restore(),
        "bind(persistent token)": lambda: portreserve.bind(other, 77),
        "acquire_port_reservation": lambda: lowlevel.acquire_port_reservation(sock, 0, 2),
        "acquire_overlapped": lambda: lowlevel.acquire_port_reservation_overlapped(
            sock, 0, 2).result(30),
        "acquire_overlapped(port)": lambda: lowlevel.acquire_port_reservation_overlapped(
            sock, 0, 2, port=cport).result(30),
        "CompletionPort": lambda: portreserve.CompletionPort(),
        "aio.reserve": lambda: loop.run_until_complete(portreserve.aio.reserve(2)),
    }
    for name, fn in calls.items():
        fill = []
        try:
            while True:
                fill.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            fn()
            print(name, "no error")
        except portreserve.PortReservationError as exc:
            print(name, type(exc).__name__, exc.errno, exc.winerror)
        except BaseException as exc:
            print(name, "undocumented", type(exc).__name__, exc)
        finally:
            for fd in fill:
                os.close(fd)
"""


@pytest.mark.skipif(not LINUX, reason="fills the table under a lowered RLIMIT_NOFILE, "
                    "read back from /proc/self/fd: POSIX descriptors")
def test_full_descriptor_table_gives_documented_errors(tmp_path):
    import textwrap
    code = (f"import os; os.environ['PORTRESERVE_STATE_DIR'] = {str(tmp_path / 'state')!r}\n"
            + textwrap.dedent(FULL_TABLE))
    r = run_python(code, prefix=netns_prefix())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 14, r.stdout
    for line in lines:
        assert line.split()[-3:] == ["PortReservationError", "24", "10024"], line


@pytest.mark.skipif(not LINUX, reason="RLIMIT_NOFILE: POSIX descriptors")
@pytest.mark.parametrize("count", [60000, 300])
def test_out_of_descriptors_names_the_limit(count):
    """A block larger than the descriptor limit: EMFILE, as documented, in a
    message that gives the limit and says why a block needs that many.  In a
    private namespace, where the ports are free (the host's may not be)."""
    r = run_python(f"""
        import os, resource
        import portreserve
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        before = sorted(os.listdir("/proc/self/fd"))
        try:
            portreserve.reserve({count})
        except portreserve.PortReservationError as exc:
            print(type(exc).__name__, exc.errno, exc.winerror)
            print(exc.strerror)
        assert sorted(os.listdir("/proc/self/fd")) == before
    """, prefix=netns_prefix())
    assert r.returncode == 0, r.stderr
    kind, message = r.stdout.splitlines()
    assert kind == "PortReservationError 24 10024"
    assert "EMFILE" in message and "RLIMIT_NOFILE" in message, message
    assert "256 soft, 256 hard" in message, message
    assert "one descriptor per reserved port" in message and "ulimit -n" in message, message
