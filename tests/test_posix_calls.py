"""The two POSIX system-call layers keep one contract (csrc/pr_posix.h).

_posix_cffi.py (our compiled shim) and _posix_ctypes.py (no compiled code of
ours) must expose the same functions and behave the same on real calls: the
same holders, the same errno on the same mistake, the same hand-offs.  The
last tests check how _backend.py picks one, including the fallback to ctypes
when the compiled module is missing.  Tests of what only Linux's kernel
does are marked; the rest runs on macOS too.
"""

import errno
import importlib
import inspect
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from helpers import LINUX, ROOT, can_bind, freed

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX layers")
linux_only = pytest.mark.skipif(not LINUX, reason="Linux's bind rules and sock_diag")

TCP, UDP = socket.SOCK_STREAM, socket.SOCK_DGRAM
V6 = socket.AF_INET6
NOBODY = 65534
PRIVATE_UID = 2**31 - 2 if ROOT else -1  # as the engine picks it


def _layer(name):
    try:
        return importlib.import_module(f"portreserve._posix_{name}")
    except ImportError as exc:  # cffi: the compiled module may not be built
        pytest.skip(f"{name} layer unavailable: {exc}")


@pytest.fixture(params=["cffi", "ctypes"])
def calls(request):
    return _layer(request.param)


def _functions(module):
    return {name: inspect.signature(f) for name, f in vars(module).items()
            if inspect.isfunction(f) and not name.startswith("_")
            and f.__module__ == module.__name__}


def test_same_functions_and_signatures():
    cffi, ctypes_ = _functions(_layer("cffi")), _functions(_layer("ctypes"))
    assert set(cffi) == set(ctypes_)
    assert {"new_fds", "hold", "hold_any", "close_all", "bound_ports", "handoff_dup",
            "handoff_reuseport", "set_local_port_range", "port_range"} <= set(cffi)
    for name in cffi:
        assert list(cffi[name].parameters) == list(ctypes_[name].parameters), name


def _holder(calls, type_):
    """(fd, port) of one holder on a port the kernel picks; the caller closes fd."""
    fds = calls.new_fds(1)
    port = calls.hold_any(V6, type_, fds)
    return fds[0], port


def _free_block(calls, count):
    """Start of ``count`` ports that nothing holds now (held once, then freed)."""
    for _ in range(50):
        one = calls.new_fds(1)
        port = calls.hold_any(V6, TCP, one)
        calls.close_all(one, 1)
        if port + count <= 65536:
            fds = calls.new_fds(count)
            n, _ = calls.hold(V6, TCP, port, count, fds)
            calls.close_all(fds, n)
            if n == count:
                return port
    pytest.fail("no free block found")


@linux_only
@pytest.mark.parametrize("type_", [TCP, UDP])
def test_hold_blocks_other_processes_until_closed(calls, type_):
    udp = type_ == UDP
    start = _free_block(calls, 3)
    fds = calls.new_fds(3)
    assert calls.hold(V6, type_, start, 3, fds) == (3, 0)
    assert all(fd >= 0 for fd in fds[0:3])
    for port in (start, start + 2):
        assert not can_bind(port, udp=udp, reuse=True)
        assert not can_bind(port, host="::1", udp=udp)
    taken = calls.bound_ports(socket.IPPROTO_UDP if udp else socket.IPPROTO_TCP)
    assert taken[start] == taken[start + 2] == 1
    calls.close_all(fds, 3)
    assert freed(start + 1, udp=udp)


@linux_only
def test_hold_reports_the_failing_port_and_undoes_the_rest(calls):
    start = _free_block(calls, 3)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", start + 2))
    fds = calls.new_fds(3)
    n, err = calls.hold(V6, TCP, start, 3, fds)
    assert (n, err) == (2, errno.EADDRINUSE)
    assert list(fds) == [-1, -1, -1]  # no closed descriptor numbers left (pr_posix.h)
    blocker.close()
    assert freed(start) and freed(start + 1)


@linux_only
def test_hold_any_and_errors(calls):
    fds = calls.new_fds(1)
    port = calls.hold_any(V6, UDP, fds)
    assert port > 0 and fds[0] >= 0 and not can_bind(port, udp=True)
    calls.close_all(fds, 1)
    with pytest.raises(OSError) as info:
        calls.hold_any(socket.AF_INET6, 12345, fds)  # no such socket type
    assert info.value.errno == errno.EINVAL and fds[0] == -1
    with pytest.raises(OSError) as info:
        calls.handoff_dup(-1, -1)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("type_", [TCP, UDP])
def test_handoff_dup_swaps_in_the_holder(calls, type_):
    fd, port = _holder(calls, type_)
    user = socket.socket(V6, type_)
    user.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    user.setblocking(False)
    calls.handoff_dup(fd, user.fileno())
    assert user.getsockname()[1] == port
    assert user.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert not os.get_inheritable(user.fileno())
    with pytest.raises(OSError):  # the holder's own descriptor is gone
        os.fstat(fd)
    if type_ == UDP:  # the drop-all filter went with the holder
        with socket.socket(socket.AF_INET, UDP) as peer:
            peer.sendto(b"ping", ("127.0.0.1", port))
        user.settimeout(2)
        assert user.recv(16) == b"ping"
    else:
        user.listen()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not can_bind(port, udp=type_ == UDP)
    user.close()


@linux_only
def test_handoff_reuseport_binds_another_address(calls):
    fd, port = _holder(calls, TCP)
    user = socket.socket(socket.AF_INET, TCP)
    with pytest.raises(OSError) as info:  # not an address of this host
        calls.handoff_reuseport(fd, user.fileno(), socket.AF_INET,
                                socket.inet_aton("192.0.2.1"), port, PRIVATE_UID)
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert not can_bind(port)  # the holder stays
    owner = os.fstat(user.fileno()).st_uid
    calls.handoff_reuseport(fd, user.fileno(), socket.AF_INET,
                            socket.inet_aton("127.0.0.1"), port, PRIVATE_UID)
    assert user.getsockname() == ("127.0.0.1", port)
    assert not user.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    assert os.fstat(user.fileno()).st_uid == owner  # the private uid was only for the bind
    # The holder is left to the caller: while it is open, the port's other
    # addresses stay closed, also to SO_REUSEPORT binds of our own uid.
    for host in ("127.0.0.2", "::1", "0.0.0.0"):
        assert not can_bind(port, host=host, reuse=True)
    os.close(fd)
    assert not can_bind(port, host="127.0.0.1")
    if ROOT:  # private uid: not even our uid can join the bound address (README)
        assert not can_bind(port, host="127.0.0.1", reuse=True)
    user.close()


def test_set_local_port_range(calls):
    start = _free_block(calls, 4)
    with socket.socket() as s:
        try:
            calls.set_local_port_range(s.fileno(), start, start + 3)
        except OSError as exc:  # before Linux 6.3
            assert exc.errno in (errno.ENOPROTOOPT, errno.EINVAL)
            return
        s.bind(("127.0.0.1", 0))
        assert start <= s.getsockname()[1] <= start + 3


def test_port_range_is_where_the_kernel_picks(calls):
    lo, hi = calls.port_range()
    assert 1 <= lo <= hi <= 65535
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            assert lo <= s.getsockname()[1] <= hi


@pytest.mark.skipif(LINUX, reason="Linux has the dump (test_hold_blocks_...)")
def test_no_socket_dump_off_linux(calls):
    # The engine then finds blocks by trying binds.
    with pytest.raises(OSError) as info:
        calls.bound_ports(socket.IPPROTO_TCP)
    assert info.value.errno == errno.ENOSYS


def _child(code, **env):
    """Run ``code`` in a fresh interpreter with PORTRESERVE_BACKEND as given."""
    env = {k: v for k, v in os.environ.items() if k != "PORTRESERVE_BACKEND"} | env
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["cffi", "ctypes"])
def test_each_backend_runs_the_engine(name):
    _layer(name)
    result = _child("""
        import socket, portreserve
        with portreserve.reserve(2) as res:
            s = res.socket(socket.AF_INET6)
            print(portreserve.backend, s.getsockname()[1] in res.ports)
    """, PORTRESERVE_BACKEND=name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [name, "True"]


BLOCK_CFFI = textwrap.dedent("""
    import sys, warnings
    class NoCompiledModule:
        def find_spec(self, name, path=None, target=None):
            if name == "portreserve._pr_cffi":
                raise ImportError("blocked by the test")
    sys.meta_path.insert(0, NoCompiledModule())
""")


def test_falls_back_to_ctypes_with_a_warning():
    result = _child(BLOCK_CFFI + textwrap.dedent("""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import portreserve
        print(portreserve.backend)
        print([w.category.__name__ for w in caught])
        with portreserve.reserve(1) as res:
            print(res.count)
    """))
    assert result.returncode == 0, result.stderr
    backend, categories, count = result.stdout.splitlines()
    assert backend == "ctypes"
    assert "RuntimeWarning" in categories
    assert count == "1"


def test_asking_for_cffi_does_not_fall_back():
    result = _child(BLOCK_CFFI + "import portreserve\n", PORTRESERVE_BACKEND="cffi")
    assert result.returncode != 0
    assert "ImportError" in result.stderr


def test_unknown_backend_is_refused():
    # Bad input like any other: a documented class at the first call, naming the value.
    result = _child("""
        import portreserve
        try:
            portreserve.reserve(1)
        except portreserve.InvalidParameter as exc:
            print(exc.errno, exc.winerror, exc.strerror)
    """, PORTRESERVE_BACKEND="rust")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("22 87 reserve: PORTRESERVE_BACKEND='rust'"), result.stdout


def test_file_flags_survive_a_default_timeout(calls):
    # socket.setdefaulttimeout() makes Python set O_NONBLOCK on any socket
    # object it creates around a descriptor; the user's blocking socket must
    # stay blocking whatever a layer does inside.
    fd4, port4 = _holder(calls, TCP)
    fd6, _ = _holder(calls, TCP)
    user4, user6 = socket.socket(socket.AF_INET, TCP), socket.socket(V6, TCP)
    socket.setdefaulttimeout(5)
    try:
        calls.handoff_reuseport(fd4, user4.fileno(), socket.AF_INET,
                                socket.inet_aton("127.0.0.1"), port4, PRIVATE_UID)
        os.close(fd4)
        calls.handoff_dup(fd6, user6.fileno())
        try:
            calls.set_local_port_range(user6.fileno(), 40000, 40010)
        except OSError:  # before Linux 6.3
            pass
    finally:
        socket.setdefaulttimeout(None)
    import fcntl  # POSIX only: the module must still collect on Windows

    for user in (user4, user6):
        assert user.getsockname()[1]
        assert not fcntl.fcntl(user.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        user.close()


def _receive_buffer_after_transfer(listener) -> tuple[int, int]:
    """SO_RCVBUF of an accepted connection before and after 32 MiB arrive."""
    listener.listen()
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(10)  # a failure must not hang the suite
            before = peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            client.setblocking(False)
            data, got = b"x" * (1 << 20), 0
            for _ in range(32):
                view = memoryview(data)
                while view:
                    try:
                        view = view[client.send(view):]
                    except BlockingIOError:
                        got += len(peer.recv(1 << 16))
            while got < 32 << 20:
                got += len(peer.recv(1 << 16))
            return before, peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_handoff_dup_keeps_receive_autotuning(calls):
    with socket.socket(V6, TCP) as plain:
        plain.bind(("::", 0))
        before, after = _receive_buffer_after_transfer(plain)
    if after <= before:
        pytest.skip("no receive-buffer autotuning seen on a plain socket here")
    fd, _ = _holder(calls, TCP)
    with socket.socket(V6, TCP) as user:
        calls.handoff_dup(fd, user.fileno())
        before, after = _receive_buffer_after_transfer(user)
    assert after > before
