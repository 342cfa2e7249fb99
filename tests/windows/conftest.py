"""Windows-only tests: run on Windows, and on Linux under Wine through
run-under-wine.sh (see docs/windows.md).  Elsewhere nothing here is
collected."""

import sys

import pytest

if sys.platform != "win32":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def calls():
    """The system-call layer PORTRESERVE_BACKEND chose."""
    from portreserve._backend import calls
    return calls
