"""Smoke test of the benchmark harness bench/run (marker: interop, it runs SIPp)."""
