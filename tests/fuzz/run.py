"""Run the fuzz targets of targets.py for a bounded time each.

    python tests/fuzz/run.py [--seconds 30] [--engine auto|atheris|random] [TARGET ...]

With atheris (pip install atheris) each target runs under libFuzzer's
coverage-guided search in a child process; without it (or with --engine
random), a mutation loop with a fixed seed runs instead, so that a run is
repeatable.  Either starts from the seeds in corpus/TARGET and from every
input found before (regressions/TARGET).  An input that makes a target fail
is written to regressions/TARGET/ (commit it: tests/test_fuzz_regressions.py
then replays it in every test run) and the run exits with status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261130
# Pieces the formats are made of, for the mutation loop to splice in.
TOKENS = [b"-", b",", b"\n", b"0", b"1", b"65535", b"65536", b"-1", b"4294967296", b" ",
          b"+", b"_", b"\xd9\xa1", b"[", b"]", b"{", b"}", b'"', b":", b"null", b"true",
          b"1e999", b"1.0", b"9" * 40, b'"tcp"', b'"udp"', b'"start"', b'"count"',
          b'"token"', b'"added"', b'"reservations"', b'"format"', b'"boot_id"', b"\xff"]


def inputs(target: str) -> list[bytes]:
    """The seeds and every input kept from earlier runs."""
    out = []
    for kind in ("corpus", "regressions"):
        folder = os.path.join(HERE, kind, target)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            with open(os.path.join(folder, name), "rb") as f:
                out.append(f.read())
    return out or [b""]


def keep(target: str, data: bytes) -> str:
    folder = os.path.join(HERE, "regressions", target)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "crash-" + hashlib.sha1(data).hexdigest()[:16])
    with open(path, "wb") as f:
        f.write(data)
    return path


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(b))
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and b:
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            other = rng.choice(pool)
            start = rng.randint(0, len(other))
            b[pos:pos] = other[start:start + rng.randint(1, 64)]
        elif op == 4 and b:
            chunk = b[pos:pos + rng.randint(1, 16)]
            b[pos:pos] = chunk * rng.randint(1, 8)
        else:
            b[pos:pos] = bytes([rng.randrange(256)])
    return bytes(b[:8192])


def run_random(target: str, seconds: float, max_runs: int = 10**7) -> int:
    from targets import TARGETS
    fn = TARGETS[target]
    rng = random.Random(SEED)
    pool = inputs(target)
    deadline = time.monotonic() + seconds
    failures = 0
    runs = 0
    while runs < max_runs and time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool), pool)
        runs += 1
        try:
            fn(data)
        except Exception:
            failures += 1
            print(f"{target}: failure on {data!r} -> {keep(target, data)}\n"
                  f"{traceback.format_exc()}", file=sys.stderr)
            if failures >= 10:
                break
            continue
        if rng.random() < 0.01 and len(pool) < 5000:  # grow the pool a little
            pool.append(data)
    print(f"{target}: {runs} runs (random, seed {SEED}), {failures} failures")
    return 1 if failures else 0


def run_atheris(target: str, seconds: float) -> int:
    with tempfile.TemporaryDirectory() as work:
        corpus = os.path.join(work, "corpus")
        artifacts = os.path.join(work, "artifacts")
        os.makedirs(corpus)
        os.makedirs(artifacts)
        for i, data in enumerate(inputs(target)):
            with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
                f.write(data)
        cmd = [sys.executable, os.path.abspath(__file__), "--atheris-child", target, corpus,
               f"-max_total_time={int(seconds)}", f"-artifact_prefix={artifacts}/",
               "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]
        status = subprocess.run(cmd, timeout=seconds + 120).returncode
        for name in sorted(os.listdir(artifacts)):
            with open(os.path.join(artifacts, name), "rb") as f:
                data = f.read()
            print(f"{target}: atheris found {data!r} -> {keep(target, data)}", file=sys.stderr)
        return 1 if status or os.listdir(artifacts) else 0


def atheris_child(target: str, args: list[str]) -> None:
    import atheris
    with atheris.instrument_imports():
        from targets import TARGETS
    atheris.Setup([sys.argv[0], *args], TARGETS[target])
    atheris.Fuzz()


def main() -> int:
    sys.path.insert(0, HERE)
    if len(sys.argv) > 2 and sys.argv[1] == "--atheris-child":
        atheris_child(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="per target (default 30)")
    parser.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    parser.add_argument("targets", nargs="*", default=["port_list", "state_file"])
    args = parser.parse_args()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    status = 0
    for target in args.targets:
        run = run_atheris if engine == "atheris" else run_random
        status |= run(target, args.seconds)
    return status


if __name__ == "__main__":
    sys.exit(main())
