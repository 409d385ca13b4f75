"""net/resolve.literal remembers its answers (every request sent asks it): the memory stays bounded however
many different hosts a peer names, and the answer is the same remembered or not."""

from __future__ import annotations

from notebook_im.net import resolve


def test_answers_are_right_and_the_memory_is_bounded() -> None:
    for _ in range(2):  # asked, then remembered
        assert resolve.literal("127.0.0.1") == "127.0.0.1"
        assert resolve.literal("[::1]") == "::1"
        assert resolve.literal("example.test") is None
        assert resolve.literal("999.1.1.1") is None
    for i in range(3 * resolve._MAX_CACHE):  # a flood of made-up names and addresses
        assert resolve.literal(f"host{i}.example.test") is None
        assert resolve.literal(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}") is not None
    assert len(resolve._LITERALS) <= resolve._MAX_CACHE
    assert resolve.literal("192.0.2.7") == "192.0.2.7", "past the bound (the cache started again), still answered"
    assert resolve.literal("not an address") is None
