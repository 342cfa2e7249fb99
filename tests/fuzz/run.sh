#!/usr/bin/env bash
# CI step: each fuzz target for at most 30 s (atheris when installed, else
# the fixed-seed mutation loop).  Exit status 1 if any input made one fail;
# the input is then in tests/fuzz/regressions/ and in the log.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python tests/fuzz/run.py --seconds "${FUZZ_SECONDS:-30}" "$@"
