#!/usr/bin/env bash
# Cross-compiles the POSIX shim for macOS with zig cc (PyPI's ziglang ships
# the macOS libc headers), for x86_64 and arm64 at the wheels' deployment
# target, with -Werror.
#
# What it proves: csrc/pr_posix.c, and the C that cffi generates from
# build_ffi.py (the cdef in pr_posix.h plus cffi's glue), compile against
# the macOS system headers without a warning.
# What it cannot: nothing here links or runs; whether the calls behave on
# macOS is for the GitHub macOS runners (.github/workflows/ci.yml).  The
# generated C is compiled against this Linux interpreter's Python headers
# (pyconfig.h from Linux, same LP64 sizes and the same _DARWIN_C_SOURCE),
# under Py_LIMITED_API as setup.py builds it; a macOS pyconfig.h is not to be
# had here.
#
#   bash tests/macos/compile-check.sh      (in the project's venv)
set -euo pipefail
cd "$(dirname "$0")/../.."

MACOS=11.0  # MACOSX_DEPLOYMENT_TARGET in pyproject.toml
TARGETS=("x86_64-macos.$MACOS" "aarch64-macos.$MACOS")
FLAGS=(-std=c11 -Wall -Wextra -Werror -c)

python -m ziglang version >/dev/null 2>&1 || python -m pip install -q ziglang
echo "zig $(python -m ziglang version)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python -c 'import sys; sys.path.insert(0, "."); from build_ffi import ffibuilder; ffibuilder.emit_c_code(sys.argv[1])' "$out/_pr_cffi.c"
pyinc=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$pyinc/Python.h" ] || { echo "no Python.h in $pyinc"; exit 1; }

for target in "${TARGETS[@]}"; do
    python -m ziglang cc -target "$target" "${FLAGS[@]}" csrc/pr_posix.c -o "$out/pr_posix-$target.o"
    python -m ziglang cc -target "$target" "${FLAGS[@]}" -DPy_LIMITED_API=0x030A0000 \
        -Icsrc -I"$pyinc" "$out/_pr_cffi.c" -o "$out/_pr_cffi-$target.o"
    echo "ok: $target"
done
