"""Every engine and system-call layer keeps its written interface.

The interfaces are the Protocols of src/portreserve/_interfaces.py; mypy
checks the types where each implementation is chosen (_engine.py,
_backend.py).  This test holds what runs to the same text, as psutil's
contract test holds its per-OS modules: each implementation importable here
has every member, with the Protocol's parameter names, kinds and defaults,
and a system-call layer has no public function the Protocol does not name
(a new one is added to the Protocol first).  The Windows modules are
checked on Windows (and under Wine), the POSIX ones elsewhere; of the
overlapped engines, the threads one everywhere (Windows runs aio.reserve's
callables on it) and the IOCP one on Windows.
"""

import importlib
import inspect
import socket
import subprocess
import sys
import textwrap
import types
import typing

import pytest

import portreserve
from portreserve import _interfaces
from portreserve._overlapped_types import PortBase
from portreserve._records import Protocol

WINDOWS = sys.platform == "win32"
LINUX = sys.platform.startswith("linux")
OS = "windows" if WINDOWS else "posix"
CALLS = _interfaces.WindowsCalls if WINDOWS else _interfaces.PosixCalls


def _members(proto):
    """The names a Protocol declares: methods, properties and data members."""
    names = {n for n, v in vars(proto).items()
             if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names | {n for n in vars(proto).get("__annotations__", {}) if not n.startswith("_")}


def _shape(fn, method):
    """(name, kind, default) of each parameter, without ``self``."""
    params = list(inspect.signature(fn).parameters.values())
    return [(p.name, p.kind, p.default) for p in params[1 if method else 0:]]


def _mismatches(proto, impl, impl_is_class=False):
    """What ``impl`` (a module or a class) lacks or spells differently.

    Of a class only the methods are checked: its data members are set per
    instance (a real one is checked below)."""
    found = []
    for name in sorted(_members(proto)):
        want = vars(proto).get(name)
        is_method = callable(want) and not isinstance(want, property)
        if impl_is_class and not is_method:
            continue
        if not hasattr(impl, name):
            found.append(f"{name}: missing")
        elif is_method:
            got = getattr(impl, name)
            if not callable(got):
                found.append(f"{name}: not callable")
            elif _shape(want, True) != _shape(got, impl_is_class):
                found.append(f"{name}: {inspect.signature(got)} is not "
                             f"{inspect.signature(want)}")
    return found


def _public_functions(module):
    return {n for n, v in vars(module).items()
            if inspect.isfunction(v) and not n.startswith("_")
            and v.__module__ == module.__name__}


def _layer(backend):
    try:
        return importlib.import_module(f"portreserve._{OS}_{backend}")
    except ImportError as exc:  # cffi: the compiled module may not be built
        pytest.skip(f"{backend} layer unavailable: {exc}")


def test_the_checker_sees_a_broken_implementation():
    # A missing member, a renamed parameter and a changed default each show.
    def hold(family, kind, start, count, fds):
        return count, 0

    def take(self, sock, host, port=1):
        return port

    broken = types.SimpleNamespace(hold=hold)
    found = _mismatches(_interfaces.PosixCalls, broken)
    assert "new_fds: missing" in found
    assert any(f.startswith("hold: ") for f in found)
    broken_block = type("B", (), {"take": take, "close": lambda self: None})
    found = _mismatches(_interfaces.Block, broken_block, impl_is_class=True)
    assert any(f.startswith("take: ") for f in found)
    assert _mismatches(_interfaces.Block, type("C", (), {"take": take}), True) == [
        "close: missing", "socket: missing", "take: (self, sock, host, port=1) is not "
        "(self, sock: 'socket.socket', host: 'str', port: 'int' = 0) -> 'int'"]


@pytest.mark.parametrize("backend", ["cffi", "ctypes"])
def test_system_call_layer_keeps_its_protocol(backend):
    layer = _layer(backend)
    assert _mismatches(CALLS, layer) == []
    extra = _public_functions(layer) - _members(CALLS)
    assert not extra, f"add {sorted(extra)} to _interfaces.{CALLS.__name__} first"
    assert isinstance(layer, CALLS)


def test_the_chosen_layer_and_engine_are_the_interfaces():
    from portreserve._backend import calls
    from portreserve._engine import engine

    assert isinstance(calls, CALLS)
    assert isinstance(engine, _interfaces.Engine)
    assert calls.__name__ == f"portreserve._{OS}_{portreserve.backend}"


def test_the_chosen_overlapped_engine_is_the_interface():
    from portreserve import CompletionPort, _overlapped

    engine = _overlapped.overlapped_engine
    assert isinstance(engine, _interfaces.OverlappedEngine)
    assert engine.__name__ == f"portreserve._overlapped_{'iocp' if WINDOWS else 'threads'}"
    assert CompletionPort is engine.CompletionPort


@pytest.mark.parametrize("name", ["threads", "iocp"])
def test_overlapped_engines_keep_their_protocol(name):
    if name == "iocp" and not WINDOWS:
        pytest.skip("the IOCP engine is Windows only")
    engine = importlib.import_module(f"portreserve._overlapped_{name}")
    assert _mismatches(_interfaces.OverlappedEngine, engine) == []
    assert isinstance(engine, _interfaces.OverlappedEngine)
    # Its CompletionPort is a whole PortBase, with PortBase's signatures.
    cls = engine.CompletionPort
    assert issubclass(cls, PortBase) and not inspect.isabstract(cls)
    assert _mismatches(PortBase, cls, impl_is_class=True) == []


def test_engine_keeps_its_protocol():
    engine = importlib.import_module(f"portreserve._{OS}")
    assert _mismatches(_interfaces.Engine, engine) == []


def _block_classes():
    classes = [importlib.import_module(f"portreserve._{OS}").Block]
    if LINUX:  # a persistent token resolves to a block of its own kind
        classes.append(importlib.import_module("portreserve._linux_reserved_ports")._Block)
    return classes


@pytest.mark.parametrize("cls", _block_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_block_classes_keep_the_protocol(cls):
    assert _mismatches(_interfaces.Block, cls, impl_is_class=True) == []


@pytest.mark.parametrize("protocol", [Protocol.TCP, Protocol.UDP])
def test_a_real_block_has_every_member_with_its_type(protocol):
    from portreserve._engine import engine

    try:
        block = engine.reserve(protocol, 0, 2)
    except portreserve.NotSupported:
        if not WINDOWS:
            raise
        pytest.skip("this Windows lacks the reservation calls (Wine)")
    try:
        assert isinstance(block, _interfaces.Block)
        assert (type(block.start), type(block.count), type(block.token)) == (int, int, int)
        assert block.protocol is protocol and block.count == 2 and block.closed is False
        with socket.socket(socket.AF_INET, protocol.socket_type) as sock:
            port = block.take(sock, "127.0.0.1")
            assert port in range(block.start, block.start + block.count)
            assert sock.getsockname()[1] == port
        # socket(): the default family is dual-stack where there is IPv6
        with block.socket() as sock:
            assert sock.type == protocol.socket_type
            assert sock.getsockname()[1] in range(block.start, block.start + block.count)
            if sock.family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        block.close()
    assert block.closed is True
    block.close()  # idempotent


@pytest.mark.skipif(not LINUX, reason="persistent blocks are Linux's")
def test_a_persistent_block_has_every_member():
    from portreserve._linux_reserved_ports import _Block

    block = _Block({"protocol": "udp", "start": 7000, "count": 3, "token": 12345})
    assert isinstance(block, _interfaces.Block)
    assert (block.protocol, block.start, block.count, block.token, block.closed) == (
        Protocol.UDP, 7000, 3, 12345, False)
    # socket(): a new socket bound through take() (here a plain bind of a
    # port that is free: no persistent reservation is made)
    with portreserve.reserve(1, protocol="udp") as res:
        free = res.start
    block = _Block({"protocol": "udp", "start": free, "count": 1, "token": 12345})
    with block.socket() as sock:
        assert (sock.type, sock.getsockname()[1]) == (socket.SOCK_DGRAM, free)
        if sock.family == socket.AF_INET6:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_reservation_attributes_are_typed():
    for name, kind in (("start", int), ("count", int), ("token", int), ("closed", bool),
                       ("protocol", Protocol), ("ports", range)):
        fget = getattr(portreserve.Reservation, name).fget
        assert typing.get_type_hints(fget)["return"] is kind, name


def test_a_misspelt_public_name_fails_at_run_time_and_for_mypy(tmp_path):
    with pytest.raises(AttributeError, match="reserv"):
        portreserve.reserv  # noqa: B018
    assert portreserve.aio.__name__ == "portreserve.aio"  # still lazily importable
    pytest.importorskip("mypy.api")
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""\
        import portreserve
        res = portreserve.reserve(2)
        start: int = res.start
        closed: bool = res.closed
        portreserve.reserv(4)
    """))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "cache"), str(script)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'no attribute "reserv"' in errors[0], done.stdout


def test_overlapped_results_and_ports_are_typed(tmp_path):
    # What a user's mypy sees: the port from ``with``, each operation's
    # result, the aio calls' results - none of them Any.
    pytest.importorskip("mypy.api")
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""\
        import socket
        import portreserve
        from portreserve import aio, lowlevel

        async def main(sock: socket.socket) -> None:
            with portreserve.CompletionPort() as port:
                reveal_type(port)
                op = lowlevel.acquire_port_reservation_overlapped(sock, 0, 2, port=port)
                reveal_type(op.result())
                reveal_type(op.exception())
                reveal_type(lowlevel.release_port_reservation_overlapped(sock, 1).result())
                reveal_type(lowlevel.associate_port_reservation_overlapped(sock, 1).result())
            reveal_type(await aio.reserve(2))
            reveal_type(await aio.acquire_port_reservation(sock, 0, 2))
    """))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "cache"), str(script)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    revealed = [line.split('Revealed type is "', 1)[1].rstrip('"')
                for line in done.stdout.splitlines() if "Revealed type is" in line]
    engine = "iocp" if WINDOWS else "threads"
    instance = "fallback=portreserve._records.PortReservationInstance]"
    assert len(revealed) == 7, done.stdout
    assert revealed[0] == f"portreserve._overlapped_{engine}.CompletionPort"
    assert revealed[1].endswith(instance) and revealed[6].endswith(instance)
    # mypy before 1.14 spells it Union[...]; later ones with a bar.
    assert revealed[2] in ("Union[builtins.BaseException, None]", "builtins.BaseException | None")
    assert revealed[3:5] == ["None", "None"]
    assert revealed[5] == "portreserve._reservation.Reservation"


def test_one_version():
    # pyproject.toml reads __version__ (dynamic), so the installed metadata
    # and the module agree however the package was installed.
    from importlib.metadata import version

    assert version("portreserve") == portreserve.__version__
    assert "version =" not in _pyproject_project_table()


def _pyproject_project_table():
    import pathlib

    pyproject = pathlib.Path(__file__).parent.parent / "pyproject.toml"
    if not pyproject.exists():  # run against an installed wheel, without the tree
        return ""
    text = pyproject.read_text()
    return text.split("[project]", 1)[1].split("\n[", 1)[0]


def test_citations_point_into_the_repository():
    # The contract and the measured facts live in docs/; a comment that cites
    # them names that path, and nothing cites a file outside the repository.
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "docs").is_dir():
        pytest.skip("not run from a source tree")
    bare = re.compile(r"(?<![\w/.-])(API|LINUX|WINDOWS)\.md|shared/docs|\.\./\.\./\.\.|/work/")
    cited = re.compile(r"\bdocs/([\w.-]+\.md)\b")
    files = [root / "build_ffi.py", root / "setup.py", *(root / ".ci").glob("*")]
    for top in ("src", "tests", "csrc", "benchmarks"):
        files += [p for p in (root / top).rglob("*")
                  if p.suffix in (".py", ".c", ".h", ".sh") and "_pr_cffi" not in p.name]
    wrong, missing = [], []
    for path in files:
        if not path.is_file() or path.samefile(__file__):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if bare.search(line):
                wrong.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
            missing += [f"{path.relative_to(root)}:{n}: docs/{name}"
                        for name in cited.findall(line) if not (root / "docs" / name).exists()]
    assert wrong == [] and missing == []
