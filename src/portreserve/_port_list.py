"""The kernel's port-list text, as /proc/sys/net/ipv4/ip_local_reserved_ports has it.

The text is comma-separated ports and inclusive ranges: ``"8080,9000-9010\\n"``
(an empty list is ``"\\n"``).  The runtime engine reads it to skip listed
ports in a wildcard search; the persistent store reads and writes it.  Both
use this module, which imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Iterable

_DIGITS = frozenset("0123456789")


def _port(text: str, part: str) -> int:
    # int() alone would also take " 1", "+1", "1_000" and non-ASCII digits.
    if not text or len(text) > 5 or not _DIGITS.issuperset(text):
        raise ValueError(f"port list entry {part[:40]!r} is not a port or a range N-M")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port list entry {part[:40]!r}: {port} is outside 0..65535")
    return port


def parse_port_list(text: str) -> list[tuple[int, int]]:
    """``'8080,9000-9010\\n'`` -> ``[(8080, 8080), (9000, 9010)]``, inclusive spans.

    Raises ValueError, naming the entry, for anything the kernel would not
    write: a port outside 0..65535, a range whose end is below its start,
    signs, spaces or other characters.  One trailing newline is allowed.
    """
    if text.endswith("\n"):
        text = text[:-1]
    spans = []
    for part in text.split(",") if text else []:
        lo, dash, hi = part.partition("-")
        first = _port(lo, part)
        last = _port(hi, part) if dash else first
        if last < first:
            raise ValueError(f"port list entry {part!r} ends below its start")
        spans.append((first, last))
    return spans


def ports_of(spans: Iterable[tuple[int, int]]) -> set[int]:
    """Inclusive spans -> the set of their ports."""
    return {p for lo, hi in spans for p in range(lo, hi + 1)}


def spans_of(ports: Iterable[int]) -> list[tuple[int, int]]:
    """A set of ports -> the fewest inclusive spans, in order."""
    spans: list[tuple[int, int]] = []
    for p in sorted(ports):
        if spans and spans[-1][1] == p - 1:
            spans[-1] = (spans[-1][0], p)
        else:
            spans.append((p, p))
    return spans


def format_port_list(ports: Iterable[int]) -> str:
    """A set of ports -> the kernel's text (``""`` for none), e.g. ``'8080,9000-9010'``."""
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in spans_of(ports))
