"""Bad input: the right class, errno and winerror, and no state change.

Platform-free: runs on Linux and, under Wine, against the Windows build.
"""

import socket
import sys

import pytest

import portreserve
from portreserve import lowlevel
from portreserve import InvalidParameter, NotSupported, ReservationNotFound

from helpers import LINUX, open_fds

BAD_BLOCKS = [  # (count, start)
    (0, 0), (-1, 0), (65536, 0), (1, -1), (1, 65536), (2, 65535), (100, 65500),
]


def _reserve(*args, **kwargs):
    """reserve(), or a skip where the system offers no reservations (Wine)."""
    try:
        return portreserve.reserve(*args, **kwargs)
    except NotSupported as exc:
        pytest.skip(f"runtime reservations are not offered here: {exc}")


def _unbound(sock):
    try:
        return sock.getsockname()[1] == 0
    except OSError:  # Windows: getsockname of an unbound socket fails (WSAEINVAL)
        return True


POSIX = {  # Linux numbers, the same on every platform (docs/API.md section 3)
    InvalidParameter: 22, portreserve.AccessDenied: 13, portreserve.ReservationConflict: 98,
    portreserve.ReservationExhausted: 98, ReservationNotFound: 2, NotSupported: 95,
    portreserve.OperationAborted: 125,
}


def _check(exc, cls, winerrors):
    assert type(exc) is cls
    assert exc.errno == cls.default_errno == POSIX[cls]
    assert exc.winerror in winerrors
    assert isinstance(exc, OSError) and isinstance(exc, portreserve.PortReservationError)


@pytest.mark.parametrize("count,start", BAD_BLOCKS)
def test_reserve_bad_block(count, start):
    with pytest.raises(InvalidParameter) as info:
        portreserve.reserve(count, start=start)
    _check(info.value, InvalidParameter, {10022})
    assert isinstance(info.value, ValueError)
    assert str(count if count not in (1, 2) else start) in str(info.value)


@pytest.mark.parametrize("value", ["sctp", "", "TCPX"])
def test_unknown_protocol(value):
    with pytest.raises(InvalidParameter) as info:
        portreserve.reserve(1, protocol=value)
    _check(info.value, InvalidParameter, {10022})


def test_protocol_is_case_insensitive_str_enum():
    assert portreserve.Protocol.TCP == "tcp" and portreserve.Protocol("udp").value == "udp"
    with _reserve(1, protocol="UDP") as res:
        assert res.protocol is portreserve.Protocol.UDP


@pytest.mark.parametrize("call,args", [
    (portreserve.reserve, ("1",)),
    (portreserve.reserve, (1.0,)),
    (portreserve.reserve, (True,)),
    (portreserve.bind, (object(), 1)),
    (lowlevel.acquire_port_reservation, (None, 0, 1)),
    (lowlevel.release_port_reservation, ("sock", 1)),
])
def test_wrong_types_raise_type_error(call, args):
    with pytest.raises(TypeError):
        call(*args)


def test_wrong_type_protocol():
    with pytest.raises(TypeError):
        portreserve.reserve(1, protocol=6)


@pytest.mark.parametrize("count,start", BAD_BLOCKS)
def test_acquire_bad_block(count, start):
    with socket.socket() as sock:
        with pytest.raises(InvalidParameter) as info:
            lowlevel.acquire_port_reservation(sock, start, count)
    _check(info.value, InvalidParameter, {10022})


@pytest.mark.parametrize("token", [0, -1, 1 << 64])
def test_bad_token(token):
    with socket.socket() as sock:
        for call in (lowlevel.associate_port_reservation, lowlevel.release_port_reservation):
            with pytest.raises(InvalidParameter) as info:
                call(sock, token)
            _check(info.value, InvalidParameter, {10022})
        with pytest.raises(InvalidParameter):
            portreserve.bind(sock, token)


def test_unknown_token_is_not_found():
    with socket.socket() as sock:
        with pytest.raises(portreserve.PortReservationError) as info:
            portreserve.bind(sock, 0x1234567887654321)
    if isinstance(info.value, NotSupported):
        pytest.skip(f"reservations are not offered here: {info.value}")
    _check(info.value, ReservationNotFound, {1168})
    assert isinstance(info.value, LookupError)


def test_non_tcp_udp_socket_is_not_supported():
    kind = getattr(socket, "AF_UNIX", None)
    sock = socket.socket(kind, socket.SOCK_STREAM) if kind else \
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with sock:
        with pytest.raises(NotSupported) as info:
            lowlevel.acquire_port_reservation(sock, 0, 1)
    _check(info.value, NotSupported, {10045})


def test_socket_of_the_wrong_protocol():
    with _reserve(2, protocol="udp") as res, socket.socket() as tcp:
        with pytest.raises(InvalidParameter) as info:
            res.bind(tcp)
        _check(info.value, InvalidParameter, {10022})
        assert _unbound(tcp)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            assert res.bind(udp) in res.ports  # the block is intact


def test_released_reservation():
    res = _reserve(2)
    res.release()
    assert res.closed
    with pytest.raises(InvalidParameter) as info:
        res.release()
    _check(info.value, InvalidParameter, {10022})
    res.close()  # idempotent
    with socket.socket() as sock:
        with pytest.raises(InvalidParameter):
            res.bind(sock)


@pytest.mark.parametrize("start,count", [(0, 5), (1, 0), (65535, 2), (70000, 1)])
def test_persistent_bad_arguments(start, count):
    with pytest.raises(InvalidParameter) as info:
        portreserve.create_persistent(start, count)
    _check(info.value, InvalidParameter, {87})
    with pytest.raises(InvalidParameter):
        lowlevel.lookup_persistent_udp_port_reservation(start, count)


def test_errors_pickle():
    import pickle
    exc = ReservationNotFound("x", winerror=1168)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is ReservationNotFound and back.winerror == 1168 and back.errno == exc.errno


@pytest.mark.skipif(sys.platform == "win32", reason="counts descriptors")
def test_bad_input_changes_nothing():
    before = open_fds()
    with socket.socket() as sock:
        calls = [
            lambda: portreserve.reserve(0), lambda: portreserve.reserve(2, start=65535),
            lambda: portreserve.reserve(1, protocol="sctp"), lambda: portreserve.bind(sock, 0),
            lambda: lowlevel.acquire_port_reservation(sock, 70000, 1),
            lambda: lowlevel.associate_port_reservation(sock, 1 << 64),
            lambda: portreserve.create_persistent(0, 4),
        ]
        for call in calls:
            with pytest.raises(InvalidParameter):
                call()
        assert _unbound(sock)
    assert open_fds() == before


@pytest.mark.skipif(LINUX or sys.platform == "win32", reason="persistent reservations exist here")
def test_persistent_is_not_supported_off_linux():
    with pytest.raises(NotSupported):
        portreserve.create_persistent(40000, 2)
    with pytest.raises(NotSupported):
        portreserve.list_persistent()
