"""Reused shared memory for large buffers on a local link: the sender's pool, the receiver's
cached mappings, and how the receiver says that a buffer is free again.

Filling fresh shared pages costs as much as the socket's copy (a page fault and a zero-fill per
4 KiB page), so a link keeps the memfds it has used (``OutPool``, on the writing side) and the
receiver keeps its mapping of each (``InPool``): a large buffer is then one copy into pages
that exist and are mapped on both sides (split over two CPUs from 8 MiB: ``parcopy.py``), and
the receiver's user reads them in place.

A link's pool has :data:`SLOTS` places. A frame of the pool (its length marked
:data:`POOL`, see :func:`encode`) names its slot, its size, and whether the slot's memfd comes
with the message (:data:`ATTACHED`: the first use of that memfd, or a new memfd in a slot
whose old one was retired); otherwise the receiver already maps it. With the link's first
pool frame the sender also passes its *control page*, a small memfd of its own:

- ``released[s]`` (``u32``, written by the receiver): how many times the receiver's user has
  let go of slot ``s``. The receiver hands out each frame as an object of its own (a
  ``uint8`` numpy array over its cached mapping when numpy is loaded, otherwise a mapping of
  its own), and a weak reference on it counts the release once the last object built on it
  (the user's array) is gone. The sender counts its sends: slot ``s`` is free again when both
  counts agree. No message is needed, and nothing waits for one.
- ``retired[s]`` (``u32``, written by the sender): bumped when the sender closes the memfd of
  slot ``s`` (its pool holds more free memory than :data:`FREE_BYTES`, more than
  :data:`FREE_COUNT` free memfds, one idle for :data:`IDLE` seconds, seen at any message the
  link sends, or a larger buffer needs the slot); the receiver drops its mapping when it sees
  the change (it looks at every message the link brings, at most once a second, and at every
  pool frame; until then the pages live on in its mapping).

The pages are shared for writing both ways (``MAP_SHARED``) and not sealed against writes:
the peer is the same user (``SO_PEERCRED`` on the Unix socket), who could write to this
process's memory through ``/proc`` anyway. They are sealed against resizing, so the peer
cannot make a mapping fault (``SIGBUS``). Every write a user makes to a received array stays
in that array's memfd, which the sender overwrites only after the array is gone; the sender
copies every buffer afresh, so nothing a receiver writes travels back. The receiver refuses
(``shm.ShmRefused``, that message only) a slot out of range, an unknown slot without its
memfd, a slot whose previous frame is still in use there, a size beyond the memfd, and any
descriptor that is not a memfd sealed against resizing, without holes.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
import threading
import time
import weakref
from typing import Any

from . import parcopy, shm

__all__ = [
    "ATTACHED",
    "POOL",
    "SIZE_MASK",
    "SLOTS",
    "InPool",
    "OutPool",
    "encode",
    "stats",
]

POOL = 1 << 62  # with shm.FD_FRAME: a frame of the link's pool
ATTACHED = 1 << 61  # the slot's memfd comes with the message
_SLOT_SHIFT = 56
SIZE_MASK = (1 << _SLOT_SHIFT) - 1
SLOTS = 32  # memfds of one link's pool (5 bits of the length)
MAX_BUFFER = 512 << 20  # larger buffers take a fresh sealed memfd (shm.sealed_copy)
FREE_BYTES = 512 << 20  # free memory a pool keeps for reuse, at most
FREE_COUNT = 4  # free memfds a pool keeps, at most
IDLE = 30.0  # a free memfd unused this long is closed (at the next send)
CTRL_SIZE = 4096
_RETIRED = 4 * SLOTS  # offset of retired[] in the control page
_U32S = struct.Struct(f"={SLOTS}I")
_U32 = struct.Struct("=I")
try:
    import fcntl

    _RESIZE_SEALS: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW  # type: ignore[attr-defined]
    _SEAL_SEAL: int = fcntl.F_SEAL_SEAL  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _RESIZE_SEALS = _SEAL_SEAL = 0

stats = {"pooled": 0, "created": 0, "retired": 0}  # sends from a pool, memfds made, closed


def encode(slot: int, size: int, attached: bool) -> int:
    """The length word of a pool frame."""
    return shm.FD_FRAME | POOL | (ATTACHED if attached else 0) | slot << _SLOT_SHIFT | size


def decode(word: int) -> tuple[int, int, bool]:
    """``(slot, size, attached)`` of a pool frame's length word."""
    return (word >> _SLOT_SHIFT) & (SLOTS - 1), word & SIZE_MASK, bool(word & ATTACHED)


class _PoolMapping(mmap.mmap):
    """A mapping of a pool memfd (weakly referenceable; never taken for a sealed frame by
    ``shm.forwardable``)."""


def _new_memfd(size: int, name: str) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, shm._ADD_SEALS, _RESIZE_SEALS | _SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Out:
    __slots__ = ("announced", "cap", "fd", "last", "mm", "sent")

    def __init__(self, fd: int, mm: mmap.mmap, cap: int) -> None:
        self.fd = fd
        self.mm = mm
        self.cap = cap
        self.sent = 0
        self.last = time.monotonic()
        self.announced = False


class OutPool:
    """The sending side's pool of one link (sends come one at a time, under the connection's
    write lock; a lock of its own keeps :meth:`close`, which may come from any thread, from
    running in the middle of one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: list[_Out | None] = [None] * SLOTS
        self._ctrl_fd = -1
        self._ctrl: mmap.mmap | None = None
        self._ctrl_sent = False
        self.closed = False
        self.holding = False  # any memfd: tick() has something to look at
        self._ticked = 0.0

    def _control(self) -> mmap.mmap:
        if self._ctrl is None:
            fd = _new_memfd(CTRL_SIZE, "pydist-pool-ctrl")
            try:
                self._ctrl = mmap.mmap(fd, CTRL_SIZE, flags=mmap.MAP_SHARED)
            except BaseException:
                os.close(fd)
                raise
            self._ctrl_fd = fd
        return self._ctrl

    def place(self, buf: Any, fds: list[int]) -> int | None:
        """Copy ``buf`` into a free memfd of the pool: the frame's length word, with the
        descriptors to attach added to ``fds`` (the control page first, on the link's first
        pool frame). None when the pool cannot take it (too large, every slot in use, closed).
        """
        with self._lock:
            return self._place(buf, fds)

    def _place(self, buf: Any, fds: list[int]) -> int | None:
        view = memoryview(buf).cast("B")
        n = view.nbytes
        if self.closed or n > MAX_BUFFER:
            return None
        ctrl = self._control()
        released = _U32S.unpack_from(ctrl, 0)
        now = time.monotonic()
        free: list[int] = []
        empty = -1
        for i, s in enumerate(self._slots):
            if s is None:
                if empty < 0:
                    empty = i
            elif released[i] == s.sent & 0xFFFFFFFF:
                free.append(i)
        fitting = [i for i in free if self._cap(i) >= n]
        pick = min(fitting, key=self._cap) if fitting else -1
        if pick < 0:
            if empty < 0 and free:
                empty = max(free, key=self._cap)
                self._retire(empty)
                free.remove(empty)
            if empty < 0:
                return None
            cap = -(-n // mmap.PAGESIZE) * mmap.PAGESIZE
            try:
                fd = _new_memfd(cap, "pydist-pool")
            except OSError:
                return None
            try:
                mm = _PoolMapping(fd, cap, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            except OSError:
                os.close(fd)
                return None
            self._slots[empty] = _Out(fd, mm, cap)
            self.holding = True
            stats["created"] += 1
            pick = empty
        else:
            free.remove(pick)
        self._trim(free, now)
        out = self._slots[pick]
        assert out is not None
        parcopy.copy_into(out.mm, view, n)
        out.sent += 1
        out.last = now
        stats["pooled"] += 1
        if not self._ctrl_sent:
            fds.insert(0, self._ctrl_fd)
            self._ctrl_sent = True
        attached = not out.announced
        if attached:
            fds.append(out.fd)
            out.announced = True
        return encode(pick, n, attached)

    def tick(self) -> None:
        """Close the free memfds idle for :data:`IDLE` seconds (looks at most once a second;
        called at every message the link sends, the heartbeat's included, so an idle link
        gives its memory back)."""
        now = time.monotonic()
        if now - self._ticked < 1.0:
            return
        self._ticked = now
        with self._lock:
            if self.closed or self._ctrl is None:
                return
            released = _U32S.unpack_from(self._ctrl, 0)
            for i, s in enumerate(self._slots):
                if s is not None and released[i] == s.sent & 0xFFFFFFFF and now - s.last > IDLE:
                    self._retire(i)
            self.holding = self.memfds() > 0

    def _cap(self, i: int) -> int:
        s = self._slots[i]
        return 0 if s is None else s.cap

    def _trim(self, free: list[int], now: float) -> None:
        """Close free memfds beyond the caps, the largest first, and idle ones."""
        free.sort(key=self._cap)
        total = sum(self._cap(i) for i in free)
        while free and (total > FREE_BYTES or len(free) > FREE_COUNT):
            i = free.pop()
            total -= self._cap(i)
            self._retire(i)
        for i in free:
            s = self._slots[i]
            if s is not None and now - s.last > IDLE:
                self._retire(i)

    def _retire(self, i: int) -> None:
        s = self._slots[i]
        assert s is not None and self._ctrl is not None
        self._slots[i] = None
        (gen,) = _U32.unpack_from(self._ctrl, _RETIRED + 4 * i)
        _U32.pack_into(self._ctrl, _RETIRED + 4 * i, (gen + 1) & 0xFFFFFFFF)
        s.mm.close()
        os.close(s.fd)
        stats["retired"] += 1

    def memfds(self) -> int:
        """How many memfds the pool holds (for tests)."""
        return sum(s is not None for s in self._slots)

    def close(self) -> None:
        """Close every memfd (the receiver's mappings stay valid while it uses them)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        self.closed = True
        for i, s in enumerate(self._slots):
            if s is not None:
                self._slots[i] = None
                try:
                    s.mm.close()
                except BufferError:  # pragma: no cover - a copy in flight on another thread
                    pass
                os.close(s.fd)
        if self._ctrl is not None:
            self._ctrl.close()
            os.close(self._ctrl_fd)
            self._ctrl = None


class _In:
    __slots__ = ("cap", "fd", "given", "mm", "released", "retired")

    def __init__(self, fd: int, mm: _PoolMapping, cap: int, retired: int) -> None:
        self.fd = fd
        self.mm = mm
        self.cap = cap
        self.given = 0
        self.released = 0
        self.retired = retired


def _check_memfd(fd: int, least: int, most: int) -> int:
    """The size of ``fd`` if it is a memfd sealed against resizing, without holes, of
    ``least`` to ``most`` bytes."""
    try:
        st = os.fstat(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        raise shm.ShmRefused(f"the descriptor cannot be inspected: {e}") from e
    if not stat.S_ISREG(st.st_mode) or not target.startswith("/memfd:"):
        raise shm.ShmRefused(f"the descriptor is not a memfd ({target})")
    try:
        seals = fcntl.fcntl(fd, shm._GET_SEALS)
    except OSError as e:
        raise shm.ShmRefused(f"the memfd's seals cannot be read: {e}") from e
    if seals & _RESIZE_SEALS != _RESIZE_SEALS:
        raise shm.ShmRefused("the memfd is not sealed against resizing")
    if not least <= st.st_size <= most:
        raise shm.ShmRefused(f"the memfd holds {st.st_size} bytes, not {least} to {most}")
    if st.st_blocks * 512 < st.st_size:
        raise shm.ShmRefused("the memfd has holes (it was resized, not written)")
    return int(st.st_size)


class InPool:
    """The receiving side of one link's pool: the control page and a cached mapping per slot.

    Weak-reference callbacks (any thread) only count releases and write them to the control
    page; the rest happens on the reading thread (one at a time: the connection's reader).
    """

    def __init__(self) -> None:
        self._ctrl: mmap.mmap | None = None
        self._slots: dict[int, _In] = {}
        self._refs: dict[int, Any] = {}  # the weak references, kept alive by their id
        self._lock = threading.Lock()  # the reader's frames, and close from another thread
        self.holding = False  # any mapping: tick() has something to look at
        self._ticked = 0.0

    def expects_control(self) -> bool:
        return self._ctrl is None

    def take_control(self, fd: int) -> None:
        """Map the sender's control page (``fd`` is closed in every case)."""
        try:
            if self._ctrl is not None:
                raise shm.ShmRefused("a second control page")
            _check_memfd(fd, CTRL_SIZE, CTRL_SIZE)
            try:
                self._ctrl = mmap.mmap(fd, CTRL_SIZE, flags=mmap.MAP_SHARED)
            except OSError as e:
                raise shm.ShmRefused(f"the control page cannot be mapped: {e}") from e
        finally:
            os.close(fd)

    def frame(self, word: int, fds: list[int], limit: int) -> Any:
        """The object for a pool frame (its slot's memfd, if attached, popped from ``fds``).

        Raises:
            shm.ShmRefused: see the module's doc; nothing of this frame is kept.
        """
        with self._lock:
            return self._frame(word, fds, limit)

    def _frame(self, word: int, fds: list[int], limit: int) -> Any:
        slot, size, attached = decode(word)
        fd = fds.pop(0) if attached else -1
        ctrl = self._ctrl
        try:
            if ctrl is None:
                raise shm.ShmRefused("a pool frame before the pool's control page (or closed)")
            self._forget_retired(ctrl)
            known = self._slots.get(slot)
            if known is not None and known.given != known.released:
                raise shm.ShmRefused(f"slot {slot} is still in use by this process")
            if attached:
                cap = _check_memfd(fd, max(size, 1), limit)
                try:
                    mm = _PoolMapping(fd, cap, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
                except OSError as e:
                    raise shm.ShmRefused(f"the memfd cannot be mapped: {e}") from e
                if known is not None:
                    self._drop(slot)
                (retired,) = _U32.unpack_from(ctrl, _RETIRED + 4 * slot)
                known = self._slots[slot] = _In(fd, mm, cap, retired)
                self.holding = True
                fd = -1
            elif known is None:
                raise shm.ShmRefused(f"slot {slot} is not known here and came without its memfd")
            if size > known.cap:
                raise shm.ShmRefused(f"{size} bytes in slot {slot} of {known.cap}")
        finally:
            if fd >= 0:
                os.close(fd)
        return self._export(slot, known, size, ctrl)

    def _export(self, slot: int, s: _In, size: int, ctrl: mmap.mmap) -> Any:
        np = sys.modules.get("numpy")
        obj: Any
        if np is not None:
            obj = np.frombuffer(s.mm, np.uint8, size)
        else:
            obj = _PoolMapping(s.fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        s.given += 1
        refs = self._refs

        def release(r: Any, s: _In = s, off: int = 4 * slot) -> None:
            refs.pop(id(r), None)
            s.released += 1
            try:
                _U32.pack_into(ctrl, off, s.released & 0xFFFFFFFF)
            except (ValueError, TypeError):  # pragma: no cover - the page was closed
                pass

        ref = weakref.ref(obj, release)
        refs[id(ref)] = ref
        return obj

    def tick(self) -> None:
        """Drop the mappings of retired slots (looks at most once a second; called at every
        message the link brings, the heartbeat's included, so that the pages of memfds the
        sender closed are freed)."""
        now = time.monotonic()
        if now - self._ticked < 1.0:
            return
        self._ticked = now
        with self._lock:
            if self._ctrl is not None:
                self._forget_retired(self._ctrl)
            self.holding = bool(self._slots)

    def _forget_retired(self, ctrl: mmap.mmap) -> None:
        """Drop the mappings of slots that the sender retired (and that nobody here uses)."""
        if not self._slots:
            return
        retired = _U32S.unpack_from(ctrl, _RETIRED)
        for slot, s in list(self._slots.items()):
            if retired[slot] != s.retired and s.given == s.released:
                self._drop(slot)

    def _drop(self, slot: int) -> None:
        s = self._slots.pop(slot)
        try:
            os.close(s.fd)
        except OSError:  # pragma: no cover
            pass
        # the mapping itself goes with the last object that uses it

    def mapped(self) -> int:
        """How many slots this side maps (for tests)."""
        return len(self._slots)

    def close(self) -> None:
        """Forget every slot and the control page (arrays still in use keep their mappings,
        and their releases still reach the page)."""
        with self._lock:
            for slot in list(self._slots):
                self._drop(slot)
            self._ctrl = None
            self.holding = False
