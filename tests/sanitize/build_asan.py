"""Build the cffi module of the shim with ASan and UBSan into OUT/portreserve/.

    python tests/sanitize/build_asan.py OUT

The same declarations and sources as build_ffi.py, with absolute paths (cffi
compiles inside OUT); the compiler flags come from CC/CFLAGS/LDFLAGS (run.sh).
"""

import sys
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

ffi = FFI()
ffi.cdef((CSRC / "pr_posix.h").read_text())
ffi.set_source("portreserve._pr_cffi", '#include "pr_posix.h"',
               sources=[str(CSRC / "pr_posix.c")], include_dirs=[str(CSRC)])
print(ffi.compile(tmpdir=sys.argv[1]))
