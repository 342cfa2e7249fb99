"""Are we under Wine?  Asked of the system itself, never of a variable we set."""

import ctypes

import pytest

# Wine's ntdll exports wine_get_version; Windows' does not.
WINE = hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")

needs_windows = pytest.mark.skipif(
    WINE, reason="Wine does not implement port reservations (WSAIoctl gives WSAEOPNOTSUPP, "
                 "its iphlpapi lacks the persistent calls)")
wine_only = pytest.mark.skipif(
    not WINE, reason="checks how we report what Wine does not implement")
