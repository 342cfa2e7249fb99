"""The `portreserve` command: how it ends on a signal, and whose usage a bad
argument shows (the bad-input table in bad_input_cases.py checks the statuses
and messages of bad values)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from helpers import LINUX, can_bind

CLI = [sys.executable, "-m", "portreserve"]


def _holding(*args: str) -> tuple[subprocess.Popen, int]:
    """`portreserve reserve 1 --hold` running; its port once it holds it."""
    proc = subprocess.Popen([*CLI, "reserve", "1", "--hold", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # "tcp START-END token=..."
    assert first.startswith("tcp "), (first, proc.stderr.read())
    port = int(first.split()[1].split("-")[0])
    assert proc.stdout.readline().startswith("holding")  # the handlers are set by then
    return proc, port


@pytest.mark.skipif(not LINUX, reason="signals from another process; can_bind")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_hold_ends_on_a_signal_as_a_killed_program_releasing_the_ports(sig):
    """As `run` does when its child is killed: 128 + the signal's number,
    after the block is released."""
    proc, port = _holding()
    try:
        assert not can_bind(port, host="0.0.0.0")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 128 + sig
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in proc.stderr.read()
    assert can_bind(port, host="0.0.0.0")


def test_hold_help_says_how_it_ends():
    out = subprocess.run([*CLI, "reserve", "--help"], capture_output=True, text=True)
    assert "SIGTERM" in out.stdout and "143" in out.stdout and "130" in out.stdout


@pytest.mark.parametrize("args, usage", [
    (["run", "--bogus"], "usage: portreserve run "),
    (["run", "--bogus", "--", "true"], "usage: portreserve run "),
    (["run", "--count", "2", "--bogus", "--", "true", "{port}"], "usage: portreserve run "),
    (["demo", "--bogus"], "usage: portreserve demo "),
    (["reserve", "1", "--bogus"], "usage: portreserve reserve "),
    (["persistent", "list", "--bogus"], "usage: portreserve persistent list "),
    (["persistent", "lookup", "5000", "1", "--bogus"], "usage: portreserve persistent lookup "),
])
def test_an_unknown_option_shows_its_subcommands_usage(args, usage):
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0].startswith(usage), out.stderr
    assert lines[-1].endswith("error: unrecognized arguments: --bogus"), out.stderr
