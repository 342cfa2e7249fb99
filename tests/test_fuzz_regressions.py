"""Every fuzz seed and every input a fuzz run found, replayed in every test run.

The targets are tests/fuzz/targets.py; tests/fuzz/run.sh fuzzes them in CI
(30 s each).  The inputs under tests/fuzz/regressions/ were found by fuzzing
the parsers this package had before: the port-list reader took ports past
65535, ranges ending below their start, whitespace, signs and non-ASCII
digits, and glued entries across newlines; the state reader raised KeyError,
TypeError, AttributeError and MemoryError on files it should have called
damaged.  Each must now be refused with ValueError alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux formats")

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
sys.path.insert(0, FUZZ)


def _files(kind: str) -> list[tuple[str, str]]:
    out = []
    for target in ("port_list", "state_file"):
        folder = os.path.join(FUZZ, kind, target)
        out += [(target, os.path.join(folder, n)) for n in sorted(os.listdir(folder))]
    return out


@pytest.mark.parametrize("target,path", _files("corpus") + _files("regressions"),
                         ids=lambda v: os.path.basename(v))
def test_target_holds(target, path):
    from targets import TARGETS
    with open(path, "rb") as f:
        TARGETS[target](f.read())


@pytest.mark.parametrize("target,path", _files("regressions"), ids=lambda v: os.path.basename(v))
def test_found_inputs_are_refused(target, path):
    from portreserve import _linux_reserved_ports, _port_list
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(ValueError):
        if target == "port_list":
            _port_list.parse_port_list(data.decode("utf-8", "replace"))
        else:
            _linux_reserved_ports._parse(data)


def test_a_short_fuzz_run_finds_nothing():
    # The CI step runs 30 s per target; this keeps a few seconds in every run.
    r = subprocess.run([sys.executable, os.path.join(FUZZ, "run.py"), "--engine", "random",
                        "--seconds", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
