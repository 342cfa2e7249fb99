"""How Windows codes become the contract's classes (docs/API.md section 3).

Platform-free: the table in _errors.py is what the Windows engine uses, so its
decisions are checked on every system, not only where Windows runs.
"""

import pytest

from portreserve import (
    InvalidParameter,
    NotSupported,
    OperationAborted,
    PortReservationError,
    ReservationExhausted,
    ReservationNotFound,
)
from portreserve import _errors


def test_unknown_token_is_not_found():
    # WSAEINVAL from a call whose only input Windows could refuse is the token.
    exc = _errors.from_winerror(10022, "associate", token=0x1234)
    assert type(exc) is ReservationNotFound
    assert (exc.errno, exc.winerror) == (2, 1168)
    assert "4660" in str(exc) and "10022" in str(exc)
    # Without a token it is what the page says: an invalid argument.
    assert type(_errors.from_winerror(10022, "associate")) is InvalidParameter
    # Other codes keep their class even with a token.
    assert type(_errors.from_winerror(10045, "associate", token=1)) is NotSupported


def test_no_buffers_is_exhausted():
    # WSAENOBUFS: Winsock's "no port left" (bind to port 0, wildcard acquire).
    exc = _errors.from_winerror(10055, "bind")
    assert type(exc) is ReservationExhausted
    assert (exc.errno, exc.winerror) == (98, 10048)  # the contract's numbers
    assert "10055" in str(exc)


def test_short_result_is_an_error():
    exc = _errors.from_winerror(_errors.ERROR_INVALID_DATA, "acquire")
    assert type(exc) is PortReservationError and exc.winerror == 13 and exc.errno == 5


@pytest.mark.parametrize("win32,wsa", [(50, 10045), (87, 10022), (5, 10013), (995, 995),
                                       (10045, 10045), (0, 0)])
def test_overlapped_outcomes_speak_winsock(win32, wsa):
    # A packet's Win32 code is reported as the synchronous call's Winsock code.
    assert _errors.wsa_code(win32) == wsa


def test_a_cancel_may_end_in_wsaeintr():
    # The reference pages: an aborted reservation IOCTL ends with
    # WSA_OPERATION_ABORTED or WSAEINTR.
    assert _errors.ABORTED == {995, 10004}
    for code in _errors.ABORTED:
        assert type(_errors.from_winerror(code, "t")) is OperationAborted
