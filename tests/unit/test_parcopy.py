"""parcopy.copy_into: a large copy into a shared mapping, split over two threads."""

from __future__ import annotations

import mmap
import os
import threading

import pytest

from pydistributed import parcopy

needs_two_cpus = pytest.mark.skipif(parcopy._CPUS < 2, reason="one CPU: copies never split")


def _mapping(n: int) -> mmap.mmap:
    fd = os.memfd_create("pydist-test")
    try:
        os.ftruncate(fd, n)
        return mmap.mmap(fd, n, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)


def _pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]  # period 251: a misplaced half shows


SIZES = [parcopy.SPLIT_MIN, parcopy.SPLIT_MIN + 12345, 3 * parcopy.SPLIT_MIN + 1]


@needs_two_cpus
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["bytes", "bytearray"])
def test_a_large_copy_is_split_and_exact(n: int, kind: str) -> None:
    src = _pattern(n) if kind == "bytes" else bytearray(_pattern(n))  # read-only and writable
    dst = _mapping(n + 4096)
    dst[n:] = b"\xee" * 4096
    before = parcopy.stats["split"]
    parcopy.copy_into(dst, memoryview(src).cast("B"), n)
    assert parcopy.stats["split"] == before + 1
    assert dst[:n] == bytes(src)
    assert dst[n:] == b"\xee" * 4096  # nothing written past n
    dst.close()  # no export left behind (BufferError otherwise)


def test_a_small_copy_is_one_copy() -> None:
    n = parcopy.SPLIT_MIN - 1
    src = _pattern(n)
    dst = _mapping(n)
    before = parcopy.stats["split"]
    parcopy.copy_into(dst, memoryview(src), n)
    assert parcopy.stats["split"] == before
    assert dst[:n] == src
    dst.close()


@needs_two_cpus
def test_no_thread_to_be_had_is_one_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injected with a fake: threads cannot be started (the process is at its limit)."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    n = parcopy.SPLIT_MIN * 2
    src = bytearray(_pattern(n))
    dst = _mapping(n)
    before = parcopy.stats["split"]
    parcopy.copy_into(dst, memoryview(src), n)
    assert parcopy.stats["split"] == before
    assert dst[:n] == bytes(src)
    dst.close()
