"""The Windows engine's own logic that Wine lets us run: error mapping of
binds, and reading netsh's table for list_persistent."""

import socket
import subprocess

import pytest

import portreserve
from portreserve import NotSupported, Protocol, ReservationConflict, lowlevel
from portreserve import _windows


def test_bind_associated_is_a_plain_bind_with_contract_errors():
    with socket.socket() as first, socket.socket() as second:
        lowlevel.bind_associated(first, ("127.0.0.1", 0))
        port = first.getsockname()[1]
        assert port
        with pytest.raises(ReservationConflict) as info:
            lowlevel.bind_associated(second, ("127.0.0.1", port))
        assert type(info.value) is ReservationConflict  # a chosen port: not Exhausted
        assert info.value.winerror == 10048


ENGLISH = """
Protocol tcp Port Exclusion Ranges

Start Port    End Port
----------    --------
      1025        1124
     50000       50059     *
     50100       50100     *

* - Administered port exclusions.

"""
GERMAN = """
Protokoll tcp Portausschlussbereiche

Startport    Endport
----------    --------
     50000       50059     *

* - Verwaltete Portausschl\u00fcsse.
"""


def _fake_netsh(monkeypatch, stdout, returncode=0):
    seen = []

    def run(args, **kwargs):
        seen.append(args)
        return subprocess.CompletedProcess(args, returncode, stdout, "")
    monkeypatch.setattr(_windows.subprocess, "run", run)
    return seen


def _fake_lookup(monkeypatch, tokens):
    def lookup(udp, start, count):
        token = tokens.get((udp, start, count))
        return (0, token) if token else (1168, 0)
    monkeypatch.setattr(_windows.calls, "persistent_lookup", lookup)


@pytest.mark.parametrize("text", [ENGLISH, GERMAN])
def test_list_persistent_reads_administered_rows(monkeypatch, text):
    seen = _fake_netsh(monkeypatch, text)
    _fake_lookup(monkeypatch, {(False, 50000, 60): 0xABC})
    found = portreserve.list_persistent(protocol="tcp")
    assert found[0] == portreserve.PersistentReservation(50000, 60, Protocol.TCP, 0xABC, True)
    # The non-administered row (1025-1124) is not a persistent reservation;
    # a row Lookup does not know is listed with token 0.
    assert [(r.start, r.count, r.token) for r in found[1:]] == (
        [(50100, 1, 0)] if text is ENGLISH else [])
    assert seen == [["netsh", "interface", "ipv4", "show", "excludedportrange",
                     "protocol=tcp"]]


def test_list_persistent_both_protocols(monkeypatch):
    seen = _fake_netsh(monkeypatch, GERMAN)
    _fake_lookup(monkeypatch, {(True, 50000, 60): 7, (False, 50000, 60): 8})
    found = portreserve.list_persistent()
    assert [(r.protocol, r.token) for r in found] == [(Protocol.TCP, 8), (Protocol.UDP, 7)]
    assert [args[-1] for args in seen] == ["protocol=tcp", "protocol=udp"]


@pytest.mark.parametrize("stdout,returncode", [("", 0), (ENGLISH, 1)])
def test_list_persistent_without_a_table_is_not_supported(monkeypatch, stdout, returncode):
    _fake_netsh(monkeypatch, stdout, returncode)
    with pytest.raises(NotSupported):
        portreserve.list_persistent()
