"""A bounded fuzzing run of the parser in CI: only RemoteProtocolError may come out of parse_message and
StreamFramer.feed (and the accessors, the 400 a UA builds, the serialize/re-parse round trip; see fuzzing.py).

Two parts, both reporting their executions: hypothesis drawing corpus seeds, mutations and raw bytes
(NIM_FUZZ_EXAMPLES, default 15000), and a time-bounded run of the structure-aware mutator (NIM_FUZZ_SECONDS,
default 15 s). `python bench/fuzz_parser.py` is the longer, coverage-guided run (atheris).
"""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.fuzzing import exercise, mutate, seeds

SEEDS = seeds()
EXAMPLES = int(os.environ.get("NIM_FUZZ_EXAMPLES", "15000"))
SECONDS = float(os.environ.get("NIM_FUZZ_SECONDS", "15"))
_count = {"hypothesis": 0}

inputs = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda seed, r: mutate(seed, random.Random(r), rounds=8), st.sampled_from(SEEDS), st.integers(0, 2**32)),
    st.builds(lambda seed, cut: seed[:cut], st.sampled_from(SEEDS), st.integers(0, 4000)),  # truncations
    st.builds(
        lambda seed, junk, at: seed[:at] + junk + seed[at:],
        st.sampled_from(SEEDS),
        st.binary(max_size=64),
        st.integers(0, 4000),
    ),
)


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(inputs)
def _fuzz_hypothesis(data: bytes) -> None:
    _count["hypothesis"] += 1
    exercise(data)


def test_fuzz_parser_smoke():
    """The fast tier's share: 2,000 mutated seeds (the long runs below are marked slow)."""
    rng = random.Random(2026)
    for _ in range(2000):
        exercise(mutate(rng.choice(SEEDS), rng, rounds=8))


@pytest.mark.slow
def test_fuzz_parser_hypothesis(capsys):
    start = time.perf_counter()
    _fuzz_hypothesis()
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[fuzz] hypothesis: {_count['hypothesis']} executions in {elapsed:.1f} s, no crash")
    assert _count["hypothesis"] >= min(EXAMPLES, 100)


@pytest.mark.slow
def test_fuzz_parser_time_bounded(capsys):
    seed = int(os.environ.get("NIM_FUZZ_SEED", "0")) or random.randrange(2**32)  # new ground each run
    rng = random.Random(seed)
    n = 0
    start = time.perf_counter()
    deadline = start + SECONDS
    while time.perf_counter() < deadline:
        for _ in range(100):
            data = mutate(rng.choice(SEEDS), rng, rounds=8)
            try:
                exercise(data)
            except Exception as exc:  # pragma: no cover - a finding: show the input
                raise AssertionError(f"crash (NIM_FUZZ_SEED={seed}) on input {data[:3000]!r}") from exc
            n += 1
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[fuzz] mutator: {n} executions in {elapsed:.1f} s, no crash (NIM_FUZZ_SEED={seed})")
    assert n > 1000
