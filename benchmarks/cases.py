"""The measured operations, run in a child process per backend or peer.

``python -m benchmarks.cases SECTION ROUNDS ITERS [...]`` prints one JSON object:
case name -> per-operation times in microseconds, one per round (or a
string saying why the case was skipped).  The runner (run.py) starts these
children, usually in a private network namespace, and takes the medians.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring lo up in a fresh network namespace (no iproute2 needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def measure(op, rounds: int, n: int) -> list[float]:
    """Microseconds per op() call, for each of ``rounds`` rounds of ``n`` calls."""
    op()  # warm up: imports, caches, first allocations
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            op()
        times.append((time.perf_counter_ns() - t0) / n / 1e3)
    return times


def _guarded(results: dict, name: str, fn) -> None:
    """Record fn()'s rounds, or why it could not run (an optional feature)."""
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a skipped case is reported, not fatal
        text = str(exc)
        results[name] = text if text.startswith("not measured") else \
            f"skipped: {type(exc).__name__}: {text}"


# ---- cffi vs ctypes: one child per backend (PORTRESERVE_BACKEND is set) ----

def backend(rounds: int, iters: int) -> dict:
    import portreserve

    out: dict = {"backend": portreserve.backend}

    def cycle(family):
        def op():
            res = portreserve.reserve(1)
            s = socket.socket(family)
            res.bind(s)
            s.close()
            res.release()
        return op

    def default_cycle():
        # The call as README shows it: the default family of Reservation.socket().
        res = portreserve.reserve(1)
        s = res.socket()
        s.close()
        res.release()

    def python_floor():
        # What every bind-then-close picker does at the least.
        s = socket.socket()
        s.bind(("", 0))
        s.close()

    def reserve_1():
        portreserve.reserve(1).release()

    # Measured round by round in turn, so that the ratios between them
    # (the targets) see the same load.  AF_INET6 on the wildcard address
    # takes the descriptor swap; AF_INET the SO_REUSEPORT hand-off.
    cases = {"python_floor": (None, python_floor, iters), "reserve_1": (None, reserve_1, iters),
             "cycle": (None, default_cycle, iters),
             "cycle6": (None, cycle(socket.AF_INET6), iters),
             "cycle4": (None, cycle(socket.AF_INET), iters)}
    cases.update(_portpicker_cases(max(iters // 4, 10)))
    out.update(interleaved(cases, rounds))
    for count in (16, 256, 1024, 10000):
        def reserve_release(count=count):
            portreserve.reserve(count).release()
        out[f"reserve_{count}"] = measure(reserve_release, rounds,
                                          1 if count >= 1024 else iters // count + 1)

    with portreserve.reserve(256) as res:
        def bind_from_block():
            s = socket.socket(socket.AF_INET6)
            res.bind(s)
            s.close()
        out["bind_block"] = measure(bind_from_block, rounds, iters)

    with portreserve.reserve(256) as res:
        # 255 ports handed out and kept: each take has to find the one port
        # that comes back (no step may grow with the ports handed out).
        kept = [res.socket(socket.AF_INET6) for _ in range(255)]
        out["bind_full_block"] = measure(bind_from_block, rounds, iters)
        for s in kept:
            s.close()

    out.update(_popen(portreserve, rounds, iters))
    _guarded(out, "fixture", lambda: _fixture(rounds, iters))

    _guarded(out, "persistent", lambda: _persistent(portreserve, rounds, iters))
    _guarded(out, "overlapped", lambda: _overlapped(rounds, iters))
    _guarded(out, "aio", lambda: _aio(rounds, iters))
    return out


def interleaved(cases: dict, rounds: int) -> dict:
    """measure() for several cases, taking turns round by round.

    cases: name -> (setup or None, op, calls per round); setup runs before
    each round, untimed.  A case that cannot run is reported as skipped.
    """
    out: dict = {}
    for name, (setup, op, _) in list(cases.items()):
        try:
            if setup:
                setup()
            op()  # warm up
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            out[name] = f"skipped: {type(exc).__name__}: {exc}"
            del cases[name]
    for name in cases:
        out[name] = []
    for _ in range(rounds):
        for name, (setup, op, n) in cases.items():
            if setup:
                setup()
            t0 = time.perf_counter_ns()
            for _ in range(n):
                op()
            out[name].append((time.perf_counter_ns() - t0) / n / 1e3)
    return out


def _portpicker_cases(calls: int) -> dict:
    """portpicker.pick_unused_port() with its memory of handed-out ports
    cleared for each call, and as it is after 5,000 calls in one process."""
    try:
        import portpicker
    except ImportError as exc:
        return {"portpicker": (None, _fail(exc), 1), "portpicker_5000": (None, _fail(exc), 1)}
    portpicker._random_ports.clear()
    for _ in range(5000):
        portpicker.pick_unused_port()
    after_5000 = set(portpicker._random_ports)

    def cleared():
        kept = portpicker._random_ports
        portpicker._random_ports = set()
        try:
            portpicker.pick_unused_port()
        finally:
            portpicker._random_ports = kept

    def back_to_5000():  # each round starts from the same 5,000 ports remembered
        portpicker._random_ports = set(after_5000)

    return {"portpicker": (None, cleared, calls),
            "portpicker_5000": (back_to_5000, portpicker.pick_unused_port, calls)}


def _fail(exc):
    def op():
        raise exc
    return op


def _popen(portreserve, rounds: int, iters: int) -> dict:
    """reserve(1), Reservation.popen of a child given the port by number,
    wait, release; in turn with a plain Popen of the same child."""
    if not hasattr(portreserve.Reservation, "popen"):
        return {"popen": "not measured: Reservation.popen is not in this build"}
    argv = ["true"]

    def op():
        with portreserve.reserve(1) as res:
            res.popen(argv).wait()

    def floor():
        subprocess.Popen(argv).wait()

    n = max(iters // 50, 3)
    return interleaved({"popen_floor": (None, floor, n), "popen": (None, op, n)}, rounds)


_FIXTURE_CONFTEST = """
import json, os, time
import pytest

times = {"with": [], "without": []}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t0 = time.perf_counter_ns()
    yield
    times[item.name.split("_")[1]].append((time.perf_counter_ns() - t0) / 1e3)


def pytest_sessionfinish(session):
    with open(os.environ["PORTRESERVE_BENCH_OUT"], "w") as f:
        json.dump(times, f)
"""


def _fixture(rounds: int, iters: int) -> list[float]:
    """Per test: a test taking reserved_tcp_port, less the same test without it.

    One pytest session per round, the two kinds of test alternating; each
    test's whole run protocol is timed by a hook, and the difference of the
    medians is the fixture's cost (setup and teardown included).
    """
    import importlib.util
    import statistics
    import tempfile
    if importlib.util.find_spec("portreserve.pytest_plugin") is None:
        raise RuntimeError("not measured: portreserve.pytest_plugin is not in this build")
    n = max(iters // 5, 20)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "conftest.py"), "w") as f:
            f.write(_FIXTURE_CONFTEST)
        with open(os.path.join(tmp, "test_fixture_cost.py"), "w") as f:
            for i in range(n):
                f.write(f"def test_with_{i}(reserved_tcp_port):\n    pass\n\n\n"
                        f"def test_without_{i}():\n    pass\n\n\n")
        out = os.path.join(tmp, "times.json")
        for _ in range(rounds):
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--rootdir", tmp, tmp], check=True, capture_output=True,
                           timeout=300, env=dict(os.environ, PORTRESERVE_BENCH_OUT=out))
            with open(out) as f:
                got = json.load(f)
            times.append(statistics.median(got["with"]) - statistics.median(got["without"]))
    return times


def _persistent(portreserve, rounds: int, iters: int) -> list[float]:
    # Only inside a private namespace (the runner sets PORTRESERVE_STATE_DIR
    # to a temporary directory): this writes ip_local_reserved_ports.
    if os.environ.get("PORTRESERVE_BENCH_NETNS") != "1":
        raise RuntimeError("no private network namespace")
    start = 40000

    def op():
        portreserve.create_persistent(start, 16)
        portreserve.delete_persistent(start, 16)
    return measure(op, rounds, max(iters // 100, 3))


def _overlapped(rounds: int, iters: int) -> list[float]:
    """Per reservation: acquire(1) and release through a CompletionPort, in batches."""
    from portreserve import _overlapped as ov
    batch = 64

    def op():
        socks = [socket.socket() for _ in range(batch)]
        with ov.CompletionPort() as port:
            for i, s in enumerate(socks):
                ov.acquire_port_reservation_overlapped(s, 0, 1, port=port, key=i)
            done = []
            while len(done) < batch:
                done += port.get(timeout=10)
            for c in done:
                ov.release_port_reservation_overlapped(
                    socks[c.key], c.op.result().token, port=port, key=c.key)
            done = []
            while len(done) < batch:
                done += port.get(timeout=10)
        for s in socks:
            s.close()
    return [t / batch for t in measure(op, rounds, max(iters // batch // 4, 1))]


def _aio(rounds: int, iters: int) -> list[float]:
    """Per reservation: ``await aio.reserve(1)`` then release, 64 at a time."""
    from portreserve import aio
    batch = 64

    async def many():
        for res in await asyncio.gather(*(aio.reserve(1) for _ in range(batch))):
            res.release()

    loop = asyncio.new_event_loop()
    try:
        return [t / batch for t in measure(lambda: loop.run_until_complete(many()),
                                           rounds, max(iters // batch // 4, 1))]
    finally:
        loop.close()


# ---- peers: what people use today to get a free port ----

def peers(rounds: int, iters: int) -> dict:
    out: dict = {}
    n = max(iters // 4, 10)  # ephemeral_port_reserve leaves a TIME_WAIT each call

    def epr_case():
        import ephemeral_port_reserve
        return measure(ephemeral_port_reserve.reserve, rounds, n)

    def port_for_case():
        import port_for
        return measure(port_for.select_random, rounds, n)

    _guarded(out, "ephemeral_port_reserve", epr_case)
    _guarded(out, "port_for", port_for_case)
    return out


# ---- busy host: one namespace, filled once, measured by several children ----

def busy(rounds: int, passes: int, bound: int, time_wait: int, floor: str | None) -> dict:
    """Fill this namespace, then run the measuring children inside it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    keep = []
    for i in range(min(bound, hard - 200)):
        s = socket.socket(socket.AF_INET6 if i % 2 else socket.AF_INET)
        s.bind(("::" if i % 2 else "127.0.0.1", 0))
        if i % 10 == 0:
            s.listen()
        keep.append(s)
    server = socket.create_server(("127.0.0.1", 0), backlog=256)
    for _ in range(time_wait):
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        client.close()  # the side that closes first keeps the TIME_WAIT
        peer.close()
    out: dict = {"bound": len(keep), "time_wait": _count_time_wait()}
    runs = {name: [sys.executable, "-m", "benchmarks.cases", "busy-measure", str(rounds), "0"]
            for name in ("cffi", "ctypes")}
    if floor:
        runs["floor"] = [floor, str(rounds), "1", "busy"]
    for _ in range(passes):  # taking turns, as the runner does
        for name, cmd in runs.items():
            env = dict(os.environ, PORTRESERVE_BACKEND=name)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            if proc.returncode:
                out[name] = f"failed: {proc.stderr.strip()[-300:]}"
            elif not isinstance(out.get(name), str):
                for case, times in json.loads(proc.stdout).items():
                    out.setdefault(name, {}).setdefault(case, []).extend(times)
    return out


def _count_time_wait() -> int:
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            count += sum(1 for line in f if line.split()[3] == "06")
    return count


def busy_measure(rounds: int) -> dict:
    import portreserve
    out: dict = {}
    for count in (16, 256):
        out[f"wildcard_{count}"] = measure(lambda: portreserve.reserve(count).release(),
                                           rounds, 3)
    # The search's dump and parse alone (the part where the parse runs in C
    # or in Python), and the dump of bound-only sockets it may add.
    from portreserve._backend import calls
    out["dump"] = measure(lambda: calls.bound_ports(socket.IPPROTO_TCP, 1), rounds, 3)
    out["dump_bound_only"] = measure(lambda: calls.bound_ports(socket.IPPROTO_TCP, 2),
                                     rounds, 3)
    return out


def main(argv: list[str]) -> None:
    section, rounds, iters = argv[0], int(argv[1]), int(argv[2])
    if os.environ.get("PORTRESERVE_BENCH_NETNS") == "1":
        loopback_up()
    if section == "backend":
        result = backend(rounds, iters)
    elif section == "peers":
        result = peers(rounds, iters)
    elif section == "busy":
        # busy ROUNDS PASSES BOUND TIME_WAIT [FLOOR]
        result = busy(rounds, iters, int(argv[3]), int(argv[4]), argv[5] if len(argv) > 5 else None)
    elif section == "busy-measure":
        result = busy_measure(rounds)
    else:
        raise SystemExit(f"unknown section {section!r}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
