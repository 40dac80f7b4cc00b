"""Copying a large buffer into shared memory on two CPUs at once.

A single ``memcpy`` into warm shared pages runs at ~7 GB/s on one core here; split in two, with
the second half copied by a helper thread through ``ctypes.memmove`` (which releases the GIL)
while this thread copies the first half (a slice assignment, which holds it), the same copy
takes about half the time when a second CPU is free. Below :data:`SPLIT_MIN` bytes, on one
CPU, or when a buffer's address cannot be had, it is one plain copy.

The source's address comes from the buffer protocol (``cbuffer.Held``), so read-only
sources (a ``bytes``, a read-only array) split too; the buffer is held until the helper is done.
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["SPLIT_MIN", "copy_into", "stats"]

SPLIT_MIN = 8 << 20  # smaller copies are not worth a thread (~0.1 ms to start and join)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_CPUS = _cpus()
stats = {"split": 0}  # copies made on two CPUs


def copy_into(dst: Any, src: memoryview, n: int) -> None:
    """``dst[:n] = src`` for a writable ``dst`` (an ``mmap``) and a contiguous byte view
    ``src`` of ``n`` bytes, on two CPUs when it is large enough and two are there.

    The helper thread holds both buffers exported until its copy is done, whatever happens to
    this thread meanwhile (an exception from a signal handler while it waits): ``dst`` cannot
    be closed (``BufferError``) nor ``src``'s memory freed under it.
    """
    if n < SPLIT_MIN or _CPUS < 2:
        dst[:n] = src
        return
    try:
        import ctypes

        from .cbuffer import Held

        held = Held(src)
    except (ImportError, BufferError):  # no ctypes, or no address for this buffer: one copy
        dst[:n] = src
        return
    half = (n // 2) & ~4095
    worker = threading.Thread(
        target=_copy_half,
        args=(ctypes.c_char.from_buffer(dst), held, half, n - half),
        name="pydist-copy",
        daemon=True,
    )
    try:
        worker.start()
    except RuntimeError:  # no thread to be had: one copy
        held.release()
        del worker  # and with it the export of dst
        dst[:n] = src
        return
    dst[:half] = src[:half]
    worker.join()
    stats["split"] += 1


def _copy_half(anchor: Any, held: Any, offset: int, count: int) -> None:
    """The helper: copy ``count`` bytes at ``offset`` from ``held``'s memory into ``anchor``'s,
    then let go of both exports."""
    import ctypes

    try:
        ctypes.memmove(ctypes.addressof(anchor) + offset, held.address + offset, count)
    finally:
        held.release()
