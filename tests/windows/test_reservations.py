"""The public calls on Windows, the reference pages' examples end to end.

Under Wine the reservation calls reach WSAIoctl and iphlpapi and come back as
NotSupported with the contract's errno and winerror; the success paths need
real Windows (the GitHub workflow's Windows runner) and skip under Wine.
"""

import socket
import subprocess
import sys
import ctypes

import pytest

import portreserve
from portreserve import NotSupported, Protocol, lowlevel
from wine_detect import needs_windows, wine_only

WSAEOPNOTSUPP = 10045
EOPNOTSUPP = 95  # the POSIX number, on every platform (docs/API.md section 3)
ERROR_PROC_NOT_FOUND = 127


def _not_supported(info, winerror):
    exc = info.value
    assert type(exc) is NotSupported
    assert exc.errno == EOPNOTSUPP and exc.winerror == winerror
    assert isinstance(exc, OSError)


def _is_admin():
    return bool(ctypes.windll.shell32.IsUserAnAdmin())


def _other_process_can_bind(port, udp=False):
    kind = "SOCK_DGRAM" if udp else "SOCK_STREAM"
    code = (f"import socket; s = socket.socket(socket.AF_INET, socket.{kind}); "
            f"s.bind(('127.0.0.1', {port}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---- under Wine: every reservation call reaches the system, NotSupported --

@wine_only
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_ioctls_not_supported(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        with pytest.raises(NotSupported) as info:
            lowlevel.acquire_port_reservation(s, 0, 10)
        _not_supported(info, WSAEOPNOTSUPP)
        with pytest.raises(NotSupported) as info:
            lowlevel.release_port_reservation(s, 1)
        _not_supported(info, WSAEOPNOTSUPP)
        with pytest.raises(NotSupported) as info:
            lowlevel.associate_port_reservation(s, 1)
        _not_supported(info, WSAEOPNOTSUPP)
        with pytest.raises(NotSupported) as info:
            portreserve.bind(s, 1)
        _not_supported(info, WSAEOPNOTSUPP)
        s.bind(("127.0.0.1", 0))  # nothing was bound on the way


@wine_only
def test_reserve_not_supported():
    for protocol in ("tcp", "udp"):
        with pytest.raises(NotSupported) as info:
            portreserve.reserve(4, protocol=protocol)
        _not_supported(info, WSAEOPNOTSUPP)


PERSISTENT_LOWLEVEL = [
    (lowlevel.create_persistent_tcp_port_reservation, "create"),
    (lowlevel.create_persistent_udp_port_reservation, "create"),
    (lowlevel.lookup_persistent_tcp_port_reservation, "lookup"),
    (lowlevel.lookup_persistent_udp_port_reservation, "lookup"),
    (lowlevel.delete_persistent_tcp_port_reservation, "delete"),
    (lowlevel.delete_persistent_udp_port_reservation, "delete"),
]


@wine_only
@pytest.mark.parametrize("fn,verb", PERSISTENT_LOWLEVEL)
def test_persistent_lowlevel_not_supported(fn, verb):
    # Wine's iphlpapi does not export them: GetProcAddress fails (127).
    with pytest.raises(NotSupported) as info:
        fn(40000, 10)
    _not_supported(info, ERROR_PROC_NOT_FOUND)
    assert verb.capitalize() in str(info.value)


@wine_only
@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_persistent_not_supported(protocol):
    for fn in (portreserve.create_persistent, portreserve.lookup_persistent,
               portreserve.delete_persistent):
        with pytest.raises(NotSupported) as info:
            fn(40000, 10, protocol=protocol)
        _not_supported(info, ERROR_PROC_NOT_FOUND)


@wine_only
def test_list_persistent_under_wine():
    # netsh under Wine knows no excludedportrange: said so, not an empty list.
    with pytest.raises(NotSupported):
        portreserve.list_persistent()


def test_bad_arguments_never_reach_the_system():
    with socket.socket() as s:
        with pytest.raises(portreserve.InvalidParameter):
            lowlevel.acquire_port_reservation(s, 65535, 2)
        with pytest.raises(portreserve.InvalidParameter):
            lowlevel.associate_port_reservation(s, 0)
    with pytest.raises(portreserve.InvalidParameter) as info:
        portreserve.create_persistent(0, 10)
    assert info.value.winerror == 87


# ---- on Windows: the reference pages' examples ---------------------------

@needs_windows
@pytest.mark.parametrize("protocol", [Protocol.TCP, Protocol.UDP])
def test_runtime_reservation(protocol):
    with portreserve.reserve(4, protocol=protocol) as r:
        assert r.count == 4 and r.token and r.protocol is protocol
        assert not _other_process_can_bind(r.start, protocol is Protocol.UDP)
        socks = [r.socket() for _ in range(4)]
        try:
            assert sorted(s.getsockname()[1] for s in socks) == list(r.ports)
            with socket.socket(socket.AF_INET, protocol.socket_type) as extra:
                with pytest.raises(portreserve.ReservationExhausted):
                    r.bind(extra)
        finally:
            for s in socks:
                s.close()
        with r.socket() as again:  # a closed socket's port is back in the block
            assert again.getsockname()[1] in r.ports
    assert r.closed
    assert _other_process_can_bind(r.start, protocol is Protocol.UDP)


@needs_windows
def test_acquire_associate_bind_release():
    with socket.socket() as owner, socket.socket() as user:
        inst = lowlevel.acquire_port_reservation(owner, 0, 8)
        assert inst.number_of_ports == 8 and inst.token
        lowlevel.associate_port_reservation(user, inst.token)
        lowlevel.bind_associated(user, ("127.0.0.1", 0))
        assert inst.start_port <= user.getsockname()[1] < inst.start_port + 8
        lowlevel.release_port_reservation(owner, inst.token)


@needs_windows
def test_persistent_reservation():
    if not _is_admin():
        with pytest.raises(portreserve.AccessDenied):
            portreserve.create_persistent(41000, 4)
        pytest.skip("persistent reservations need an elevated administrator")
    token = portreserve.create_persistent(41000, 4)
    try:
        assert portreserve.lookup_persistent(41000, 4) == token
        assert (41000, 4) in [(p.start, p.count) for p in portreserve.list_persistent(
            protocol="tcp")]
        with socket.socket() as s:
            assert 41000 <= portreserve.bind(s, token, "127.0.0.1") < 41004
    finally:
        portreserve.delete_persistent(41000, 4)
    with pytest.raises(portreserve.ReservationNotFound):
        portreserve.lookup_persistent(41000, 4)


@needs_windows
def test_unknown_token_and_exhaustion_codes():
    # What README decided where the reference pages are silent: these tell
    # on the first real Windows run if Windows answers otherwise.
    unknown = 0x1234567887654321
    with socket.socket() as user:
        with pytest.raises(portreserve.ReservationNotFound) as info:
            lowlevel.associate_port_reservation(user, unknown)
        assert (info.value.errno, info.value.winerror) == (2, 1168)
        with pytest.raises(portreserve.ReservationNotFound):
            lowlevel.associate_port_reservation_overlapped(user, unknown).result(30)
        with portreserve.CompletionPort() as port:
            op = lowlevel.associate_port_reservation_overlapped(user, unknown, port=port)
            with pytest.raises(portreserve.ReservationNotFound):
                op.result(30)
    with socket.socket() as owner:
        with pytest.raises(portreserve.InvalidParameter):  # not ours: as on Linux
            lowlevel.release_port_reservation(owner, unknown)
    with portreserve.reserve(1) as r, r.socket():
        with socket.socket() as extra:
            with pytest.raises(portreserve.ReservationExhausted) as info:
                r.bind(extra)
            assert (info.value.errno, info.value.winerror) == (98, 10048)


@needs_windows
def test_overlapped_acquire_on_a_port_decodes_the_instance():
    with socket.socket() as owner, portreserve.CompletionPort() as port:
        inst = lowlevel.acquire_port_reservation_overlapped(owner, 0, 4, port=port).result(30)
        assert inst.number_of_ports == 4 and inst.token and inst.start_port
        lowlevel.release_port_reservation(owner, inst.token)
