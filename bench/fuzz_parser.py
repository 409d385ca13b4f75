"""Fuzz the SIP parser for a bounded time and print the executions, the time and what was found.

    python bench/fuzz_parser.py [--seconds 300] [--engine atheris|mutate] [--seed N]

The target (support/fuzzing.py `exercise`) runs each input through parse_message (datagram and stream
mode), the typed accessors, the 400 a UA would build, a serialize/re-parse round trip and StreamFramer.feed;
only RemoteProtocolError may come out. Seeds are the corpus in tests/corpus.

- `atheris` (default when it is installed: `pip install atheris`, wheels for CPython 3.8-3.11 on Linux/macOS):
  coverage-guided libFuzzer in a child process, seeded with the corpus and the structure-aware mutator of
  fuzzing.py as a custom mutator half of the time. libFuzzer's own summary line gives the executions.
- `mutate`: the same structure-aware mutator driven by a seeded PRNG, pure Python, no extra dependency
  (what CI uses through hypothesis is the same target, see tests/hostile/test_fuzz.py).

Exit status 0 means no input made anything but RemoteProtocolError escape; otherwise the offending input is
written to fuzz-crash-*.sip in the current directory and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_mutate(seconds: float, seed: int) -> int:
    from support.fuzzing import exercise, mutate, seeds

    rng = random.Random(seed)
    pool = seeds()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            data = (
                mutate(rng.choice(pool), rng, rounds=8) if rng.random() < 0.97 else rng.randbytes(rng.randint(0, 512))
            )
            try:
                exercise(data)
            except Exception:  # noqa: BLE001 - this is what we are hunting
                path = Path(f"fuzz-crash-{seed}-{n}.sip")
                path.write_bytes(data)
                traceback.print_exc()
                print(f"CRASH after {n} executions; input written to {path}")
                return 1
            n += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    print(f"engine=mutate executions={n} time={elapsed:.1f}s rate={n / elapsed:.0f}/s crashes=0 seed={seed}")
    return 0


def atheris_child(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        import notebook_im.sip.headers  # noqa: F401
        import notebook_im.sip.message  # noqa: F401
        import notebook_im.sip.parser  # noqa: F401
        import notebook_im.sip.uri  # noqa: F401
    from support.fuzzing import exercise, mutate

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if seed % 2:
            return atheris.Mutate(data, max_size)
        return mutate(data, random.Random(seed), rounds=6)[:max_size]

    atheris.Setup(argv, exercise, custom_mutator=custom_mutator)
    atheris.Fuzz()


def run_atheris(seconds: float, seed: int) -> int:
    from support.fuzzing import seeds

    work = Path(tempfile.mkdtemp(prefix="fuzz-corpus-"))
    try:
        for i, data in enumerate(seeds()):
            (work / f"seed{i:03d}").write_bytes(data)
        cmd = [
            sys.executable,
            __file__,
            "--atheris-child",
            f"-max_total_time={int(seconds)}",
            f"-seed={seed}",
            "-max_len=70000",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={os.getcwd()}/fuzz-crash-",
            str(work),
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        elapsed = time.perf_counter() - start
        out = proc.stderr + proc.stdout
        done = re.search(r"Done (\d+) runs in (\d+) second", out)
        execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
        n = int(done.group(1)) if done else int(execs.group(1)) if execs else -1
        cov = re.findall(r"cov: (\d+) ft: (\d+)", out)
        if proc.returncode != 0:
            print(out[-6000:])
            print(f"CRASH or error (exit {proc.returncode}) after ~{n} executions; see fuzz-crash-* in {os.getcwd()}")
            return 1
        extra = f" coverage={cov[-1][0]} features={cov[-1][1]}" if cov else ""
        print(f"engine=atheris executions={n} time={elapsed:.1f}s rate={n / max(elapsed, 1e-9):.0f}/s crashes=0{extra}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--atheris-child":
        atheris_child([sys.argv[0]] + sys.argv[2:])
        return 0
    try:
        import atheris  # noqa: F401

        default = "atheris"
    except ImportError:
        default = "mutate"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--engine", choices=("atheris", "mutate"), default=default)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.engine == "atheris":
        return run_atheris(args.seconds, args.seed)
    return run_mutate(args.seconds, args.seed)


if __name__ == "__main__":
    sys.exit(main())
