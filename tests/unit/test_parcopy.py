"""parcopy.copy_into: a large copy into a shared mapping, split over two threads."""

from __future__ import annotations

import mmap
import os
import threading
import time

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


@needs_two_cpus
def test_an_exception_while_the_helper_copies_frees_nothing_under_it() -> None:
    """A signal handler's exception reaches the copying thread while the helper copies (the
    signal is real; the handler raises only while the helper runs): the destination cannot be
    closed under the helper, and the helper finishes its half, intact."""
    import signal

    n = 256 << 20
    src = bytearray(_pattern(1 << 20)) * 256
    dst = _mapping(n)  # fresh pages: the copy is slow enough to be caught in the middle

    def raise_while_copying(*_: object) -> None:
        if any(t.name == "pydist-copy" for t in threading.enumerate()):
            raise KeyboardInterrupt("a signal while the helper copies")

    old = signal.signal(signal.SIGALRM, raise_while_copying)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.0005)
    interrupted = False
    try:
        parcopy.copy_into(dst, memoryview(src), n)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    helpers = [t for t in threading.enumerate() if t.name == "pydist-copy"]
    if interrupted and helpers:
        with pytest.raises(BufferError):
            dst.close()  # the helper holds it
    deadline = time.monotonic() + 60  # (a helper caught while starting cannot be joined yet)
    while any(t.name == "pydist-copy" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the helper did not finish"
        time.sleep(0.01)
    half = (n // 2) & ~4095
    assert dst[half:] == src[half:]  # the helper's half is whole
    if not interrupted:
        assert dst[:half] == src[:half]
    dst.close()  # free again once the helper is done
