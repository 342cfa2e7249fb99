"""Tokens are opaque 64-bit values nobody can predict, also across fork().

Linux and macOS make their own tokens (Windows' come from its stack).  They
come from the system's CSPRNG: a Mersenne Twister, once 312 of its 64-bit
outputs are seen through the public API, gives away every later one, and a
forked child would repeat its parent's sequence.
"""

from __future__ import annotations

import os
import random
import sys

import pytest

import portreserve

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Windows makes its own tokens")


def _untemper(y: int) -> int:
    """The Mersenne Twister state word behind one 32-bit output."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    r = y
    for _ in range(5):
        r = y ^ ((r << 7) & 0x9D2C5680)
    y = r & 0xFFFFFFFF
    r = y
    for _ in range(3):
        r = y ^ (r >> 11)
    return r & 0xFFFFFFFF


def _predictor(tokens: list[int]) -> random.Random:
    """A generator in the state that 312 consecutive getrandbits(64) outputs reveal."""
    words = []
    for t in tokens:
        words += [t & 0xFFFFFFFF, t >> 32]  # getrandbits(64): low word first
    state = tuple(_untemper(w) for w in words[-624:]) + (624,)
    rng = random.Random()
    rng.setstate((3, state, None))
    return rng


def _tokens(n: int) -> list[int]:
    out = []
    for _ in range(n):
        with portreserve.reserve(1) as res:
            out.append(res.token)
    return out


def test_the_predictor_does_predict_a_mersenne_twister():
    # The attack the next test makes, shown to work on what tokens used to be.
    rng = random.Random(1234)
    seen = [rng.getrandbits(64) for _ in range(312)]
    guess = _predictor(seen)
    assert [guess.getrandbits(64) for _ in range(10)] == [rng.getrandbits(64) for _ in range(10)]


def test_tokens_cannot_be_predicted_from_earlier_ones():
    seen = _tokens(312)
    guess = _predictor(seen)
    predicted = [guess.getrandbits(64) for _ in range(10)]
    actual = _tokens(10)
    assert not set(predicted) & set(actual)


def test_tokens_are_nonzero_64_bit_and_distinct_among_live_ones():
    held = [portreserve.reserve(1) for _ in range(200)]
    try:
        tokens = [r.token for r in held]
    finally:
        for r in held:
            r.close()
    assert len(set(tokens)) == len(tokens)
    assert all(0 < t < 2**64 for t in tokens)
    assert any(t >= 2**63 for t in tokens)  # all 64 bits are used (fails with odds 2**-200)


def test_a_forked_child_makes_other_tokens():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its tokens, then leave at once
        try:
            os.write(write, " ".join(map(str, _tokens(20))).encode())
        finally:
            os._exit(0)
    os.close(write)
    mine = _tokens(20)
    with os.fdopen(read) as f:
        theirs = [int(t) for t in f.read().split()]
    os.waitpid(pid, 0)
    assert len(theirs) == 20
    assert not set(mine) & set(theirs)
