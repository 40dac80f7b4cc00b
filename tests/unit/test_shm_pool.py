"""The shared-memory pool of a local link (``shmpool.py``) over real Unix socket pairs.

Reuse (the same memfds, counted), release when the receiving user lets go of an array, the
caps, a user holding many arrays or writing to them, a link closed under held arrays, and a
hostile sender of the same user that writes pool frames, control pages and retirements by hand.
Descriptors are counted in ``/proc/self/fd``: none may be left behind.
"""

from __future__ import annotations

import array
import gc
import hashlib
import os
import socket
import struct
from typing import Any

import pytest

from pydistributed import shm, shmpool, sockets, transport
from tests.unit import test_shm
from tests.unit.test_shm import _fd_count

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and SCM_RIGHTS (Linux)")

MiB = 1 << 20


def _pool_maps(data_only: bool = False) -> int:
    """Mappings of pool memfds (and of control pages, unless ``data_only``)."""
    name = "memfd:pydist-pool (" if data_only else "memfd:pydist-pool"
    with open("/proc/self/maps") as f:
        return sum(name in line for line in f)


def _digest(a: Any) -> str:
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()


class Link(test_shm.Link):
    """test_shm's link, sending arrays."""

    def send(self, arr: Any) -> Any:
        """Send ``arr`` as a message's out-of-band buffer; the array the receiver gets."""
        self.writer.write_frames([b"h", b"b", memoryview(arr).cast("B")])
        frames = transport.read_message(self.reader)
        return np.frombuffer(frames[2], dtype=arr.dtype)


@pytest.fixture(autouse=True)
def shm_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_SHM", "1")


@pytest.fixture
def link() -> Any:
    gc.collect()
    before = _fd_count()
    pair = Link()
    yield pair
    pair.close()
    gc.collect()
    assert _fd_count() == before, "a descriptor was left open"
    assert _pool_maps() == 0, "a mapping was left behind"


def _counts() -> tuple[int, int]:
    return shmpool.stats["created"], shmpool.stats["pooled"]


def test_buffers_reuse_the_same_memfd_once_released(link: Link) -> None:
    a = np.arange(2 * MiB // 8, dtype=np.float64)
    created, pooled = _counts()
    for i in range(50):
        a[0] = i
        got = link.send(a)
        assert got[0] == i and _digest(got) == _digest(a)
        del got  # released: the next send reuses the memfd
    assert _counts() == (created + 1, pooled + 50)
    assert link.writer.pool.memfds() == 1 and link.reader.pool.mapped() == 1


def test_a_held_array_keeps_its_memfd_until_freed(link: Link) -> None:
    a = np.full(MiB // 8, 1.0)
    created, _ = _counts()
    first = link.send(a)
    second = link.send(a * 2)  # the first memfd is in use: a second one
    assert _counts()[0] == created + 2
    assert float(first.sum()) == MiB // 8 and float(second.sum()) == MiB // 4
    del first
    gc.collect()
    third = link.send(a * 3)  # the first one is free again
    assert _counts()[0] == created + 2
    assert float(third.sum()) == 3 * (MiB // 8) and float(second.sum()) == MiB // 4
    del second, third


def test_many_held_arrays_respect_the_caps_and_stay_intact(link: Link) -> None:
    rng = np.random.default_rng(3)
    sources = [rng.random(MiB // 8) for _ in range(shmpool.SLOTS + 8)]
    held = [link.send(s) for s in sources]
    # every slot in use: the rest went as sealed memfds
    assert link.writer.pool.memfds() == shmpool.SLOTS
    for s, h in zip(sources, held, strict=True):
        assert _digest(h) == _digest(s)
    # more sends while they are held do not touch them
    for _ in range(5):
        extra = rng.random(MiB // 8)
        got = link.send(extra)
        assert _digest(got) == _digest(extra)
        del got
    for s, h in zip(sources, held, strict=True):
        assert _digest(h) == _digest(s)
    del held, h
    gc.collect()
    link.send(sources[0])  # noticed free at this send: all but the cap's worth closed
    assert link.writer.pool.memfds() <= shmpool.FREE_COUNT + 1
    link.send(sources[1])  # the receiver drops what the sender retired
    assert link.reader.pool.mapped() <= shmpool.FREE_COUNT + 1


def test_free_bytes_are_capped(link: Link, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shmpool, "FREE_BYTES", 2 * MiB)
    held = [link.send(np.ones(MiB // 8)) for _ in range(4)]
    del held
    gc.collect()
    link.send(np.ones(MiB // 8))
    assert link.writer.pool.memfds() <= 3


def test_writes_to_a_received_array_stay_in_it(link: Link) -> None:
    a = np.arange(MiB // 8, dtype=np.float64)
    want = _digest(a)
    got = link.send(a)
    got[:] = -1.0  # ordinary and writable
    assert _digest(a) == want  # the sender's array is its own
    other = link.send(a)  # another memfd: the first is in use
    assert _digest(other) == want and float(got[7]) == -1.0
    del got
    gc.collect()
    again = link.send(a)  # the written memfd, filled afresh
    assert _digest(again) == want and _digest(other) == want


def test_arrays_held_past_the_links_close_stay_valid() -> None:
    gc.collect()
    before = _fd_count()
    pair = Link()
    sources = [np.random.default_rng(i).random(MiB // 4) for i in range(3)]
    held = [pair.send(s) for s in sources]
    pair.close()
    for s, h in zip(sources, held, strict=True):
        assert _digest(h) == _digest(s)
    held[0][0] = 9.0  # still writable memory of this process
    del held, h
    gc.collect()
    assert _fd_count() == before and _pool_maps() == 0


def test_a_received_array_sent_on_is_copied_into_this_sides_pool(link: Link) -> None:
    """Forwarding: a frame of the peer's pool goes out through this side's own pool (the
    peer's memfd is its own to reuse)."""
    back = Link()
    try:
        a = np.arange(MiB // 8, dtype=np.float64)
        got = link.send(a)
        forwarded = back.send(got)
        got[0] = 42.0
        assert forwarded[0] == 0.0 and _digest(forwarded) == _digest(a)
        assert back.writer.pool.memfds() == 1
        del got, forwarded
    finally:
        back.close()


def test_pydist_shm_0_has_no_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_SHM", "0")
    a, b = socket.socketpair()
    try:
        _, writer = sockets.socket_streams(a)
        assert writer.pool is None and writer.shm_min == 0
    finally:
        a.close()
        b.close()


# -- a hostile sender of the same user -----------------------------------------------------


def _send_raw(sock: socket.socket, lens: list[int], data: bytes, fds: list[int]) -> None:
    head = struct.pack("!I", len(lens)) + struct.pack(f"!{len(lens)}Q", *lens)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([head + data], anc)


def _memfd(size: int, seals: bool = True, name: str = "pydist-test") -> int:
    import fcntl

    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, b"p" * size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def _expect_refused(link: Link, match: str) -> None:
    with pytest.raises(shm.ShmRefused, match=match) as info:
        transport.read_message(link.reader)
    assert info.value.header == b"hdr"
    # only that message failed: the stream is in step
    link.writer.write_frames([b"next", b"msg"])
    assert transport.read_message(link.reader) == [b"next", b"msg"]


def _pool_msg(link: Link, words: list[int], fds: list[int]) -> None:
    _send_raw(link.a, [3, 4, *words], b"hdrbody", fds)
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize(
    "case, match",
    [
        ("no control page", "declares 1 descriptors and 0 came"),
        ("control page too small", "not 4096 to 4096"),
        ("control page is a pipe", "not a memfd"),
        ("unknown slot", "not known here"),
        ("unsealed memfd", "not sealed against resizing"),
        ("size beyond the memfd", "not 8192 to"),
        ("missing descriptor", "declares 2 descriptors and 1 came"),
    ],
)
def test_bad_pool_frames_refuse_that_message_only(link: Link, case: str, match: str) -> None:
    size = 8192
    attached = shmpool.encode(3, size, True)
    extra: list[int] = []
    if case == "no control page":  # the link's first pool frame, without any descriptor
        fds: list[int] = []
        attached = shmpool.encode(3, size, False)
    elif case == "control page too small":
        fds = [_memfd(100), _memfd(size)]
    elif case == "control page is a pipe":
        r, w = os.pipe()
        fds, extra = [r, _memfd(size)], [w]
    elif case == "unknown slot":
        fds = [_memfd(shmpool.CTRL_SIZE)]
        attached = shmpool.encode(3, size, False)
    elif case == "unsealed memfd":
        fds = [_memfd(shmpool.CTRL_SIZE), _memfd(size, seals=False)]
    elif case == "size beyond the memfd":
        fds = [_memfd(shmpool.CTRL_SIZE), _memfd(size // 2)]
    else:
        fds = [_memfd(shmpool.CTRL_SIZE)]
    _pool_msg(link, [attached], fds)
    for fd in extra:
        os.close(fd)
    _expect_refused(link, match)


def _hostile_with_slot(link: Link, size: int) -> tuple[Any, Any]:
    """A hand-made pool with slot 5 mapped at the receiver: (the frame, the control page)."""
    import mmap

    ctrl = _memfd(shmpool.CTRL_SIZE)
    page = mmap.mmap(ctrl, shmpool.CTRL_SIZE)
    _pool_msg(link, [shmpool.encode(5, size, True)], [ctrl, _memfd(size)])
    frames = transport.read_message(link.reader)
    assert bytes(frames[2][:4]) == b"pppp"
    return frames[2], page


def test_a_slot_still_in_use_here_is_refused(link: Link) -> None:
    held, page = _hostile_with_slot(link, 8192)
    _pool_msg(link, [shmpool.encode(5, 8192, False)], [])
    _expect_refused(link, "still in use")
    _pool_msg(link, [shmpool.encode(5, 8192, True)], [_memfd(8192)])
    _expect_refused(link, "still in use")
    assert bytes(held[:4]) == b"pppp"
    del held
    gc.collect()
    # released: counted in the sender's control page, and the slot may be used again
    assert struct.unpack_from("=I", page, 4 * 5)[0] == 1
    _send_raw(link.a, [3, 4, shmpool.encode(5, 4096, False)], b"hdrbody", [])
    again = transport.read_message(link.reader)
    assert len(again[2]) == 4096
    del again
    page.close()


def test_a_size_beyond_the_slot_is_refused(link: Link) -> None:
    held, page = _hostile_with_slot(link, 8192)
    del held
    gc.collect()
    _pool_msg(link, [shmpool.encode(5, 8193, False)], [])
    _expect_refused(link, "8193 bytes in slot 5 of 8192")
    page.close()


def test_retired_slots_are_forgotten_and_then_refused(link: Link) -> None:
    held, page = _hostile_with_slot(link, 8192)
    del held
    gc.collect()
    struct.pack_into("=I", page, 4 * shmpool.SLOTS + 4 * 5, 1)  # the sender retires slot 5
    _pool_msg(link, [shmpool.encode(5, 4096, False)], [])
    _expect_refused(link, "not known here")
    assert link.reader.pool.mapped() == 0
    page.close()


def test_forged_release_counts_do_not_free_a_slot_in_use(link: Link) -> None:
    """The control page is the sender's: what it writes into ``released`` changes nothing on
    the receiving side, which keeps its own counts."""
    held, page = _hostile_with_slot(link, 8192)
    struct.pack_into("=I", page, 4 * 5, 7)
    _pool_msg(link, [shmpool.encode(5, 8192, False)], [])
    _expect_refused(link, "still in use")
    assert bytes(held[:4]) == b"pppp"
    del held
    page.close()


def test_a_refused_message_releases_the_pool_frames_it_took(link: Link) -> None:
    import mmap

    ctrl = _memfd(shmpool.CTRL_SIZE)
    page = mmap.mmap(ctrl, shmpool.CTRL_SIZE)
    words = [shmpool.encode(2, 8192, True), shmpool.encode(9, 8192, False)]  # 9: unknown
    _pool_msg(link, words, [ctrl, _memfd(8192)])
    _expect_refused(link, "slot 9 is not known here")
    gc.collect()
    assert struct.unpack_from("=I", page, 4 * 2)[0] == 1  # slot 2 taken, then released
    _send_raw(link.a, [3, 4, shmpool.encode(2, 8192, False)], b"hdrbody", [])
    assert len(transport.read_message(link.reader)[2]) == 8192
    page.close()


def test_idle_free_memfds_are_closed_at_the_next_send(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [link.send(np.ones(MiB // 8)) for _ in range(3)]
    del held
    gc.collect()
    monkeypatch.setattr(shmpool, "IDLE", 0.0)
    link.send(np.ones(MiB // 8))
    assert link.writer.pool.memfds() == 1


def test_an_idle_link_gives_its_free_memfds_back_at_any_message(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = link.send(np.ones(MiB // 8))
    monkeypatch.setattr(shmpool, "IDLE", 0.0)
    link.writer.write_frames([b"ping"])  # the memfd is in use: kept
    assert transport.read_message(link.reader) == [b"ping"]
    assert link.writer.pool.memfds() == 1
    del held
    gc.collect()
    link.writer.pool._ticked = 0.0  # (it looks at most once a second)
    link.writer.write_frames([b"ping"])  # a small message, as the heartbeat's
    assert transport.read_message(link.reader) == [b"ping"]
    assert link.writer.pool.memfds() == 0
    # the receiver drops its mapping at the next message it reads (the heartbeat's, say)
    link.writer.write_frames([b"ping"])
    link.reader.pool._ticked = 0.0
    assert transport.read_message(link.reader) == [b"ping"]
    assert link.reader.pool.mapped() == 0 and _pool_maps(data_only=True) == 0
