"""Persistent reservations on Linux: the saved store and the kernel's reserved list.

Every test runs in a private network namespace (helpers.in_netns), with its
own PORTRESERVE_STATE_DIR, so neither the host's sysctls nor its
/var/lib/portreserve are touched.  Child processes started inside a test
share its namespace, as separate programs on one host would.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap

import pytest

from helpers import ROOT, in_netns

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux store")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "persistent_worker.py")

# Prepended to every namespace child: small checks in the reference pages' words.
PRELUDE = f"""
import json, os, random, signal, socket, subprocess, sys, textwrap, time
import portreserve
from portreserve import (AccessDenied, InvalidParameter, ReservationConflict,
                         ReservationExhausted, ReservationNotFound, lowlevel)
from portreserve import _linux_reserved_ports

KLIST = "/proc/sys/net/ipv4/ip_local_reserved_ports"
WORKER = {WORKER!r}

def kernel():
    return open(KLIST).read().strip()

def set_kernel(text):
    with open(KLIST, "w") as f:
        f.write(text or "\\n")

def saved():
    "The state file's contents, or None; it must always parse."
    names = [n for n in os.listdir(os.environ["PORTRESERVE_STATE_DIR"]) if n.endswith(".json")]
    assert len(names) <= 1, names
    if not names:
        return None
    with open(os.path.join(os.environ["PORTRESERVE_STATE_DIR"], names[0])) as f:
        return json.load(f)

def fails(cls, winerror, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except cls as exc:
        assert exc.winerror == winerror, (exc, exc.winerror)
        return exc
    raise AssertionError(f"{{fn.__name__}}{{args}} did not raise {{cls.__name__}}")

def child(*parts, **kwargs):
    "Run the code parts in another process in this namespace; return its stdout."
    code = "\\n".join(textwrap.dedent(part) for part in parts)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, **kwargs)
    assert r.returncode == 0, r.stderr
    return r.stdout

def as_other(code, *args):
    "Run code as uid 65534 (the system's python3: standard library only), args in sys.argv."
    r = subprocess.run(["/usr/bin/python3", "-c", textwrap.dedent(code), *map(str, args)],
                       user=65534, group=65534, extra_groups=[], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout

def tree(path):
    "Every entry under path: name -> (mode, uid, link target or content)."
    out = {{}}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            what = (os.readlink(p) if os.path.islink(p) else
                    open(p, "rb").read() if os.path.isfile(p) else None)
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_uid, what)
    return out

def cli(*args, env=None):
    "The portreserve command in this namespace: (status, stderr)."
    r = subprocess.run([sys.executable, "-m", "portreserve", *args], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, **(env or {{}})))
    return r.returncode, r.stderr

def ports(text):
    "The kernel list text as a set of ports."
    out = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out
"""


def run(code: str, timeout: float = 120) -> str:
    return in_netns(PRELUDE + textwrap.dedent(code), timeout=timeout)


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "state")
    monkeypatch.setenv("PORTRESERVE_STATE_DIR", path)
    return path


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_create_lookup_list_bind_delete(proto):
    out = run(f"""
        proto = {proto!r}
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        set_kernel("5001,7000")  # entries someone else put there: they stay
        assert portreserve.list_persistent() == []
        fails(ReservationNotFound, 1168, portreserve.lookup_persistent, 5000, 4, protocol=proto)

        token = portreserve.create_persistent(5000, 4, protocol=proto)
        assert 0 < token < 2**64
        assert kernel() == "5000-5003,7000", kernel()
        assert portreserve.lookup_persistent(5000, 4, protocol=proto) == token
        lookup = getattr(lowlevel, f"lookup_persistent_{{proto}}_port_reservation")
        assert lookup(5000, 4) == token
        [r] = portreserve.list_persistent()
        assert (r.start, r.count, r.protocol, r.token, r.applied) == (5000, 4, proto, token, True)
        assert portreserve.list_persistent(protocol=proto) == [r]
        other = "udp" if proto == "tcp" else "tcp"
        assert portreserve.list_persistent(protocol=other) == []
        st = os.stat(os.environ["PORTRESERVE_STATE_DIR"])
        assert st.st_mode & 0o777 == 0o755, oct(st.st_mode)

        # Another process sees the same token; the kernel knows nothing of it.
        seen = child(f"import portreserve; print(portreserve.lookup_persistent(5000, 4, protocol={{proto!r}}))")
        assert int(seen) == token

        # Binding from the token takes the first port of the block that binds.
        a = socket.socket(socket.AF_INET, kind)
        assert portreserve.bind(a, token) == 5000
        b = socket.socket(socket.AF_INET6, kind)  # dual-stack [::] clashes with 0.0.0.0:5000
        assert portreserve.bind(b, token) == 5001
        c = socket.socket(socket.AF_INET, kind)
        lowlevel.associate_port_reservation(c, token)
        lowlevel.bind_associated(c, ("127.0.0.1", 0))
        assert c.getsockname()[1] == 5002
        d = socket.socket(socket.AF_INET, kind)
        assert portreserve.bind(d, token) == 5003
        fails(ReservationExhausted, 10048, portreserve.bind, socket.socket(socket.AF_INET, kind), token)
        # A socket of the other protocol is refused.
        wrong = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "tcp" else socket.SOCK_STREAM)
        fails(InvalidParameter, 10022, portreserve.bind, wrong, token)
        for s in (a, b, c, d):
            s.close()

        portreserve.delete_persistent(5000, 4, protocol=proto)
        assert kernel() == "5001,7000", kernel()  # only what we added is gone
        fails(ReservationNotFound, 1168, portreserve.lookup_persistent, 5000, 4, protocol=proto)
        fails(ReservationNotFound, 1168, portreserve.delete_persistent, 5000, 4, protocol=proto)
        fails(ReservationNotFound, 1168, portreserve.bind, socket.socket(socket.AF_INET, kind), token)
        assert portreserve.list_persistent() == []
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_tcp_and_udp_share_the_kernel_list():
    run("""
        t = lowlevel.create_persistent_tcp_port_reservation(6000, 4)
        u = lowlevel.create_persistent_udp_port_reservation(6002, 4)
        assert t != u
        assert kernel() == "6000-6005", kernel()
        # The same ports for both protocols are two reservations.
        u2 = portreserve.create_persistent(6000, 2, protocol="udp")
        assert [(r.protocol, r.start) for r in portreserve.list_persistent()] == [
            ("tcp", 6000), ("udp", 6000), ("udp", 6002)]
        lowlevel.delete_persistent_tcp_port_reservation(6000, 4)
        assert kernel() == "6000-6005", kernel()  # the UDP blocks still cover them
        lowlevel.delete_persistent_udp_port_reservation(6000, 2)
        assert kernel() == "6002-6005", kernel()
        lowlevel.delete_persistent_udp_port_reservation(6002, 4)
        assert kernel() == "", kernel()
    """)


def test_overlap_and_busy_ports_conflict():
    run("""
        token = portreserve.create_persistent(5100, 10)
        before = (kernel(), saved())
        for start, count in ((5100, 10), (5095, 6), (5109, 1), (5102, 2), (5000, 1000)):
            exc = fails(ReservationConflict, 32, portreserve.create_persistent, start, count)
            assert exc.errno == 98  # EADDRINUSE
        assert (kernel(), saved()) == before  # nothing changed

        # A port bound by another process (even idle, not listening) is in use.
        holder = subprocess.Popen([sys.executable, "-c",
            "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', 5205)); "
            "print('bound', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "bound"
        fails(ReservationConflict, 32, portreserve.create_persistent, 5200, 10)
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u.bind(("::", 5300))
        fails(ReservationConflict, 32, portreserve.create_persistent, 5300, 1, protocol="udp")
        assert (kernel(), saved()) == before
        # Busy for TCP is not busy for UDP, and the other way round.
        portreserve.create_persistent(5200, 10, protocol="udp")
        portreserve.create_persistent(5300, 1, protocol="tcp")
        holder.stdin.close(); holder.wait()
        u.close()
        portreserve.create_persistent(5200, 10)  # free again
        assert kernel() == "5100-5109,5200-5209,5300", kernel()
    """)


def test_missing_reservation_is_not_found():
    run("""
        for proto in ("tcp", "udp"):
            fails(ReservationNotFound, 1168, portreserve.lookup_persistent, 8000, 1, protocol=proto)
            fails(ReservationNotFound, 1168, portreserve.delete_persistent, 8000, 1, protocol=proto)
        portreserve.create_persistent(8000, 4)
        # lookup and delete need the exact block, as on Windows.
        fails(ReservationNotFound, 1168, portreserve.lookup_persistent, 8000, 3)
        fails(ReservationNotFound, 1168, portreserve.delete_persistent, 8001, 3)
        fails(ReservationNotFound, 1168, portreserve.lookup_persistent, 8000, 4, protocol="udp")
        exc = fails(ReservationNotFound, 1168, portreserve.bind, socket.socket(), 12345)
        assert isinstance(exc, LookupError) and exc.errno == 2
        assert kernel() == "8000-8003"
    """)


def test_bad_arguments_change_nothing():
    run("""
        set_kernel("9000")
        bad = [(0, 1), (1000, 0), (65535, 2), (65000, 537), (70000, 1), (-1, 1), (1, 65536)]
        for start, count in bad:
            for proto in ("tcp", "udp"):
                for fn in (portreserve.create_persistent, portreserve.lookup_persistent,
                           portreserve.delete_persistent):
                    exc = fails(InvalidParameter, 87, fn, start, count, protocol=proto)
                    assert exc.errno == 22 and isinstance(exc, ValueError)
            for fn in (lowlevel.create_persistent_tcp_port_reservation,
                       lowlevel.create_persistent_udp_port_reservation):
                fails(InvalidParameter, 87, fn, start, count)
        fails(InvalidParameter, 87, portreserve.create_persistent, 1000, 1, protocol="sctp")
        fails(InvalidParameter, 87, portreserve.list_persistent, protocol="icmp")
        fails(InvalidParameter, 10022, portreserve.bind, socket.socket(), 0)
        assert kernel() == "9000"
        assert not os.path.exists(os.environ["PORTRESERVE_STATE_DIR"])  # nothing written
        # The largest legal block is fine.
        portreserve.create_persistent(65535, 1)
        assert kernel() == "9000,65535"
    """)


@pytest.fixture
def shared_dir():
    """A state dir parent that uid 65534 can reach (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="portreserve-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(not ROOT, reason="needs root to switch a child to uid 65534")
def test_unprivileged_child_is_denied(shared_dir, monkeypatch):
    root_dir = os.path.join(shared_dir, "root-owned")
    nobody_dir = os.path.join(shared_dir, "nobody-owned")
    os.mkdir(nobody_dir)
    os.chown(nobody_dir, 65534, 65534)
    monkeypatch.setenv("PORTRESERVE_STATE_DIR", root_dir)
    # The child imports everything as root, then drops to uid 65534: that
    # user cannot reach this interpreter's files, and the kernel checks the
    # writer's credentials at the call, not at import.
    run(f"""
        token = portreserve.create_persistent(4000, 2)
        before = kernel()
        drop = '''
            import os, portreserve
            from portreserve import _linux_reserved_ports, AccessDenied, ReservationNotFound
            os.setgroups([]); os.setgid(65534); os.setuid(65534)
            assert os.geteuid() == 65534
            def denied(fn, *args, **kwargs):
                try:
                    fn(*args, **kwargs)
                except AccessDenied as exc:
                    assert exc.winerror == 5 and exc.errno == 13, exc
                    assert isinstance(exc, PermissionError)
                    return str(exc)
                raise AssertionError(fn.__name__)
        '''
        # Same store, owned by root: reading works, changing is denied.
        out = child(drop, '''
            print(portreserve.lookup_persistent(4000, 2))
            print(len(portreserve.list_persistent()))
            denied(portreserve.create_persistent, 4100, 1)
            denied(portreserve.delete_persistent, 4000, 2)
            denied(_linux_reserved_ports.restore)
        ''')
        assert out.split() == [str(token), "1"], out
        assert kernel() == before
        assert portreserve.lookup_persistent(4000, 2) == token

        # A store that uid 65534 may write: the kernel itself refuses the list.
        env = dict(os.environ, PORTRESERVE_STATE_DIR={nobody_dir!r})
        out = child(drop, '''
            print(denied(portreserve.create_persistent, 4100, 1, protocol="udp"))
            print(denied(portreserve.create_persistent, 4000, 2))
        ''', env=env)
        assert "ip_local_reserved_ports" in out, out
        assert kernel() == before
        assert not [n for n in os.listdir({nobody_dir!r}) if n.endswith(".json")]
        print("ok")
    """)


def test_automatic_ports_never_land_in_a_persistent_block():
    run("""
        # A 12-port ephemeral range, 8 of them persistently reserved.
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write("41000 41011")
        block, rest = range(41000, 41008), range(41008, 41012)

        def auto_ports(kind, family=socket.AF_INET, n=60):
            seen = set()
            for _ in range(n):
                with socket.socket(family, kind) as s:
                    s.bind(("", 0))
                    seen.add(s.getsockname()[1])
            return seen

        # Without the reservation the kernel does pick ports of the block.
        assert auto_ports(socket.SOCK_STREAM) & set(block)

        portreserve.create_persistent(41000, 8)
        portreserve.create_persistent(41000, 8, protocol="udp")
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            for family in (socket.AF_INET, socket.AF_INET6):
                seen = auto_ports(kind, family)
                assert seen <= set(rest), seen

        # connect() picks its local port the same way.
        server = socket.socket()
        server.bind(("127.0.0.1", 9000)); server.listen(100)
        for _ in range(40):
            with socket.socket() as c:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\1\\0\\0\\0\\0\\0\\0\\0")
                c.connect(("127.0.0.1", 9000))
                assert c.getsockname()[1] in rest, c.getsockname()
                server.accept()[0].close()
        for _ in range(40):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.connect(("127.0.0.1", 9001))
                assert u.getsockname()[1] in rest
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(b"x", ("127.0.0.1", 9001))
                assert u.getsockname()[1] in rest

        # With the rest taken, bind(0) fails rather than use the block.
        held = [socket.socket() for _ in rest]
        for s, p in zip(held, rest):
            s.bind(("", p))
        with socket.socket() as s:
            try:
                s.bind(("", 0))
                raise AssertionError(f"bind(0) got {s.getsockname()}")
            except OSError as exc:
                assert exc.errno == 98
        # The block still serves explicit binds from the token.
        s = socket.socket()
        assert portreserve.bind(s, portreserve.lookup_persistent(41000, 8)) == 41000
    """)


def test_state_outlives_the_process_and_is_shared():
    run("""
        code = "import portreserve; print(portreserve.create_persistent(4500, 3, protocol='udp'))"
        token = int(child(code))
        assert kernel() == "4500-4502"
        out = child('''
            import portreserve, socket
            print(portreserve.lookup_persistent(4500, 3, protocol="udp"))
            print(portreserve.list_persistent())
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            print(portreserve.bind(s, portreserve.lookup_persistent(4500, 3, protocol="udp")))
        ''')
        lines = out.splitlines()
        assert int(lines[0]) == token
        assert "applied=True" in lines[1] and str(token) in lines[1]
        assert lines[2] == "4500"
        child("import portreserve; portreserve.delete_persistent(4500, 3, protocol='udp')")
        assert kernel() == "" and portreserve.list_persistent() == []
    """)


def test_kill9_during_create_delete_cycles_never_corrupts():
    run("""
        import importlib.util
        spec = importlib.util.spec_from_file_location("worker", WORKER)
        worker = importlib.util.module_from_spec(spec); spec.loader.exec_module(worker)

        set_kernel("20100,30000-30002")  # someone else's entries
        others = ports(kernel())
        anchor = portreserve.create_persistent(20100, 2, protocol="udp")
        rng = random.Random(1234)
        for round_ in range(10):
            base = 21000 + round_ * 250
            p = subprocess.Popen([sys.executable, WORKER, "cycles", str(base), "1000"],
                                 stdout=subprocess.PIPE, text=True)
            want = rng.randint(5, 150)
            lines = [p.stdout.readline() for _ in range(want)]
            time.sleep(rng.random() * 0.004)  # land anywhere inside the next call
            p.kill(); p.wait()
            assert p.returncode == -signal.SIGKILL, p.returncode
            lines += p.stdout.readlines()
            created = [int(l.split()[1]) for l in lines if l.startswith("created")]
            deleted = {int(l.split()[1]) for l in lines if l.startswith("deleted")}

            state = saved()  # always parses
            reserved = {(r["protocol"], r["start"], r["count"]): r["token"]
                        for r in state["reservations"]}
            covered = set()
            for (_, start, count) in reserved:
                covered |= set(range(start, start + count))
            this_round = [k for k in reserved if base <= k[1] < base + 250]
            # Never a listed port that is neither someone else's nor reserved.
            assert ports(kernel()) <= others | covered, (kernel(), reserved)
            assert ports(",".join("%d-%d" % tuple(s) for s in state["added"])) <= covered
            # The last reservation reported created is saved (the worker deletes
            # block i-1 only after creating block i, so i-1 may be in flight).
            last = max(created)
            assert last not in deleted and reserved.get(worker.block(base, last)), (last, reserved)
            live = {i for i in created if i not in deleted}
            assert live <= {last - 1, last}, live
            assert reserved[("udp", 20100, 2)] == anchor
            # At most the call in flight differs from what was reported.
            assert len(this_round) <= len(set(created) - deleted) + 1, (this_round, lines[-3:])

            # The next change finishes an interrupted one: list and kernel agree.
            portreserve.create_persistent(20500 + round_, 1)
            assert all(r.applied for r in portreserve.list_persistent())
            # ... and removes the temporaries a killed writer left.
            names = os.listdir(os.environ["PORTRESERVE_STATE_DIR"])
            assert not [n for n in names if n.endswith(".tmp")], names
            covered |= {20500 + round_}
            assert ports(kernel()) == others | covered, kernel()
        print("ok")
    """, timeout=200)


def test_eight_processes_at_once_only_non_overlapping_succeed():
    run("""
        # (protocol, start, count): A/B overlap; C, D disjoint; E is UDP over A;
        # F overlaps G and H, which are disjoint from each other.
        blocks = [("tcp", 30000, 10), ("tcp", 30005, 10), ("tcp", 30100, 5),
                  ("tcp", 30200, 5), ("udp", 30000, 10), ("udp", 30300, 10),
                  ("udp", 30305, 1), ("udp", 30309, 7)]
        def overlap(a, b):
            return a[0] == b[0] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]
        for trial in range(3):
            at = time.time() + 1.0
            procs = [subprocess.Popen([sys.executable, WORKER, "once", proto, str(start),
                                       str(count), repr(at)], stdout=subprocess.PIPE, text=True)
                     for proto, start, count in blocks]
            results = [p.communicate(timeout=60)[0].split() for p in procs]
            won = [b for b, r in zip(blocks, results) if r[0] == "ok"]
            lost = [b for b, r in zip(blocks, results) if r[0] != "ok"]
            assert all(r == ["conflict", "32"] for r in results if r[0] != "ok"), results
            # The winners never overlap; every loser overlaps a winner.
            assert not any(overlap(a, b) for a in won for b in won if a is not b), won
            assert all(any(overlap(l, w) for w in won) for l in lost), (won, lost)
            assert all(b in won for b in blocks[2:5])  # C, D and E always win
            listed = portreserve.list_persistent()
            assert sorted((r.protocol.value, r.start, r.count) for r in listed) == sorted(won)
            tokens = {int(r[1]) for r in results if r[0] == "ok"}
            assert {r.token for r in listed} == tokens
            want = set()
            for _, start, count in won:
                want |= set(range(start, start + count))
            assert ports(kernel()) == want, kernel()
            for r in listed:
                portreserve.delete_persistent(r.start, r.count, protocol=r.protocol)
            assert kernel() == ""
    """)


def test_restore_after_a_reboot():
    run("""
        set_kernel("3000")
        t = portreserve.create_persistent(5000, 2)
        u = portreserve.create_persistent(5001, 2, protocol="udp")
        assert kernel() == "3000,5000-5002"

        # Same boot, but someone rewrote the list: not applied until restore.
        set_kernel("3000")
        assert [r.applied for r in portreserve.list_persistent()] == [False, False]
        assert [r.applied for r in _linux_reserved_ports.restore()] == [True, True]
        assert kernel() == "3000,5000-5002"

        # A reboot: an empty kernel list and another boot id (the hook of
        # _linux_reserved_ports's docstring; a child process, so no state is cached).
        set_kernel("5000")  # at this boot someone else lists 5000 first
        fake = os.path.join(os.environ["PORTRESERVE_STATE_DIR"], "..", "boot_id")
        with open(fake, "w") as f:
            f.write("00000000-1111-2222-3333-444444444444\\n")
        hook = f"from portreserve import _linux_reserved_ports; _linux_reserved_ports.BOOT_ID_PATH = {fake!r}\\n"
        out = child(hook, '''
            import portreserve
            print([r.applied for r in portreserve.list_persistent()])
            print(portreserve.lookup_persistent(5000, 2))
            print([(r.start, r.token, r.applied) for r in _linux_reserved_ports.restore()])
            print(open("/proc/sys/net/ipv4/ip_local_reserved_ports").read().strip())
            portreserve.delete_persistent(5000, 2)
            print(open("/proc/sys/net/ipv4/ip_local_reserved_ports").read().strip())
            portreserve.delete_persistent(5001, 2, protocol="udp")
            print(open("/proc/sys/net/ipv4/ip_local_reserved_ports").read().strip())
        ''')
        lines = out.splitlines()
        assert lines[0] == "[False, False]", lines
        assert int(lines[1]) == t  # tokens are kept across restore
        assert lines[2] == str([(5000, t, True), (5001, u, True)]), lines
        assert lines[3] == "5000-5002"
        # What this boot's restore added goes; the 5000 listed by another stays.
        assert lines[4] == "5000-5002" and lines[5] == "5000", lines
        assert saved()["boot_id"] == "00000000-1111-2222-3333-444444444444"
    """)



# The store is a privilege boundary: root changes it, and anyone may have
# prepared the directory it is pointed at (PORTRESERVE_STATE_DIR under /tmp).

@pytest.mark.skipif(not ROOT, reason="needs root and another uid")
def test_hostile_state_directory_is_refused(shared_dir):
    os.chmod(shared_dir, 0o1777)  # like /tmp: anyone may make a directory here
    run(f"""
        base = {shared_dir!r}
        victim = os.path.join(base, "victim")
        with open(victim, "w") as f:
            f.write("precious\\n")
        os.chmod(victim, 0o600)
        key = _linux_reserved_ports._netns_key()
        # uid 65534 prepares a store: every name root would write, planted as a
        # link (the old fixed temporary, the state file, a dangling lock).
        as_other('''
            import os, sys
            base, key = sys.argv[1], sys.argv[2]
            hostile = os.path.join(base, "hostile")
            os.mkdir(hostile, 0o755)
            for name in (key + ".json.tmp", key + ".json", "." + key + ".json.0.tmp"):
                os.symlink(os.path.join(base, "victim"), os.path.join(hostile, name))
            os.symlink(os.path.join(base, "made-through-lock"), os.path.join(hostile, "lock"))
        ''', base, key)
        # Root-owned directories that others may write through their mode.
        for mode in (0o777, 0o775, 0o757):
            d = os.path.join(base, "writable-%o" % mode)
            os.mkdir(d)
            os.chmod(d, mode)
            os.symlink(victim, os.path.join(d, key + ".json"))
        good = os.path.join(base, "good")
        os.mkdir(good, 0o755)
        os.symlink(good, os.path.join(base, "link-to-good"))
        set_kernel("3000")
        before = tree(base)

        cases = [("hostile", "owned by uid 65534"), ("writable-777", "mode 0777"),
                 ("writable-775", "mode 0775"), ("writable-757", "mode 0757"),
                 ("link-to-good", "symbolic link")]
        for name, why in cases:
            env = {{"PORTRESERVE_STATE_DIR": os.path.join(base, name)}}
            for args in (["persistent", "add", "5000", "2"], ["persistent", "delete", "5000", "2"],
                         ["persistent", "restore"], ["persistent", "list"],
                         ["persistent", "lookup", "5000", "2", "--udp"]):
                status, err = cli(*args, env=env)
                assert status == 1 and len(err.splitlines()) == 1, (args, err)
                assert "refusing the state directory " + os.path.join(base, name) in err, err
                assert why in err and "[errno 13, winerror 5]" in err, err
            os.environ.update(env)
            exc = fails(AccessDenied, 5, portreserve.create_persistent, 5000, 2)
            assert exc.errno == 13
            fails(AccessDenied, 5, portreserve.bind, socket.socket(), 99)
        assert tree(base) == before  # nothing touched, nothing made through the links
        assert not os.path.lexists(os.path.join(base, "made-through-lock"))
        assert open(victim).read() == "precious\\n"
        assert kernel() == "3000"
        print("ok")
    """)


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_links_inside_our_own_store_are_never_followed(shared_dir):
    run(f"""
        base = {shared_dir!r}
        victim = os.path.join(base, "victim")
        with open(victim, "w") as f:
            f.write("precious\\n")
        store = os.environ["PORTRESERVE_STATE_DIR"] = os.path.join(base, "store")
        os.mkdir(store, 0o755)
        key = _linux_reserved_ports._netns_key()
        state = os.path.join(store, key + ".json")

        # A link at the old fixed temporary name: no longer a name we write.
        os.symlink(victim, state + ".tmp")
        token = portreserve.create_persistent(5000, 2)
        assert open(victim).read() == "precious\\n" and os.path.islink(state + ".tmp")
        assert saved()["reservations"][0]["token"] == token
        assert kernel() == "5000-5001"

        # A link as the state file: damaged, for readers and writers; nothing applied.
        os.replace(state, os.path.join(base, "real.json"))
        os.symlink(os.path.join(base, "real.json"), state)
        set_kernel("")
        for fn, args in ((portreserve.create_persistent, (6000, 1)),
                         (portreserve.lookup_persistent, (5000, 2)),
                         (portreserve.list_persistent, ())):
            exc = fails(portreserve.PortReservationError, 1392, fn, *args)
            assert exc.errno == 5 and state in str(exc) and "symbolic link" in str(exc), exc
        assert kernel() == ""
        os.unlink(state)

        # A dangling link as the lock: refused, and nothing made at its target.
        os.unlink(os.path.join(store, "lock"))
        os.symlink(os.path.join(base, "made-through-lock"), os.path.join(store, "lock"))
        exc = fails(portreserve.PortReservationError, 31, portreserve.create_persistent, 6000, 1)
        assert os.path.join(store, "lock") in str(exc) and exc.errno == 40, exc  # ELOOP
        assert not os.path.lexists(os.path.join(base, "made-through-lock"))
        assert kernel() == "" and open(victim).read() == "precious\\n"
        print("ok")
    """)


@pytest.mark.skipif(not ROOT, reason="needs root and another uid")
def test_nobody_else_can_hold_the_lock(shared_dir):
    run(f"""
        store = os.environ["PORTRESERVE_STATE_DIR"] = os.path.join({shared_dir!r}, "store")
        portreserve.create_persistent(5000, 1)
        lock = os.path.join(store, "lock")
        st = os.stat(lock)
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0), oct(st.st_mode)
        # Another user cannot even open it, so cannot flock it.
        assert as_other('''
            import sys
            try:
                open(sys.argv[1])
            except PermissionError:
                print("denied")
        ''', lock).strip() == "denied"

        # A lock left readable (as an older version made it), held by another
        # user who opened it then: root's change does not wait for that user.
        os.chmod(lock, 0o644)
        holder = subprocess.Popen(["/usr/bin/python3", "-c", '''if 1:
            import fcntl, sys
            f = open(sys.argv[1])
            fcntl.flock(f, fcntl.LOCK_EX)
            print("held", flush=True)
            sys.stdin.read()
        ''', lock], user=65534, group=65534, extra_groups=[], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        portreserve.create_persistent(5001, 1)
        assert os.stat(lock).st_mode & 0o777 == 0o600 and os.stat(lock).st_ino != st.st_ino
        holder.stdin.close(); holder.wait()

        # Held by a process of our own uid: the wait is bounded, the error clear.
        holder = subprocess.Popen([sys.executable, "-c", '''if 1:
            import fcntl, sys
            f = open(sys.argv[1], "r+")
            fcntl.flock(f, fcntl.LOCK_EX)
            print("held", flush=True)
            sys.stdin.read()
        ''', lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        before = (kernel(), saved())
        _linux_reserved_ports.LOCK_TIMEOUT = 0.5
        exc = fails(portreserve.PortReservationError, 1460, portreserve.create_persistent, 6000, 1)
        assert exc.errno == 110 and lock in str(exc), exc
        fails(portreserve.PortReservationError, 1460, portreserve.delete_persistent, 5000, 1)
        assert (kernel(), saved()) == before
        holder.stdin.close(); holder.wait()
        portreserve.delete_persistent(5000, 1)  # free again
        print("ok")
    """)


# Valid JSON that is not a state, and files that are no state at all.  Each
# must be "damaged" for every reader and writer, with nothing applied.
DAMAGED = [
    b"", b"null", b"{}", b"[]", b"42", b'"state"', b"\xff\xfe\x00", b"[" * 100000,
    b'{"format": 1, "boot_id": "b", "reservations": [], "added": [[0, 1000000000]]}',
    b'{"format": 1, "boot_id": "b", "reservations": [], "added": [[5, 4]]}',
    b'{"format": 1, "boot_id": "b", "reservations": [], "added": [[5000, 5000]]}',
    b'{"format": 1, "boot_id": "b", "reservations": [], "added": [[1, 2, 3]]}',
    b'{"format": 1, "boot_id": "b", "reservations": [], "added": {}}',
    b'{"format": 2, "boot_id": "b", "reservations": [], "added": []}',
    b'{"format": true, "boot_id": "b", "reservations": [], "added": []}',
    b'{"format": 1, "boot_id": 5, "reservations": [], "added": []}',
    b'{"format": 1, "boot_id": "b", "reservations": {}, "added": []}',
    b'{"format": 1, "boot_id": "b", "reservations": [], "added": [], "more": 1}',
    b'{"format": 1, "boot_id": "b", "reservations": []}',
    b'{"format": 1, "boot_id": "b", "reservations": [null], "added": []}',
    b'{"format": 1, "boot_id": "b", "reservations": [[1, 2]], "added": []}',
] + [
    b'{"format": 1, "boot_id": "b", "added": [], "reservations": [%s]}' % r for r in (
        b'{"protocol": "sctp", "start": 5000, "count": 1, "token": 1}',
        b'{"protocol": "tcp", "start": 0, "count": 1, "token": 1}',
        b'{"protocol": "tcp", "start": 5000, "count": 0, "token": 1}',
        b'{"protocol": "tcp", "start": 65535, "count": 2, "token": 1}',
        b'{"protocol": "tcp", "start": 1, "count": 1000000000, "token": 1}',
        b'{"protocol": "tcp", "start": "5000", "count": 1, "token": 1}',
        b'{"protocol": "tcp", "start": 5000.0, "count": 1, "token": 1}',
        b'{"protocol": "tcp", "start": true, "count": 1, "token": 1}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": 0}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": 18446744073709551616}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": -1}',
        b'{"protocol": "tcp", "start": 5000, "count": 1}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": 1, "x": 0}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": 1e999}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": ' + b"9" * 5000 + b"}",
        b'{"protocol": "tcp", "start": 5000, "count": 2, "token": 1}, '
        b'{"protocol": "tcp", "start": 5001, "count": 1, "token": 2}',
        b'{"protocol": "tcp", "start": 5000, "count": 1, "token": 1}, '
        b'{"protocol": "udp", "start": 6000, "count": 1, "token": 1}',
    )
]


def test_damaged_state_files_are_refused_whole():
    out = run(f"""
        import tracemalloc
        DAMAGED = {DAMAGED!r}
        store = os.environ["PORTRESERVE_STATE_DIR"]
        os.makedirs(store, 0o755)
        path = os.path.join(store, _linux_reserved_ports._netns_key() + ".json")

        def calls():
            sock = socket.socket()
            try:
                yield "create", lambda: portreserve.create_persistent(6000, 1)
                yield "delete", lambda: portreserve.delete_persistent(5000, 1)
                yield "restore", _linux_reserved_ports.restore
                yield "lookup", lambda: portreserve.lookup_persistent(5000, 1)
                yield "list", portreserve.list_persistent
                yield "bind", lambda: portreserve.bind(sock, 1)
            finally:
                sock.close()

        def refused(what):
            for name, fn in calls():
                exc = fails(portreserve.PortReservationError, 1392, fn)
                assert type(exc) is portreserve.PortReservationError, (what, name, exc)
                assert exc.errno == 5, (what, name, exc)
                assert "the state file " + path + " is damaged" in str(exc), (what, name, exc)
            status, err = cli("persistent", "list")
            assert status == 1 and len(err.splitlines()) == 1 and path in err, (what, err)
            assert "None" not in err, err
            assert kernel() == "7000", (what, kernel())  # nothing applied

        set_kernel("7000")
        tracemalloc.start()
        for data in DAMAGED:
            with open(path, "wb") as f:
                f.write(data)
            refused(data[:80])
            with open(path, "rb") as f:
                assert f.read() == data  # left for the administrator, as it was
        # No reader allocates much, whatever the file says (the 77-byte
        # [[0, 10**9]] made every reader allocate over 2 GiB).
        assert tracemalloc.get_traced_memory()[1] < 64 << 20, tracemalloc.get_traced_memory()
        tracemalloc.stop()

        # A valid state that someone else wrote (the forged ports 1024-65535),
        # or that anyone may change: never applied.
        forged = json.dumps({{"format": 1, "boot_id": "b", "added": [[1024, 65535]],
                              "reservations": [{{"protocol": "tcp", "start": 1024,
                                                "count": 64512, "token": 1}}]}})
        with open(path, "w") as f:
            f.write(forged)
        os.chown(path, 65534, 65534)
        refused("owned by 65534")
        os.chown(path, 0, 0)
        os.chmod(path, 0o666)
        refused("mode 0666")
        os.unlink(path)

        # Not a regular file: a FIFO (a reader must not hang), a directory, a
        # file too large for any state (sparse: the size alone says so).
        os.mkfifo(path)
        refused("fifo")
        os.unlink(path)
        os.mkdir(path)
        refused("directory")
        os.rmdir(path)
        with open(path, "wb") as f:
            f.truncate(_linux_reserved_ports.MAX_STATE_BYTES + 1)
        refused("oversized")
        os.unlink(path)

        # Moved away, the store starts afresh.
        portreserve.create_persistent(6000, 1)
        assert kernel() == "6000,7000", kernel()
        print("ok")
    """, timeout=300)
    assert out.strip().endswith("ok")


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs in a private mount namespace")
@pytest.mark.parametrize("free_pages", [0, 1], ids=["full", "nearly-full"])
def test_full_disk_fails_with_enospc_and_keeps_the_old_state(tmp_path, free_pages):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = PRELUDE + textwrap.dedent(f"""
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", {str(mnt)!r}],
                       check=True)
        store = os.environ["PORTRESERVE_STATE_DIR"] = os.path.join({str(mnt)!r}, "state")
        # Sixty one-port blocks: a state of about 4.6 KiB, more than one page.
        for i in range(60):
            portreserve.create_persistent(10000 + 2 * i, 1, protocol="udp" if i % 2 else "tcp")
        [name] = [n for n in os.listdir(store) if n.endswith(".json")]
        path = os.path.join(store, name)
        state = open(path, "rb").read()
        assert len(state) > 4096, len(state)
        listed = kernel()

        # Fill the disk, then give back {free_pages} page(s): the next state
        # does not fit, so its write is refused or cut short.
        filler = os.path.join({str(mnt)!r}, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        for _ in range(1000):
            try:
                os.write(fd, b"x" * 4096)
            except OSError as exc:
                assert exc.errno == 28
                break
        os.close(fd)
        with open(filler, "r+b") as f:
            f.truncate(os.path.getsize(filler) - {free_pages} * 4096)
        st = os.statvfs({str(mnt)!r})
        assert st.f_bavail * st.f_frsize == {free_pages} * 4096, st

        for fn, args in ((portreserve.create_persistent, (20000, 5)),
                         (portreserve.delete_persistent, (10000, 1)),
                         (lowlevel.create_persistent_udp_port_reservation, (20000, 5))):
            exc = fails(portreserve.PortReservationError, 112, fn, *args)
            assert exc.errno == 28 and path in str(exc), exc  # ENOSPC, naming the file
            assert open(path, "rb").read() == state  # the old state, whole
            assert kernel() == listed, kernel()  # the kernel list as it was
            assert sorted(os.listdir(store)) == ["lock", name], os.listdir(store)
        assert portreserve.lookup_persistent(10000, 1) and len(portreserve.list_persistent()) == 60

        os.unlink(filler)  # room again: everything works
        portreserve.create_persistent(20000, 5)
        portreserve.delete_persistent(10000, 1)
        assert "20000-20004" in kernel() and not kernel().startswith("10000,")
        assert len(portreserve.list_persistent()) == 60
        print("ok")
    """)
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    from helpers import run_python
    r = run_python(code, prefix=["unshare", "--net", "--mount", "--propagation", "private"],
                   timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert r.stdout.strip().endswith("ok")
