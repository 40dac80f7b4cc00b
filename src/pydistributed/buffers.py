"""Memory for large incoming frames, reused once the objects built on it are gone.

``transport.read_message`` asks its ``alloc`` for the memory of each frame of 1 MiB or more;
a connection passes :meth:`BufferPool.get` of its cluster's pool. See :class:`BufferPool`.
"""

from __future__ import annotations

import collections
import mmap
import os
import sys
import threading
import time
import weakref
from typing import Any

__all__ = ["BufferPool"]


class _PooledBuffer(mmap.mmap):
    """A received frame's memory; weakly referenceable, so the pool sees when it is free."""


class BufferPool:
    """Memory for large incoming frames, reused once the objects built on it are gone.

    Fresh memory costs the kernel a page fault and a zero-fill per 4 KiB page: on this kind of
    machine receiving 100 MB into new memory takes several times longer than into memory
    that is already mapped. So a frame's memory is a ``memfd``; when the last object using it
    (a numpy array, say) is freed, a weak reference hands the ``memfd`` back, and the next large
    frame maps the same pages again in one step (``MAP_POPULATE``: they exist already). A fresh
    ``memfd`` is mapped without committing anything: the reader commits it a chunk at a time as
    the data arrives (``transport._read_into``), so a peer that declares a huge frame and sends
    nothing costs no memory. At most ``max_cached`` bytes are kept; idle memory is given back by
    :meth:`trim`.

    Where the kernel backs private memory with transparent huge pages on request (``madvise``
    or ``always`` in ``/sys/kernel/mm/transparent_hugepage/enabled``), a frame of
    :data:`HUGE_MIN` bytes or more gets fresh private memory instead, advised ``MADV_HUGEPAGE``:
    one fault and one zero-fill per 2 MiB, and faster than mapping a cached ``memfd`` again
    (measured here, 100 MB: committing fresh huge pages 4.5 ms; mapping a cached ``memfd`` 6.5 ms
    and unmapping it 3 ms; fresh shared or 4 KiB pages 33-72 ms). Nothing is cached for them.

    The weak-reference callback only appends to a deque (it can run on any thread, inside any
    lock); the bookkeeping happens in :meth:`get` and :meth:`trim`.
    """

    def __init__(self, max_cached: int = 512 << 20) -> None:
        self.max_cached = max_cached
        self._free: list[tuple[int, int]] = []  # (capacity, fd)
        self._cached = 0
        self._returned: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._live: set[Any] = set()
        self._lock = threading.Lock()
        self.last_use = time.monotonic()
        self.enabled = hasattr(os, "memfd_create") and hasattr(mmap, "MAP_POPULATE")
        self.huge = huge_pages()

    def get(self, size: int) -> Any:
        """A writable buffer of exactly ``size`` bytes."""
        if self.huge and size >= HUGE_MIN:
            buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                buf.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
            return buf
        if not self.enabled:
            return mmap.mmap(-1, size)
        self.last_use = time.monotonic()
        fd = -1
        with self._lock:
            self._collect()
            best = None
            for i, (cap, _) in enumerate(self._free):
                if size <= cap <= 2 * size and (best is None or cap < self._free[best][0]):
                    best = i
            if best is not None:
                cap, fd = self._free.pop(best)
                self._cached -= cap
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE  # reused: its pages exist, map them all
        if fd < 0:
            flags = mmap.MAP_SHARED  # fresh: committed as the data arrives
            cap = size
            try:
                fd = os.memfd_create("pydist-frame", os.MFD_CLOEXEC)
                os.ftruncate(fd, cap)
            except OSError:
                if fd >= 0:
                    os.close(fd)
                return mmap.mmap(-1, size)
        try:
            buf = _PooledBuffer(fd, size, flags=flags)
        except OSError:
            os.close(fd)
            raise
        returned = self._returned

        def give_back(r: Any, cap: int = cap, fd: int = fd) -> None:
            returned.append((cap, fd, r))  # may run on any thread, inside any lock

        ref = weakref.ref(buf, give_back)
        self._live.add(ref)
        return buf

    def _collect(self) -> None:
        while True:
            try:
                cap, fd, ref = self._returned.popleft()
            except IndexError:
                return
            self._live.discard(ref)
            if self._cached + cap <= self.max_cached:
                self._free.append((cap, fd))
                self._cached += cap
            else:
                os.close(fd)

    def trim(self, idle: float = 10.0) -> None:
        """Give back cached memory when no large frame arrived for ``idle`` seconds."""
        if not self._free and not self._returned:
            return
        if time.monotonic() - self.last_use < idle:
            return
        with self._lock:
            self._collect()
            free, self._free, self._cached = self._free, [], 0
        for _, fd in free:
            os.close(fd)


HUGE_MIN = 4 << 20  # frames this large get fresh huge pages, where the kernel gives them
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages() -> bool:
    """Whether private memory advised ``MADV_HUGEPAGE`` gets transparent huge pages here."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(mmap, "MAP_PRIVATE"):
        return False
    try:
        with open(_THP) as f:
            setting = f.read()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def new_bytes(n: int) -> tuple[bytes, Any]:
    """A new ``bytes`` of ``n`` bytes and a writable view of its memory, to receive into.

    A large ``bytes`` argument or result would otherwise arrive in a buffer and be copied into
    a ``bytes`` once more (twice its size at the peak). CPython lets a ``bytes`` be made empty
    and filled before anyone else sees it (``PyBytes_FromStringAndSize(NULL, n)``); its
    characters start at ``bytes.__basicsize__ - 1``. Elsewhere: a ``bytearray`` (copied later).
    """
    global _PyBytes_FromStringAndSize
    if _PyBytes_FromStringAndSize is _UNSET:
        _PyBytes_FromStringAndSize = _bytes_maker()
    if _PyBytes_FromStringAndSize is None:
        buf = bytearray(n)
        return buf, buf  # type: ignore[return-value]
    import ctypes

    obj = _PyBytes_FromStringAndSize(None, n)
    view = (ctypes.c_char * n).from_address(id(obj) + bytes.__basicsize__ - 1)
    return obj, view


def _bytes_maker() -> Any:
    if sys.implementation.name != "cpython":
        return None
    import ctypes  # 2 ms: only once a large bytes object is received

    try:
        f = ctypes.pythonapi.PyBytes_FromStringAndSize
    except AttributeError:
        return None
    f.restype = ctypes.py_object
    f.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    return f


_UNSET: Any = object()
_PyBytes_FromStringAndSize: Any = _UNSET  # made on first use (_bytes_maker)
