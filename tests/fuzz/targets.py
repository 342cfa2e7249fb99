"""Fuzz targets: the kernel's port-list text and the persistent state file.

Each target takes any bytes and either accepts them, with the parsed value
checked for what the rest of the package relies on, or refuses them with the
one error its callers handle (ValueError; RecursionError for deep JSON
nesting).  Anything else it raises is a bug.  tests/fuzz/run.py runs them;
tests/test_fuzz_regressions.py replays every saved input in every test run.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - the state file is Linux's
    raise ImportError("the fuzz targets read Linux's formats")

from portreserve import _linux_reserved_ports, _port_list

# Inputs longer than this are cut: the kernel's list is one page, and the
# state reader's limits are tested apart (tests/test_persistent.py).
MAX_LEN = 4096
# Expanding spans into port sets costs one step per port; past this many the
# round trip is skipped, to keep each run short.
MAX_PORTS = 200_000


def port_list(data: bytes) -> None:
    text = data[:MAX_LEN].decode("utf-8", "replace")
    try:
        spans = _port_list.parse_port_list(text)
    except ValueError:
        return
    for lo, hi in spans:
        assert type(lo) is int and type(hi) is int and 0 <= lo <= hi <= 65535, (lo, hi)
    if sum(hi - lo + 1 for lo, hi in spans) > MAX_PORTS:
        return
    ports = _port_list.ports_of(spans)
    # What we write, the kernel's parser (and ours) reads back the same.
    again = _port_list.parse_port_list(_port_list.format_port_list(ports) + "\n")
    assert again == _port_list.spans_of(ports), (text, again)
    assert _port_list.ports_of(again) == ports


def state_file(data: bytes) -> None:
    try:
        boot_id, reservations, added = _linux_reserved_ports._parse(data[:MAX_LEN])
    except (ValueError, RecursionError):
        return
    # Accepted: exactly the shapes the store uses, and it writes them back alike.
    state = _linux_reserved_ports._State("fuzz", boot_id, reservations, added)
    assert _linux_reserved_ports._parse(state.dump()) == (boot_id, reservations, added)
    assert added <= state.reserved()
    for r in reservations:
        assert r["protocol"] in ("tcp", "udp") and 1 <= r["start"] <= 65535
        assert 1 <= r["count"] and r["start"] + r["count"] - 1 <= 65535
        assert 0 < r["token"] < 2**64


TARGETS = {"port_list": port_list, "state_file": state_file}
