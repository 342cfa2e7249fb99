"""Runtime reservations on Linux and macOS, checked against the real kernel.

Each test reads like the reference pages' examples: reserve, bind, check
from another process, release, check again.  Where macOS's kernel promises
less (README.md, "On macOS") the test says so: XNU lets a process of the same
uid bind a held port on a specific address when it sets SO_REUSEADDR or
SO_REUSEPORT, so the reuse checks are Linux's.
"""

import errno
import gc
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

import portreserve
from portreserve import ReservationConflict, ReservationExhausted, lowlevel

from helpers import LINUX, ROOT, can_bind, freed, in_netns, open_fds, run_python

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX engine")
linux_only = pytest.mark.skipif(not LINUX, reason="a Linux mechanism")

PROTOCOLS = ["tcp", "udp"]
HOSTS = ["0.0.0.0", "127.0.0.1", "::", "::1"]
NOBODY = 65534


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("host", HOSTS)
def test_other_process_cannot_bind_until_release(protocol, host):
    udp = protocol == "udp"
    res = portreserve.reserve(3, protocol=protocol)
    for port in res.ports:
        assert not can_bind(port, host=host, udp=udp)
    # reuse options on the other side do not help it
    if LINUX or host in ("0.0.0.0", "::"):
        assert not can_bind(res.start, host=host, udp=udp, reuse=True)
    res.release()
    assert freed(res.start, host=host, udp=udp)


@linux_only
@pytest.mark.skipif(not ROOT, reason="needs root to start a child as another uid")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unprivileged_process_cannot_bind(protocol):
    udp = protocol == "udp"
    with portreserve.reserve(2, protocol=protocol) as res:
        for host in ("0.0.0.0", "::"):
            assert not can_bind(res.start + 1, host=host, udp=udp, user=NOBODY, reuse=True)
    assert freed(res.start + 1, udp=udp, user=NOBODY)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_specific_block_and_conflict(protocol):
    with portreserve.reserve(4, protocol=protocol) as first:
        start = first.start
    with portreserve.reserve(4, start=start, protocol=protocol) as res:
        assert list(res.ports) == list(range(start, start + 4))
        with pytest.raises(ReservationConflict) as info:
            portreserve.reserve(2, start=start + 3, protocol=protocol)
        assert info.value.winerror == 10048
    # a port bound by somebody else makes the block conflict too
    family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM) \
            as other:
        other.bind(("::1", start + 1))
        with pytest.raises(ReservationConflict):
            portreserve.reserve(4, start=start, protocol=protocol)
    with portreserve.reserve(4, start=start, protocol=protocol):  # nothing left behind
        pass


AUTOMATIC_PORTS = """
    import socket, sys
    import portreserve
    with open('/proc/sys/net/ipv4/ip_local_port_range', 'w') as f:
        f.write('40000 40009')
    udp = {udp}
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    server = socket.socket(socket.AF_INET, kind)
    server.bind(('127.0.0.1', 5555))
    if not udp:
        server.listen(500)
    res = portreserve.reserve(7, protocol={protocol!r})  # wildcard: from the 10 ephemeral ports
    assert res.start >= 40000 and res.start + 6 <= 40009, res
    held = set(res.ports)
    seen = set()
    for trial in range(60):
        for family, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):
            s = socket.socket(family, kind)
            if trial % 3 == 0:
                s.bind((host, 0))
            elif udp and trial % 3 == 1:
                s.sendto(b'x', ('127.0.0.1' if family == socket.AF_INET else '::ffff:127.0.0.1', 5555))
            else:
                target = '127.0.0.1' if family == socket.AF_INET else '::ffff:127.0.0.1'
                s.connect((target, 5555))
                if not udp:
                    server.accept()[0].close()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\1\\0\\0\\0\\0\\0\\0\\0')
            seen.add(s.getsockname()[1])
            s.close()
    assert seen and not seen & held, (sorted(seen), sorted(held))
    assert seen <= set(range(40000, 40010)), seen
    print(sorted(seen))
"""


@linux_only
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_automatic_ports_never_land_in_a_block(protocol):
    out = in_netns(AUTOMATIC_PORTS.format(udp=protocol == "udp", protocol=protocol))
    assert out.strip().startswith("[")


def test_each_port_once_then_exhausted_then_returned():
    with portreserve.reserve(3) as res:
        socks = [res.socket() for _ in range(3)]
        ports = [s.getsockname()[1] for s in socks]
        assert sorted(ports) == list(res.ports)
        with pytest.raises(ReservationExhausted) as info:
            res.socket()
        assert info.value.winerror == 10048 and isinstance(info.value, ReservationConflict)
        socks[1].close()
        again = res.socket(socket.AF_INET6)
        assert again.getsockname()[1] == ports[1]
        for s in (*socks, again):
            s.close()


def test_time_wait_port_is_skipped():
    # The user's own socket (its close is seen at the next call); without
    # SO_REUSEADDR its TIME_WAIT bars the port, as it would any bind.
    with portreserve.reserve(2) as res, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.socket()
        port = res.bind(client)
        client.connect(listener.getsockname())
        conn = listener.accept()[0]
        client.close()  # the active closer ends in TIME_WAIT on `port`
        conn.close()
        other = res.socket()
        assert other.getsockname()[1] != port and other.getsockname()[1] in res.ports
        with pytest.raises(ReservationExhausted):
            res.socket()  # `port` cannot be held again yet
        other.close()


def test_release_leaves_bound_sockets_alone():
    res = portreserve.reserve(3)
    server = res.socket(host="127.0.0.1")
    server.listen()
    res.release()
    port = server.getsockname()[1]
    assert not can_bind(port)
    with socket.create_connection(("127.0.0.1", port)) as client:
        conn, _ = server.accept()
        client.sendall(b"still here")
        assert conn.recv(20) == b"still here"
        conn.close()
    server.close()
    assert freed(res.start + 1) and freed(res.start + 2)


@pytest.mark.parametrize("family,host", [
    (socket.AF_INET, ""), (socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, ""), (socket.AF_INET6, "::1"),
])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_socket_from_block_works(family, host, protocol):
    with portreserve.reserve(2, protocol=protocol) as res:
        server = res.socket(family, host)
        port = server.getsockname()[1]
        assert port in res.ports and server.getsockname()[0] in (host or "0.0.0.0", "::")
        target = ("127.0.0.1" if family == socket.AF_INET else "::1", port)
        if protocol == "tcp":
            server.listen()
            with socket.create_connection(target, timeout=5) as c:
                c.sendall(b"ping")
                conn, _ = server.accept()
                assert conn.recv(4) == b"ping"
                conn.close()
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as c:
                c.sendto(b"ping", target)
                server.settimeout(5)
                assert server.recvfrom(4)[0] == b"ping"
        # the rest of the block stays reserved
        assert not can_bind(res.start + res.count - 1 - (port - res.start), udp=protocol == "udp")
        server.close()


def test_options_survive_the_hand_off():
    with portreserve.reserve(2) as res:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(1.5)
        fd = sock.fileno()
        res.bind(sock)
        assert sock.fileno() == fd
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.gettimeout() == 1.5 and not os.get_blocking(fd)
        assert not os.get_inheritable(fd)
        # SO_REUSEADDR is held back until the socket listens (README)
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        sock.listen()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        sock.close()


def test_sigkill_frees_the_block_at_once():
    child = subprocess.Popen([sys.executable, "-c", (
        "import portreserve, sys, time\n"
        "r = portreserve.reserve(5)\n"
        "u = portreserve.reserve(2, protocol='udp')\n"
        "print(r.start, u.start, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        tcp, udp = map(int, child.stdout.readline().split())
        assert not can_bind(tcp + 4) and not can_bind(udp, udp=True)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert can_bind(tcp + 4) and can_bind(udp, udp=True)


def test_lowlevel_reservation_lives_as_long_as_its_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inst = lowlevel.acquire_port_reservation(sock, 0, 4)
    assert isinstance(inst, lowlevel.PortReservationInstance) and inst.token
    assert not can_bind(inst.start_port, udp=True)
    user = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lowlevel.associate_port_reservation(user, inst.token)
    lowlevel.bind_associated(user, ("0.0.0.0", 0))
    assert user.getsockname()[1] in range(inst.start_port, inst.start_port + 4)
    sock.close()
    del sock
    gc.collect()
    last = inst.start_port + 3
    assert freed(last, udp=True)
    with pytest.raises(portreserve.ReservationNotFound):
        lowlevel.associate_port_reservation(socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                                            inst.token)
    user.close()


def test_lowlevel_release_needs_the_acquiring_socket():
    with socket.socket() as sock, socket.socket() as other:
        inst = lowlevel.acquire_port_reservation(sock, 0, 2)
        with pytest.raises(portreserve.InvalidParameter):
            lowlevel.release_port_reservation(other, inst.token)
        assert not can_bind(inst.start_port)
        lowlevel.release_port_reservation(sock, inst.token)
        assert freed(inst.start_port)


@linux_only
def test_plain_bind_on_associated_socket_stays_in_block():
    # IP_LOCAL_PORT_RANGE (Linux 6.3+): bind((host, 0)) cannot land outside.
    with portreserve.reserve(2) as res, socket.socket() as sock:
        lowlevel.associate_port_reservation(sock, res.token)
        try:
            sock.bind(("127.0.0.1", 0))
        except OSError:
            return  # every port of the block is held: failing is the promise
        assert sock.getsockname()[1] in res.ports


def test_bind_by_token():
    with portreserve.reserve(2, protocol="udp") as res:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            assert portreserve.bind(sock, res.token, "127.0.0.1") in res.ports
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
                with pytest.raises(portreserve.InvalidParameter):
                    lowlevel.associate_port_reservation(sock, res.token)  # already bound
                portreserve.bind(again, res.token)


def test_wildcard_blocks_are_disjoint():
    blocks = [portreserve.reserve(8, protocol=("tcp", "udp")[i % 2]) for i in range(50)]
    try:
        for proto in ("tcp", "udp"):
            ports = [p for b in blocks if b.protocol == proto for p in b.ports]
            assert len(ports) == len(set(ports)) == 25 * 8
    finally:
        for b in blocks:
            b.close()


def test_threads_reserving_at_once_never_overlap():
    results, errors = [], []
    barrier = threading.Barrier(8)

    def work():
        try:
            barrier.wait()
            for _ in range(20):
                results.append(portreserve.reserve(4))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        ports = [p for r in results for p in r.ports]
        assert len(ports) == len(set(ports)) == 8 * 20 * 4
    finally:
        for r in results:
            r.close()


def test_specific_requests_race_exactly_one_wins():
    with portreserve.reserve(6) as probe:
        start = probe.start
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        try:
            wins.append(portreserve.reserve(6, start=start))
        except ReservationConflict:
            losses.append(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    wins[0].close()


def test_large_block_raises_the_descriptor_limit():
    out = run_python("""
        import resource, portreserve
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        with portreserve.reserve(3000) as res:
            print(res.count, resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 3000)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3000", "True"]


def test_many_small_reservations_raise_the_descriptor_limit():
    # Out of descriptors can strike anywhere in a reservation (a holder, the
    # /proc read, the netlink dump), not only in one large block.
    out = run_python("""
        import resource, portreserve
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = [portreserve.reserve(n % 3 + 1, protocol=("tcp", "udp")[n % 2])
                for n in range(300)]
        print(len(held), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
    """)
    assert out.returncode == 0, out.stderr
    held, soft, hard = map(int, out.stdout.split())
    assert held == 300
    # macOS refuses an unlimited hard limit as the soft one (engine: OPEN_MAX)
    assert soft == hard if LINUX else soft > 64


def test_cycles_leave_no_descriptors_behind():
    before, threads = len(open_fds()), threading.active_count()
    for i in range(10_000):
        with portreserve.reserve(1, protocol=("tcp", "udp")[i % 2]) as res:
            res.socket().close()
    # error paths too
    with portreserve.reserve(1) as res:
        held = res.socket()
        for _ in range(200):
            with pytest.raises(ReservationExhausted):
                res.socket()
            with pytest.raises(ReservationConflict):
                portreserve.reserve(1, start=res.start)
        held.close()
    gc.collect()
    assert len(open_fds()) == before
    assert threading.active_count() == threads


def test_garbage_collected_reservation_frees_its_ports():
    res = portreserve.reserve(2)
    start = res.start
    del res
    gc.collect()
    assert freed(start) and freed(start + 1)


def test_udp_holder_drops_what_it_receives():
    with portreserve.reserve(1, protocol="udp") as res:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(50):
                sender.sendto(b"early", ("127.0.0.1", res.start))
            sock = res.socket()
            sender.sendto(b"late", ("127.0.0.1", res.start))
            sock.settimeout(5)
            assert sock.recvfrom(10)[0] == b"late"  # nothing queued while held
            sock.close()


def test_ipv4_holders_on_a_host_without_ipv6():
    # The fallback taken when AF_INET6 sockets cannot be created (EAFNOSUPPORT).
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, portreserve, portreserve._posix as linux\n"
        "linux._family = socket.AF_INET\n"
        "res = portreserve.reserve(3)\n"
        "s = res.socket()\n"
        "print(res.start, s.getsockname()[1], flush=True)\n"
        "sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        start, bound = map(int, child.stdout.readline().split())
        assert bound == start
        for port in (start, start + 2):
            assert not can_bind(port, host="0.0.0.0") and not can_bind(port, host="127.0.0.1")
    finally:
        child.communicate("\n")
    assert can_bind(start + 2)


def test_udp_socket_on_one_address_keeps_the_port_closed_elsewhere():
    with portreserve.reserve(1, protocol="udp") as res:
        sock = res.socket(host="127.0.0.1")
        port = sock.getsockname()[1]
        for host in ("127.0.0.2", "0.0.0.0", "::1", "::"):
            assert not can_bind(port, host=host, udp=True, reuse=LINUX)
        sock.close()
        again = res.socket(socket.AF_INET6)  # the port comes back
        assert again.getsockname()[1] == port
        again.close()


@linux_only
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_port_comes_from_the_ephemeral_range_outside_reserved_ports(protocol):
    # reserve(1) picks its port itself (at random, bound explicitly): it must
    # keep to what the kernel's own choice keeps to.  Another process lists
    # the ports in ip_local_reserved_ports, as a persistent reservation does.
    out = in_netns(f"""
        import portreserve
        def sysctl(name, value):
            with open('/proc/sys/net/ipv4/' + name, 'w') as f:
                f.write(value)
        sysctl('ip_local_port_range', '41000 41011')
        sysctl('ip_local_reserved_ports', '41000-41003,41005,41007-41009')
        free = {{41004, 41006, 41010, 41011}}
        seen = set()
        for _ in range(200):
            with portreserve.reserve(1, protocol={protocol!r}) as res:
                seen.add(res.start)
        assert seen == free, seen
        # All four held: the search goes on outside the range, never into the list.
        held = [portreserve.reserve(1, protocol={protocol!r}) for _ in free]
        assert {{r.start for r in held}} == free
        extra = portreserve.reserve(1, protocol={protocol!r})
        assert not 41000 <= extra.start <= 41011 and extra.start >= 1024, extra
        print("ok")
    """)
    assert out.strip() == "ok"


def test_socket_changed_through_its_descriptor_comes_back_a_holder():
    # A handed-out holder nobody touched comes back as it is; one changed
    # through another object on its descriptor (as C libraries do) is undone.
    with portreserve.reserve(1) as res:
        s = res.socket()
        other = socket.socket(fileno=os.dup(s.fileno()))
        other.listen()
        other.setblocking(False)
        os.set_inheritable(s.fileno(), True)  # a flag of this descriptor, not of the copy
        other.close()  # a copy of the descriptor: the socket stays open
        with socket.create_connection(("127.0.0.1", res.start), timeout=5):
            pass
        s.close()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", res.start)) == errno.ECONNREFUSED
        assert not can_bind(res.start)
        again = res.socket()
        assert again.getsockname()[1] == res.start
        assert os.get_blocking(again.fileno()) and not again.get_inheritable()
        again.close()
