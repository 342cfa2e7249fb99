"""The Windows system-call layer: what reaches WSAIoctl, and the contract
that _windows_cffi.py and _windows_ctypes.py keep with each other."""

import importlib
import inspect
import os

import pytest

import portreserve
from portreserve import Protocol


def test_import_and_backend():
    wanted = os.environ.get("PORTRESERVE_BACKEND", "cffi")
    assert portreserve.backend == wanted
    from portreserve._backend import calls
    assert calls.__name__ == f"portreserve._windows_{wanted}"
    from portreserve._engine import engine
    assert engine.__name__ == "portreserve._windows"


def test_protocol_enum():
    assert Protocol("tcp") is Protocol.TCP and Protocol.UDP == "udp"
    assert Protocol.TCP.socket_type != Protocol.UDP.socket_type


def test_the_wheel_is_what_runs():
    # The harness installs the wheel into the interpreter's site folder; the
    # source tree must not shadow it.
    assert "site-packages" in portreserve.__file__
    assert importlib.util.find_spec("portreserve._pr_cffi").origin.endswith(".pyd")


def test_both_layers_have_the_same_functions():
    cffi_layer = importlib.import_module("portreserve._windows_cffi")
    ctypes_layer = importlib.import_module("portreserve._windows_ctypes")

    def api(mod):
        return {name: inspect.signature(fn).parameters.keys()
                for name, fn in vars(mod).items()
                if inspect.isfunction(fn) and not name.startswith("_")
                and fn.__module__ == mod.__name__}

    assert api(cffi_layer) == api(ctypes_layer)
    # ctypes writes the control codes by hand; the shim has them from the SDK.
    for name in ("SIO_ACQUIRE_PORT_RESERVATION", "SIO_RELEASE_PORT_RESERVATION",
                 "SIO_ASSOCIATE_PORT_RESERVATION", "INSTANCE_SIZE",
                 "NOTIFY_EVENT", "NOTIFY_IOCP", "INFINITE"):
        assert getattr(cffi_layer, name) == getattr(ctypes_layer, name), name
    assert cffi_layer.SIO_ACQUIRE_PORT_RESERVATION == 0x98000064


def test_struct_layout(calls):
    # The SDK's sizes (checked at compile time in pr_windows.c) as each layer
    # sees them: what goes in, and what comes out of an acquire.
    assert calls.INSTANCE_SIZE == 16
    assert len(calls.encode_port_range(1, 1)) == 4
    assert len(calls.encode_token(1)) == 8


def test_port_range_bytes(calls):
    # INET_PORT_RANGE: StartPort in network byte order, NumberOfPorts in host
    # (little-endian) order.  8080 = 0x1f90.
    assert calls.encode_port_range(8080, 10) == b"\x1f\x90\x0a\x00"
    assert calls.encode_port_range(0, 1) == b"\x00\x00\x01\x00"
    assert calls.encode_port_range(65535, 65535) == b"\xff\xff\xff\xff"


def test_token_bytes(calls):
    assert calls.encode_token(0x0102030405060708) == bytes.fromhex("0807060504030201")


def test_instance_decoding(calls):
    raw = b"\xc3\x50" + b"\x04\x00" + b"\xee" * 4 + bytes.fromhex("efcdab8967452301")
    assert calls.decode_instance(raw) == (50000, 4, 0x0123456789abcdef)


@pytest.mark.parametrize("size", [0, 8, 15, 17])
def test_instance_decoding_refuses_other_sizes(calls, size):
    # The C copies exactly 16 bytes: a shorter buffer must never reach it.
    with pytest.raises(ValueError):
        calls.decode_instance(b"\0" * size)


def test_overlapped_engines_keep_one_interface():
    # _overlapped.py picks one engine per system; both offer the same calls
    # and the same CompletionPort surface (the threads engine imports here too).
    from portreserve import _overlapped, _overlapped_iocp, _overlapped_threads

    assert _overlapped.CompletionPort is _overlapped_iocp.CompletionPort
    for name in ("acquire", "release", "associate"):
        iocp, threads = getattr(_overlapped_iocp, name), getattr(_overlapped_threads, name)
        assert inspect.signature(iocp).parameters.keys() == \
            inspect.signature(threads).parameters.keys(), name

    def surface(cls):
        return {n for n in dir(cls) if not n.startswith("_")}

    assert surface(_overlapped_iocp.CompletionPort) == surface(_overlapped_threads.CompletionPort)
