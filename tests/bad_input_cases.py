"""The bad-input table of tests/test_bad_input.py, and the runner of one case.

Each case is a line of code, run with fresh objects (sockets, a held and a
released reservation, a completion port), that must raise exactly one
documented class (docs/API.md section 3) with its errno and winerror, in a message
that names the bad value, and leave no trace.  "No trace" is what the system
lets us see: everywhere, the same state directory, no new thread, nothing
queued on or attached to the completion port, the given sockets still open,
unbound and unassociated (each still binds to a port outside the reservation)
and the reservation still handing out all its ports; on Linux besides, the
same descriptors, bound sockets, kernel reserved list and association tables
(read from /proc and the engine).  Command-line cases run the `portreserve`
command and check its status and message: bad input is a usage error (2, the
command's own usage, then one line naming the value), a failed call 1 and
one line.

The errors are the same on every system (docs/API.md section 3), so the table is
one for all; a case that needs what a system lacks (AF_UNIX sockets in
Windows' Python, Linux's AF_PACKET) names it in "needs" and is skipped there.

On Linux the runner is run in a private network namespace (see the test), so
that a case that wrongly got through could not change the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import traceback

LINUX = sys.platform.startswith("linux")

TCP_EINVAL = ("InvalidParameter", 22, 10022)
PERSIST_EINVAL = ("InvalidParameter", 22, 87)
NOT_FOUND = ("ReservationNotFound", 2, 1168)
NOT_SUPPORTED = ("NotSupported", 95, 10045)
TYPE = ("TypeError", None, None)

# (start, count) blocks that no call takes, wildcard start 0 or not.
BAD_BLOCKS = [(0, 0), (0, -1), (0, 65536), (0, 10**12), (-1, 1), (65536, 1), (70000, 5),
              (65535, 2), (65000, 1000), (1, 65536), (2**64, 1), (-2**63, 1)]
# ... and those that persistent calls refuse besides (start 0 is no wildcard there).
BAD_PERSISTENT = [(0, 1), (1000, 0), (65535, 2), (65000, 537), (70000, 1), (-1, 1),
                  (1, 65536), (0, 0), (2**64, 1), (7, -7)]
BAD_PROTOCOLS = ["sctp", "", "tcp6", "TCP ", "icmp", "udp-lite"]
BAD_TOKENS = [0, -1, 2**64, 2**100, -(2**64)]


def _named(start: int, count: int, wildcard: bool) -> str:
    """The value a block error must name."""
    if not 0 <= start <= 65535:
        return f"start port {start}"
    if not 1 <= count <= 65535:
        return f"number of ports {count}"
    if start == 0 and not wildcard:
        return "start port 0"
    return f"{start}..{start + count - 1}"


def _usage(args: list[str]) -> str:
    """How the usage of the (sub)command that ``args`` name begins."""
    words = args[:1] if args[:1] in (["demo"], ["reserve"], ["run"], ["persistent"]) else []
    if words == ["persistent"] and args[1:2] in (["add"], ["delete"], ["lookup"], ["list"],
                                                  ["restore"]):
        words = args[:2]
    return " ".join(["usage: portreserve", *words, "" if words else "[-h]"])


def cases() -> list[dict]:
    out: list[dict] = []

    def add(code: str, expect: tuple, names: str | None = None, needs: str = "",
            usage: str = "") -> None:
        cls, errno, winerror = expect
        # What a case needs beyond TCP/UDP sockets of AF_INET and AF_INET6.
        needs = sorted({n for n in ("AF_UNIX", "AF_PACKET") if f"socket.{n}" in code}
                       | ({"AF_UNIX"} if re.search(r"\bunix", code) else set())
                       | ({"reservation"} if re.search(r"\b(res|released)\.", code) else set())
                       | ({needs} if needs else set()))
        out.append({"id": code, "code": code, "cls": cls, "errno": errno,
                    "winerror": winerror, "names": names, "needs": needs, "usage": usage})

    # Runtime reservations: portreserve.reserve and its asyncio twin.
    for start, count in BAD_BLOCKS:
        add(f"portreserve.reserve({count}, start={start})", TCP_EINVAL,
            _named(start, count, True))
    for proto in BAD_PROTOCOLS:
        add(f"portreserve.reserve(1, protocol={proto!r})", TCP_EINVAL, repr(proto))
        add(f"run(aio.reserve(2, protocol={proto!r}))", TCP_EINVAL, repr(proto))
    for bad in ('"1"', "1.0", "None", "True", "[1]"):
        add(f"portreserve.reserve({bad})", TYPE, "count")
        add(f"portreserve.reserve(1, start={bad})", TYPE, "start")
    add("portreserve.reserve(1, protocol=6)", TYPE, "protocol")
    add("portreserve.reserve(1, protocol=None)", TYPE, "protocol")
    for start, count in BAD_BLOCKS[:6]:
        add(f"run(aio.reserve({count}, start={start}))", TCP_EINVAL, _named(start, count, True))

    # The low-level runtime calls and their overlapped and asyncio forms.
    for start, count in BAD_BLOCKS:
        named = _named(start, count, True)
        add(f"lowlevel.acquire_port_reservation(tcp, {start}, {count})", TCP_EINVAL, named)
        add(f"lowlevel.acquire_port_reservation_overlapped(udp, {start}, {count})",
            TCP_EINVAL, named)
        add(f"lowlevel.acquire_port_reservation_overlapped(tcp, {start}, {count}, port=cport)",
            TCP_EINVAL, named)
    for start, count in BAD_BLOCKS[:4]:
        add(f"run(aio.acquire_port_reservation(tcp, {start}, {count}))", TCP_EINVAL,
            _named(start, count, True))
    for fn in ("acquire_port_reservation", "acquire_port_reservation_overlapped"):
        add(f"lowlevel.{fn}(closed, 0, 2)", TCP_EINVAL, "closed")
        add(f"lowlevel.{fn}(unix, 0, 2)", NOT_SUPPORTED, "AF_UNIX")
        add(f"lowlevel.{fn}(unixdgram, 0, 2)", NOT_SUPPORTED, "SOCK_DGRAM")
        add(f"lowlevel.{fn}('sock', 0, 2)", TYPE, "str")
        add(f"lowlevel.{fn}(tcp, 0, '2')", TYPE, "count")
    for token in BAD_TOKENS:
        for fn in ("release_port_reservation", "release_port_reservation_overlapped",
                   "associate_port_reservation", "associate_port_reservation_overlapped"):
            add(f"lowlevel.{fn}(tcp, {token})", TCP_EINVAL, f"token {token}")
        add(f"portreserve.bind(tcp, {token})", TCP_EINVAL, f"token {token}")
        add(f"run(aio.release_port_reservation(tcp, {token}))", TCP_EINVAL, f"token {token}")
        add(f"run(aio.associate_port_reservation(tcp, {token}))", TCP_EINVAL, f"token {token}")
    for fn in ("release_port_reservation", "associate_port_reservation"):
        add(f"lowlevel.{fn}(closed, res.token)", TCP_EINVAL, "closed")
        add(f"lowlevel.{fn}(unix, res.token)", NOT_SUPPORTED, "AF_UNIX")
        add(f"lowlevel.{fn}(tcp, 'token')", TYPE, "token")
    # Arguments of the right form: the system's own call gives the answer.
    add("lowlevel.release_port_reservation(tcp, 12345)", TCP_EINVAL, "12345", "runtime calls")
    add("lowlevel.release_port_reservation(tcp, res.token)", TCP_EINVAL, "token")  # not its socket
    add("lowlevel.associate_port_reservation(tcp, 12345)", NOT_FOUND, "12345", "runtime calls")
    add("lowlevel.associate_port_reservation(udp, res.token)", TCP_EINVAL, "TCP")
    add("lowlevel.associate_port_reservation(bound, res.token)", TCP_EINVAL, "already bound")
    # The same with a token nobody has: the socket and host are refused before
    # the token is looked up (on Windows that look-up is the IOCTL itself).
    add("lowlevel.associate_port_reservation(bound, 12345)", TCP_EINVAL, "already bound")
    for fn in ("release_port_reservation", "associate_port_reservation"):
        add(f"lowlevel.{fn}(closed, 12345)", TCP_EINVAL, "closed")
    add("portreserve.bind(closed, 12345)", TCP_EINVAL, "closed")
    add("portreserve.bind(bound, 12345)", TCP_EINVAL, "already bound")
    add("portreserve.bind(tcp, 12345, host=5)", TYPE, "host")
    add("portreserve.bind(None, 12345)", TYPE, "None")
    for host in ("not-an-address", "::1", "256.1.1.1"):
        add(f"portreserve.bind(tcp, 12345, {host!r})", TCP_EINVAL, repr(host))
    add("portreserve.bind(tcp6, 12345, '127.0.0.1')", TCP_EINVAL, "'127.0.0.1'")
    for address in ('("", -1)', '("", 65536)', '("127.0.0.1", 2**64)', '("::", -2**63)'):
        add(f"lowlevel.bind_associated(tcp, {address})", TCP_EINVAL, "start port")
    for address in ('"127.0.0.1"', '("",)', "None", '(5, 0)', '("", "80")'):
        add(f"lowlevel.bind_associated(tcp, {address})", TYPE, None)
    add('lowlevel.bind_associated(closed, ("", 0))', TCP_EINVAL, "closed")

    # Binding from a token, a Reservation's own methods.
    add("portreserve.bind(tcp, 12345)", NOT_FOUND, "12345", "runtime calls")
    add("portreserve.bind(tcp, released.token)", NOT_FOUND, "token")
    add("portreserve.bind(udp, res.token)", TCP_EINVAL, "TCP")
    add("portreserve.bind(closed, res.token)", TCP_EINVAL, "closed")
    add("portreserve.bind(unix, res.token)", NOT_SUPPORTED, "AF_UNIX")
    add("portreserve.bind(bound, res.token)", TCP_EINVAL, "already bound")
    add("portreserve.bind(tcp, res.token, host=5)", TYPE, "host")
    add("portreserve.bind(tcp, 'x')", TYPE, "token")
    add("portreserve.bind(None, res.token)", TYPE, "None")
    # Hosts that are no address of the socket's family.
    for host in ("not-an-address", "::1", "10.0.0.1.5", "bogus.invalid", "256.1.1.1"):
        add(f"portreserve.bind(tcp, res.token, {host!r})", TCP_EINVAL, repr(host))
        add(f"res.bind(tcp, {host!r})", TCP_EINVAL, repr(host))
    for host in ("127.0.0.1", "0.0.0.0", "not-an-address"):
        add(f"res.bind(tcp6, {host!r})", TCP_EINVAL, repr(host))
    add("res.socket(socket.AF_INET, host='::')", TCP_EINVAL, "'::'")
    add("res.socket(host='bogus.invalid')", TCP_EINVAL, "'bogus.invalid'")
    add("res.socket(socket.AF_INET, host='127.0.0.1\\0')", TCP_EINVAL, "127.0.0.1")
    add("res.bind(tcp, '127.0.0.1\\0')", TCP_EINVAL, "127.0.0.1")
    add("portreserve.bind(tcp, res.token, '127.0.0.1\\0')", TCP_EINVAL, "127.0.0.1")
    add("res.bind(udp)", TCP_EINVAL, "TCP")
    add("res.bind(closed)", TCP_EINVAL, "closed")
    add("res.bind(unix)", NOT_SUPPORTED, "AF_UNIX")
    add("res.bind(bound)", TCP_EINVAL, "already bound")
    add("res.bind(tcp, host=b'::')", TYPE, "host")
    add("released.bind(tcp)", TCP_EINVAL, "released")
    for family in ("12345", "-1", "socket.AF_UNIX", "socket.AF_PACKET"):
        add(f"res.socket(family={family})", TCP_EINVAL, "family")
    add("res.socket(family='AF_INET')", TYPE, "family")
    add("released.socket()", TCP_EINVAL, "released")
    add("released.release()", TCP_EINVAL, "released")

    # Completion ports.
    add("portreserve.CompletionPort(-1)", TCP_EINVAL, "-1")
    add("cport.get(max_entries=0)", TCP_EINVAL, "max_entries 0")
    add("cport.get(timeout=-1)", TCP_EINVAL, "timeout -1")
    add("closed_port.get(timeout=0)", TCP_EINVAL, "closed")

    # Persistent reservations, high and low level.
    for start, count in BAD_PERSISTENT:
        named = _named(start, count, False)
        for fn in ("create", "lookup", "delete"):
            for proto in ("tcp", "udp"):
                add(f"portreserve.{fn}_persistent({start}, {count}, protocol={proto!r})",
                    PERSIST_EINVAL, named)
                add(f"lowlevel.{fn}_persistent_{proto}_port_reservation({start}, {count})",
                    PERSIST_EINVAL, named)
    for proto in BAD_PROTOCOLS[:3]:
        for fn in ("create", "lookup", "delete"):
            add(f"portreserve.{fn}_persistent(5000, 1, protocol={proto!r})", PERSIST_EINVAL,
                repr(proto))
        add(f"portreserve.list_persistent(protocol={proto!r})", PERSIST_EINVAL, repr(proto))
    add("portreserve.list_persistent(protocol=5)", TYPE, "protocol")
    add("portreserve.create_persistent('5000', 1)", TYPE, "start")
    add("lowlevel.lookup_persistent_tcp_port_reservation(5000, None)", TYPE, "count")

    # The command line: bad input is a usage error (status 2, as argparse's
    # own: the command's usage, then one line naming the value); a failure
    # of a call is status 1 with one line.
    for args, named in [
            (["reserve", "0"], "number of ports 0"),
            (["reserve", "-1"], "number of ports -1"),
            (["reserve", "70000"], "number of ports 70000"),
            (["reserve", "2", "--start", "65535"], "65535..65536"),
            (["reserve", "1", "--start", "-5"], "start port -5"),
            (["reserve", "1", "--start", "70000", "--udp", "--hold"], "start port 70000"),
            (["run", "--count", "0", "--", "true"], "number of ports 0"),
            (["run", "--start", "70000", "--", "true"], "start port 70000"),
            (["run", "--count", "2", "--start", "65535", "--", "true"], "65535..65536"),
            (["run", "--count", "70000", "--listen-fds", "--", "true"], "number of ports 70000"),
            (["run"], "no command given"),
            (["run", "--"], "no command given"),
            (["run", "--", "true", "{port1}"], "{port1}"),
            (["run", "--count", "2", "--", "true", "x{port2}"], "{port2}"),
            (["run", "--count", "x", "--", "true"], "'x'"),
            (["run", "--start", "1.5", "--", "true"], "'1.5'"),
            (["run", "--bogus", "--", "true"], "--bogus"),
            (["demo", "--bogus"], "--bogus"),
            (["demo", "--persistent", "1"], "arguments: 1"),
            (["reserve", "x"], "'x'"),
            (["reserve"], "COUNT"),
            (["reserve", "1", "--start", "1.5"], "'1.5'"),
            (["bogus"], "'bogus'"),
            (["persistent", "add", "0", "1"], "start port 0"),
            (["persistent", "add", "5000", "0", "--udp"], "number of ports 0"),
            (["persistent", "delete", "65535", "2"], "65535..65536"),
            (["persistent", "lookup", "70000", "1"], "start port 70000"),
            (["persistent", "lookup", "-1", "1"], "start port -1"),
            (["persistent", "add", "1"], "COUNT"),
            (["persistent", "add", "x", "1"], "'x'"),
            (["persistent", "list", "--tcp", "--udp"], "--udp"),
            (["persistent", "list", "5"], "arguments: 5"),
            (["persistent", "restore", "--bogus"], "--bogus"),
            (["persistent", "bogus"], "'bogus'")]:
        add(f"cli({', '.join(map(repr, args))})", ("exit 2", None, None), named,
            usage=_usage(args))
    for args, expect, named in [
            (["persistent", "lookup", "5000", "1"], NOT_FOUND, "5000..5000"),
            (["persistent", "delete", "5000", "3", "--udp"], NOT_FOUND, "5000..5002")]:
        add(f"cli({', '.join(map(repr, args))})", ("exit 1",) + expect[1:], named,
            "persistent calls")
    for args in ("'reserve', '1', '--start', str(res.start)",
                 "'run', '--start', str(res.start), '--', 'true'"):
        add(f"cli({args})", ("exit 1", 98, 10048), "EADDRINUSE")  # a port taken: a failure
    add("cli('reserve', '1', env={'PORTRESERVE_BACKEND': 'bogus'})", ("exit 2", None, None),
        "PORTRESERVE_BACKEND='bogus'")
    add("cli('persistent', 'list', env={'PORTRESERVE_BACKEND': 'rust'})",
        ("exit 2", None, None), "PORTRESERVE_BACKEND='rust'")
    return out


# The runner (in the namespace child).

def _bound_sockets() -> list:
    """(family, type, port) of every socket of this process."""
    from helpers import own_sockets
    out = []
    for _, s in own_sockets():
        try:
            out.append((s.family, s.type, s.getsockname()[1] if s.family in
                        (socket.AF_INET, socket.AF_INET6) else str(s.getsockname())))
        except OSError:
            pass
    return sorted(out, key=repr)


def _snapshot(state_dir: str, cport) -> dict:
    snap = {"state_dir": sorted(os.listdir(state_dir)) if os.path.exists(state_dir) else None,
            "threads": set(threading.enumerate()),
            # Operations in flight, completions not yet read, sockets attached
            # (the Windows port's and the thread-pool port's own records).
            "completion port": {name: len(getattr(cport, name)) for name in
                                ("_pending", "_ready", "_attached", "_done")
                                if hasattr(cport, name)}}
    if LINUX:
        from portreserve import _posix
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            kernel = f.read()
        snap.update({"fds": sorted(os.listdir("/proc/self/fd")), "bound": _bound_sockets(),
                     "kernel": kernel, "blocks": sorted(_posix._blocks),
                     "associated": len(_posix._associated)})
    return snap


def _changes(before: dict, after: dict) -> list[str]:
    out = [f"{k}: {before[k]} -> {after[k]}" for k in before
           if k != "threads" and before[k] != after[k]]
    # A thread that ended (an idle worker) is no trace; a new one is.
    if after["threads"] - before["threads"]:
        out.append(f"new threads: {sorted(t.name for t in after['threads'] - before['threads'])}")
    return out


def _sockets_untouched(objs: dict, res) -> str | None:
    """Whether the case's fresh sockets are still open, unbound and unassociated.

    Each must still bind to a port of its own choosing; the TCP ones outside
    the reservation (associated, they would get one of its ports or fail).
    """
    block = range(res.start, res.start + res.count) if res is not None else range(0)
    for name, host in (("tcp", "127.0.0.1"), ("tcp6", "::1"), ("udp", "127.0.0.1")):
        sock = objs[name]
        if sock.fileno() == -1:
            return f"{name} was closed"
        try:
            port = sock.getsockname()[1]
        except OSError:  # Windows: an unbound socket has no name
            port = 0
        if port:
            return f"{name} was left bound to port {port}"
        try:
            sock.bind((host, 0))
        except OSError as exc:
            return f"{name} no longer binds to ({host!r}, 0): {exc!r}"
        if name != "udp" and sock.getsockname()[1] in block:
            return f"{name} was left associated: it got port {sock.getsockname()[1]} of {res}"
    return None


def _block_untouched(res) -> str | None:
    """Whether the reservation still hands out every one of its ports."""
    if res is None:
        return None
    taken = []
    try:
        for _ in range(res.count):
            taken.append(res.socket())
    except Exception as exc:
        return f"{res} handed out only {len(taken)} ports: {exc!r}"
    finally:
        for sock in taken:
            sock.close()
    return None


class CliResult(Exception):
    def __init__(self, status: int, stderr: str) -> None:
        super().__init__(status, stderr)
        self.status, self.stderr = status, stderr


def _cli(*args: str, env: dict | None = None) -> None:
    r = subprocess.run([sys.executable, "-m", "portreserve", *args], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, **(env or {})))
    raise CliResult(r.returncode, r.stderr)


def run_case(case: dict, state_dir: str) -> str | None:
    """None if the case behaves; else what went wrong."""
    import portreserve
    from portreserve import lowlevel
    aio = portreserve.aio
    objs = {"tcp": socket.socket(), "tcp6": socket.socket(socket.AF_INET6),
            "udp": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
            "closed": socket.socket(), "bound": socket.socket()}
    if hasattr(socket, "AF_UNIX"):
        objs["unix"] = socket.socket(socket.AF_UNIX)
        objs["unixdgram"] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    objs["closed"].close()
    objs["bound"].bind(("127.0.0.1", 0))
    res = released = None
    if "reservation" in case["needs"]:
        res = portreserve.reserve(2)
        res.token  # drawn at first use: not by the call under test
        released = portreserve.reserve(1)
        released.release()
    cport = portreserve.CompletionPort()
    closed_port = portreserve.CompletionPort()
    closed_port.close()
    env = {"portreserve": portreserve, "lowlevel": lowlevel, "aio": aio, "socket": socket,
           "res": res, "released": released, "cport": cport, "closed_port": closed_port,
           "run": asyncio.run, "cli": _cli, **objs}
    before = _snapshot(state_dir, cport)
    try:
        try:
            result = eval(case["code"], env)
            if hasattr(result, "exception"):  # an Overlapped: its error counts
                exc = result.exception(timeout=30)
                if exc is not None:
                    raise exc
            return f"no error: returned {result!r}"
        except CliResult as exc:
            problem = _check_cli(case, exc)
            if problem:
                return problem
        except BaseException as exc:
            problem = _check_error(case, exc)
            if problem:
                return problem
        changed = _changes(before, _snapshot(state_dir, cport))
        if changed:
            return "state changed: " + ", ".join(changed)
        return _sockets_untouched(objs, res) or _block_untouched(res)
    finally:
        if res is not None:
            res.close()
        cport.close()
        for s in objs.values():
            s.close()


def _check_error(case: dict, exc: BaseException) -> str | None:
    import portreserve
    got = f"{type(exc).__name__}: {exc}"
    if case["cls"] == "TypeError":
        if not isinstance(exc, TypeError) or isinstance(exc, portreserve.PortReservationError):
            return f"expected TypeError, got {got}\n{traceback.format_exc()}"
    else:
        if type(exc).__name__ != case["cls"]:
            return f"expected {case['cls']}, got {got}\n{traceback.format_exc()}"
        if (exc.errno, exc.winerror) != (case["errno"], case["winerror"]):
            return f"expected errno {case['errno']} winerror {case['winerror']}, got {got}"
    if case["names"] and case["names"] not in str(exc):
        return f"message does not name {case['names']!r}: {got}"
    return None


def _check_cli(case: dict, result: CliResult) -> str | None:
    status = int(case["cls"].split()[1])
    if result.status != status:
        return f"expected status {status}, got {result.status}: {result.stderr}"
    if "Traceback" in result.stderr:
        return f"a traceback: {result.stderr}"
    lines = result.stderr.splitlines()
    if status == 1:
        want = f"[errno {case['errno']}, winerror {case['winerror']}]"
        if len(lines) != 1 or not lines[0].startswith("portreserve: ") or want not in lines[0]:
            return f"expected one line 'portreserve: ... {want}', got {result.stderr!r}"
    if case["usage"]:  # argparse's form: the command's usage, then one error line
        if not lines or not lines[0].startswith(case["usage"]):
            return f"expected {case['usage']!r}..., got {result.stderr!r}"
        if ": error: " not in lines[-1] or case["names"] not in lines[-1]:
            return f"expected a last line '...: error: ... {case['names']}', got {result.stderr!r}"
    if case["names"] and case["names"] not in result.stderr:
        return f"message does not name {case['names']!r}: {result.stderr!r}"
    if case["names"] and "PORTRESERVE_BACKEND" in case["names"]:
        if len(result.stderr.splitlines()) != 1:
            return f"expected one line, got {result.stderr!r}"
    return None


def _lacking() -> dict:
    """Why this system cannot run the cases that need each thing it lacks."""
    import portreserve
    from portreserve import lowlevel
    out = {n: f"needs socket.{n}, which Python on {sys.platform} does not have"
           for n in ("AF_UNIX", "AF_PACKET") if not hasattr(socket, n)}
    try:
        portreserve.reserve(1).release()
    except portreserve.NotSupported as exc:  # Wine: no SIO_ACQUIRE_PORT_RESERVATION
        out["reservation"] = f"needs a runtime reservation, which this system refuses: {exc}"
    # Calls with arguments of the right form (an unknown token, a block not
    # reserved): only a system that implements them can answer.
    with socket.socket() as sock:
        probes = {"runtime calls": lambda: lowlevel.associate_port_reservation(sock, 12345),
                  "persistent calls": lambda: portreserve.lookup_persistent(5000, 1)}
        for name, probe in probes.items():
            try:
                probe()
            except portreserve.NotSupported as exc:
                out[name] = f"valid arguments, answered by a call this system lacks: {exc}"
            except portreserve.PortReservationError:
                pass
    return out


def main() -> None:
    """Print {case id: None (it behaves) | what went wrong | {"skip": why}} as JSON."""
    state_dir = os.environ["PORTRESERVE_STATE_DIR"]
    lacking = _lacking()
    results: dict = {}
    for case in cases():
        missing = [lacking[n] for n in case["needs"] if n in lacking]
        results[case["id"]] = {"skip": missing[0]} if missing else run_case(case, state_dir)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
