"""Child process for tests/test_persistent.py (runs inside the test's namespace).

    persistent_worker.py cycles BASE N   create/delete N blocks, reporting each call
    persistent_worker.py once PROTO START COUNT AT   one create, started at time AT
"""

from __future__ import annotations

import sys
import time

import portreserve


def block(base: int, i: int) -> tuple[str, int, int]:
    """Block i of a cycle run: 3 ports; neighbours overlap by one port and
    alternate protocols, so they coexist and share kernel-list entries."""
    return ("tcp" if i % 2 == 0 else "udp"), base + (i % 100) * 2, 3


def cycles(base: int, n: int) -> None:
    # Create block i, then delete block i-1: after "created i" is reported,
    # block i must survive any kill until "deleted i" is reported.
    for i in range(n):
        proto, start, count = block(base, i)
        token = portreserve.create_persistent(start, count, protocol=proto)
        print(f"created {i} {token}", flush=True)
        if i:
            proto, start, count = block(base, i - 1)
            portreserve.delete_persistent(start, count, protocol=proto)
            print(f"deleted {i - 1}", flush=True)


def once(proto: str, start: int, count: int, at: float) -> None:
    while time.time() < at:  # all workers call at (nearly) the same instant
        pass
    try:
        token = portreserve.create_persistent(start, count, protocol=proto)
        print(f"ok {token}")
    except portreserve.ReservationConflict as exc:
        print(f"conflict {exc.winerror}")


if __name__ == "__main__":
    if sys.argv[1] == "cycles":
        cycles(int(sys.argv[2]), int(sys.argv[3]))
    else:
        once(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
