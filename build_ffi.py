"""CFFI build script (out-of-line API mode): declares the shim, computes nothing.

The cdef is the shim's own header, so the declarations live next to the C
they describe.  setup.py names this file in ``cffi_modules``.
"""

import pathlib
import sys

from cffi import FFI

CSRC = pathlib.Path(__file__).parent / "csrc"

if sys.platform == "win32":
    HEADER, SOURCES, LIBRARIES = "pr_windows.h", ["csrc/pr_windows.c"], ["ws2_32", "iphlpapi"]
else:
    HEADER, SOURCES, LIBRARIES = "pr_posix.h", ["csrc/pr_posix.c"], []

ffibuilder = FFI()
ffibuilder.cdef((CSRC / HEADER).read_text())
ffibuilder.set_source(
    "portreserve._pr_cffi",
    f'#include "{HEADER}"',
    sources=SOURCES,
    include_dirs=[str(CSRC)],
    libraries=LIBRARIES,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
