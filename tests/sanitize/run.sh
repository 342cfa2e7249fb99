#!/usr/bin/env bash
# The parsers of sock_diag replies fuzzed, and the Linux suite run on a shim
# built with ASan and UBSan.  Bounded: each fuzzer runs FUZZ_SECONDS (default
# 60), the sanitized tests at most SUITE_SECONDS (default 600; they take
# about two minutes here).
#
# Usage, from the repository root with the test environment active (the
# package installed with its test extras: python, cffi, pytest):
#     bash tests/sanitize/run.sh
# It installs what it needs: clang and libFuzzer (Debian: clang,
# libclang-rt-dev), gcc's ASan/UBSan runtimes, and atheris (pip; without it
# the Python fuzzer is a seeded mutation loop).  Inputs a fuzzer finds are
# left in the artifact folder it prints; keep them in
# tests/sanitize/corpus/diag/, where tests/test_search.py replays them
# through both parsers.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
python=${PYTHON:-python}
fuzz_seconds=${FUZZ_SECONDS:-60}
suite_seconds=${SUITE_SECONDS:-600}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=${ARTIFACTS:-$work/artifacts}
mkdir -p "$artifacts"

step() { printf '\n=== sanitize: %s\n' "$*"; }

"$python" -c 'import portreserve, pytest, cffi' || {
    echo "sanitize: $python lacks portreserve, pytest or cffi: activate the test environment"
    exit 1
}

fuzzer_ok() {
    printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' \
        > "$work/probe.c"
    clang -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" 2>/dev/null
}

step "tools"
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v clang >/dev/null && fuzzer_ok || need+=(clang libclang-rt-dev)
if ((${#need[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
fuzzer_ok || { echo "clang cannot link libFuzzer"; exit 1; }
"$python" -m pip install -q atheris \
    || echo "atheris did not install: the Python fuzzer runs its mutation loop"

step "libFuzzer: pr_parse_diag (C), ASan + UBSan, ${fuzz_seconds} s"
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$repo/csrc" tests/sanitize/fuzz_diag.c csrc/pr_posix.c -o "$work/fuzz_diag"
# New inputs go to a scratch corpus; the kept one is read only.
mkdir -p "$work/corpus"
"$work/fuzz_diag" -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$work/corpus" tests/sanitize/corpus/diag 2>&1 | tail -15

step "Python parser vs the shim's, ${fuzz_seconds} s"
mkdir -p "$work/corpus-py"
"$python" tests/sanitize/fuzz_diag.py "$fuzz_seconds" "$artifacts" \
    "$work/corpus-py" tests/sanitize/corpus/diag 2>&1 | { grep -v '^"' || true; } | tail -8

step "the shim built with ASan + UBSan"
pkg=$("$python" -c 'import os, portreserve; print(os.path.dirname(portreserve.__file__))')
mkdir -p "$work/site"
cp -r "$pkg" "$work/site/"
rm -f "$work/site/portreserve"/_pr_cffi*.so
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CC=gcc CFLAGS="-g -O1 -fno-omit-frame-pointer $sanitize" LDFLAGS="$sanitize" \
    "$python" tests/sanitize/build_asan.py "$work/build" >/dev/null
cp "$work"/build/portreserve/_pr_cffi*.so "$work/site/portreserve/"

step "the Linux suite (cffi) on the sanitized shim"
# Python itself is not built with ASan: the runtime is preloaded, leaks are
# not checked (the interpreter keeps memory until exit), and any report
# ends the process with an error.
export LD_PRELOAD
LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=86
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" PORTRESERVE_BACKEND=cffi
"$python" -c 'import sys, portreserve._pr_cffi as m; assert m.__file__.startswith(sys.argv[1]), m.__file__' \
    "$work/site"
# The test files that drive the shim (the others test Python layers above
# it, or Windows); those that this checkout lacks are left out.
files=()
for f in test_posix_calls test_runtime test_search test_args test_persistent test_handoff \
         test_bad_input test_tokens; do
    [ -f "tests/$f.py" ] && files+=("tests/$f.py")
done
timeout "$suite_seconds" "$python" -m pytest -q -p no:cacheprovider "${files[@]}"
