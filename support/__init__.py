"""Helpers the test suite (tests/) and the benchmarks (bench/) share, so that neither imports the other: the
third-party SIP programs and free ports (programs.py), the parser fuzzing harness (fuzzing.py), synthetic
captures of any size (captures.py), the SIP core's .py modules loaded next to the compiled ones (puresip.py).
Not part of the notebook_im package; importable from the repository root (pytest's `pythonpath = ["."]`,
bench/_common.py puts the root on sys.path)."""
