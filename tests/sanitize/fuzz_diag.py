"""Fuzz the Python (ctypes) parser of sock_diag dump replies, checked
result for result against the shim's (pr_parse_diag through cffi).

    python tests/sanitize/fuzz_diag.py SECONDS ARTIFACT_DIR CORPUS_DIR...

With atheris installed it is a coverage-guided libFuzzer run; without it, a
seeded mutation loop over the corpus (the seed is printed, so a failure can
be replayed).  Any exception other than the parser's OSError, or any
difference between the two parsers, is a failure: the input is written to
ARTIFACT_DIR and the run exits non-zero.  Keep such inputs as regression
tests in tests/sanitize/corpus/diag/ (tests/test_search.py replays them).
Bounded: it stops after SECONDS.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from portreserve import _posix_ctypes as py_parser

try:
    from portreserve import _posix_cffi as c_parser
except ImportError:  # no compiled shim: the Python parser alone
    c_parser = None


def outcome(parser, data: bytes):
    taken = bytearray(65536)
    try:
        result = parser.parse_diag(data, taken)
    except OSError as exc:
        result = ("error", exc.errno)
    return result, bytes(taken)


def check(data: bytes) -> None:
    got = outcome(py_parser, data)
    if c_parser is not None and got != outcome(c_parser, data):
        raise AssertionError("the Python and C parsers differ")


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip bits
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert bytes
            pos = rng.randint(0, len(b))
            b[pos:pos] = os.urandom(rng.randint(1, 8))
        elif op == 2 and b:  # cut
            pos = rng.randrange(len(b))
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 3 and len(b) >= 4:  # a message length or error code field
            pos = rng.randrange(0, len(b) - 3, 4) if len(b) >= 8 else 0
            value = rng.choice([0, 1, 15, 16, 17, 19, 20, 21, 22, len(b) - pos,
                                len(b) - pos + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
            b[pos:pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif op == 4 and len(b) >= 6:  # a message type
            pos = rng.randrange(0, len(b) - 5, 4) if len(b) >= 10 else 0
            b[pos + 4:pos + 6] = rng.choice([1, 2, 3, 4, 18, 20, 0xFFFF]).to_bytes(2, "little")
        elif op == 5:  # splice with another input
            other = rng.choice(corpus)
            b = b[:rng.randint(0, len(b))] + other[rng.randint(0, len(other)):]
    return bytes(b)


def mutation_loop(seconds: float, corpus: list[bytes], artifacts: Path) -> int:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"fuzz_diag.py: mutation loop, seed {seed}, {seconds:.0f} s", flush=True)
    rng = random.Random(seed)
    pool = list(corpus) or [b""]
    deadline, runs = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and runs < 10_000_000:
        data = mutate(rng, rng.choice(pool), pool)
        runs += 1
        try:
            check(data)
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            path = artifacts / f"crash-{runs}"
            path.write_bytes(data)
            print(f"fuzz_diag.py: {type(exc).__name__}: {exc}; input in {path}")
            return 1
        if runs % 64 == 0 and len(pool) < 4096:
            pool.append(data)
    print(f"fuzz_diag.py: {runs} inputs, no failure")
    return 0


def main() -> int:
    seconds, artifacts, dirs = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus = [p.read_bytes() for d in dirs for p in sorted(Path(d).iterdir()) if p.is_file()]
    for data in corpus:  # the kept inputs first, always
        check(data)
    try:
        import atheris
    except ImportError:
        return mutation_loop(seconds, corpus, artifacts)
    print(f"fuzz_diag.py: atheris, {seconds:.0f} s", flush=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-rss_limit_mb=2048",
                   f"-artifact_prefix={artifacts}/", *dirs],
                  lambda data: check(bytes(data)))
    atheris.instrument_all()
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
