"""Shared-memory frames (``shm.py``) over real Unix socket pairs: no processes.

The sealed path (a fresh sealed memfd per large buffer, mapped on the receiving side and freed
with it: what a buffer takes when the link's pool cannot take it; forced here by a pool that
takes nothing, the pool itself is ``test_shm_pool.py``), the fallbacks, and a hostile peer of
the same user that sends descriptors by hand with ``sendmsg``: unexpected, unsealed, of the
wrong size or kind, missing, or in the middle of a frame. Descriptors are counted in
``/proc/self/fd``: none may be left behind.
"""

from __future__ import annotations

import array
import gc
import os
import socket
import struct
import threading
from typing import Any

import pytest

from pydistributed import shm, shmpool, sockets, transport
from pydistributed.errors import ProtocolError

pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and SCM_RIGHTS (Linux)")

MiB = 1 << 20


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _memfd_maps() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "memfd:pydist-shm" in line]


class Link:
    """Both ends of a Unix socket pair as a local connection has them."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair()
        self.a.settimeout(10)
        self.b.settimeout(10)
        self.reader, _ = sockets.socket_streams(self.b)
        _, self.writer = sockets.socket_streams(self.a)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
        self.b.close()


@pytest.fixture(autouse=True)
def shm_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared memory on (``PYDIST_SHM=1``, the default), through sealed memfds: the link's
    pool takes no buffer."""
    monkeypatch.setenv("PYDIST_SHM", "1")
    monkeypatch.setattr(shmpool, "MAX_BUFFER", 0)


@pytest.fixture
def link() -> Any:
    gc.collect()
    before = _fd_count()
    pair = Link()
    yield pair
    pair.close()
    gc.collect()
    assert _fd_count() == before, "a descriptor was left open"


def _send_raw(sock: socket.socket, lens: list[int], data: bytes, fds: list[int]) -> None:
    """A message written by hand: the prefix with ``lens`` (marks included), ``data`` for the
    stream frames, ``fds`` attached to its first byte."""
    head = struct.pack("!I", len(lens)) + struct.pack(f"!{len(lens)}Q", *lens)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([head + data], anc)


def _memfd(data: bytes, seal: bool = True) -> int:
    import fcntl

    fd = os.memfd_create("pydist-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seal:
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        )
    return fd


def test_large_buffer_arrives_as_a_memfd_mapping_freed_with_its_user(link: Link) -> None:
    payload = bytearray(os.urandom(3 * MiB))
    link.writer.write_frames([b"h" * 25, b"body", memoryview(payload)])
    frames = transport.read_message(link.reader)
    assert bytes(frames[2]) == bytes(payload)
    assert frames[:2] == [b"h" * 25, b"body"]
    assert len(_memfd_maps()) == 1  # the receiver's private mapping of the sender's memfd
    view = memoryview(frames[2])
    view[0] = payload[0] ^ 0xFF  # writable: the page is copied (copy on write)
    assert view[0] == payload[0] ^ 0xFF
    view.release()
    del frames, view
    gc.collect()
    assert _memfd_maps() == []


def test_sender_changes_after_send_are_not_seen(link: Link) -> None:
    payload = bytearray(b"a" * (2 * MiB))
    link.writer.write_frames([b"h", b"b", payload])
    payload[:] = b"z" * len(payload)  # the sender reuses its buffer at once
    frames = transport.read_message(link.reader)
    assert bytes(frames[2]) == b"a" * (2 * MiB)
    del frames


def test_small_buffers_and_exact_bytes_take_the_socket(link: Link) -> None:
    small = bytearray(64 * 1024)
    exact = os.urandom(2 * MiB)
    t = threading.Thread(
        target=link.writer.write_frames, args=([b"h", b"b", small, memoryview(exact)],)
    )
    t.start()
    frames = transport.read_message(link.reader)
    t.join(10)
    assert bytes(frames[2]) == bytes(small) and bytes(frames[3]) == exact
    assert _memfd_maps() == []


def test_disabled_by_env(monkeypatch: pytest.MonkeyPatch, link: Link) -> None:
    monkeypatch.setenv("PYDIST_SHM", "0")
    _, writer = sockets.socket_streams(link.a)
    assert writer.shm_min == 0
    payload = bytearray(os.urandom(2 * MiB))
    t = threading.Thread(target=writer.write_frames, args=([b"h", b"b", payload],))
    t.start()
    frames = transport.read_message(link.reader)
    t.join(10)
    assert bytes(frames[2]) == bytes(payload) and _memfd_maps() == []


def test_tcp_links_never_use_shared_memory() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=10)
    conn, _ = server.accept()
    try:
        reader, _ = sockets.socket_streams(conn)
        _, writer = sockets.socket_streams(client)
        assert writer.shm_min == 0 and reader.inbox is None
    finally:
        for s in (client, conn, server):
            s.close()


def test_200_transfers_leave_no_descriptor_or_mapping(link: Link) -> None:
    payload = bytearray(os.urandom(MiB))
    gc.collect()
    before = _fd_count()
    for i in range(200):
        payload[0] = i % 256
        link.writer.write_frames([b"h", b"b", payload])
        frames = transport.read_message(link.reader)
        assert frames[2][0] == i % 256
        del frames
    gc.collect()
    assert _fd_count() == before
    assert _memfd_maps() == []


# -- a hostile peer of the same user -------------------------------------------------------


def test_descriptors_on_a_message_without_shared_memory_are_closed(link: Link) -> None:
    r, w = os.pipe()
    fd = _memfd(b"x" * 4096)
    _send_raw(link.a, [3, 4], b"hdrbody", [r, w, fd])
    for x in (r, w, fd):
        os.close(x)
    assert transport.read_message(link.reader) == [b"hdr", b"body"]
    link.writer.write_frames([b"next", b"msg"])
    assert transport.read_message(link.reader) == [b"next", b"msg"]
    assert link.reader.inbox.count == 0 and link.reader.inbox.refused == 3


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("unsealed", "not sealed"),
        ("wrong size", "declares"),
        ("sparse", "holes"),
        ("pipe", "not a memfd"),
        ("file", "not a memfd"),
        ("missing", "declares 1 descriptors and 0 came"),
        ("two for one", "declares 1 descriptors and 2 came"),
    ],
)
def test_bad_descriptors_refuse_that_message_only(
    link: Link, tmp_path: Any, kind: str, reason: str
) -> None:
    size = 8192
    extra: list[int] = []
    if kind == "unsealed":
        fds = [_memfd(b"y" * size, seal=False)]
    elif kind == "wrong size":
        fds = [_memfd(b"y" * (size + 4096))]
    elif kind == "sparse":
        import fcntl

        fd = os.memfd_create("pydist-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        )
        fds = [fd]
    elif kind == "pipe":
        r, w = os.pipe()
        fds, extra = [r], [w]
    elif kind == "file":
        path = tmp_path / "f"
        path.write_bytes(b"y" * size)
        fds = [os.open(path, os.O_RDONLY)]
    elif kind == "missing":
        fds = []
    else:
        fds = [_memfd(b"y" * size), _memfd(b"y" * size)]
    _send_raw(link.a, [3, 4, size | shm.FD_FRAME, 2], b"hdrbodyzz", fds)
    for fd in fds + extra:
        os.close(fd)
    with pytest.raises(shm.ShmRefused, match=reason) as info:
        transport.read_message(link.reader)
    assert info.value.header == b"hdr"
    # the stream is in step: the connection's next message arrives whole
    link.writer.write_frames([b"next", b"msg"])
    assert transport.read_message(link.reader) == [b"next", b"msg"]


def test_descriptors_inside_a_large_frame_are_closed(link: Link) -> None:
    fd = _memfd(b"x" * 4096)
    size = 2 * MiB
    head = struct.pack("!I", 3) + struct.pack("!3Q", 1, 1, size)
    link.a.sendall(head + b"hb" + b"q" * 4096)

    def rest() -> None:
        data = memoryview(b"q" * (size - 4096))
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        sent = link.a.sendmsg([data[:65536]], anc)
        link.a.sendall(data[sent:])

    t = threading.Thread(target=rest)
    t.start()
    frames = transport.read_message(link.reader)
    t.join(10)
    os.close(fd)
    assert bytes(frames[2]) == b"q" * size
    assert link.reader.inbox.refused == 1 and link.reader.inbox.count == 0
    del frames


def test_shared_memory_marks_on_headers_are_refused(link: Link) -> None:
    fd = _memfd(b"y" * 4096)
    _send_raw(link.a, [4096 | shm.FD_FRAME, 4], b"body", [fd])
    os.close(fd)
    with pytest.raises(shm.ShmRefused, match="only out-of-band buffers"):
        transport.read_message(link.reader)


def test_a_flood_of_descriptors_ends_the_connection(link: Link) -> None:
    fd = _memfd(b"x")
    # 1-byte pieces each with descriptors, all inside one message's stream bytes
    n = shm.MAX_INBOX // shm.MAX_FDS + 2
    link.a.sendall(struct.pack("!I", 2) + struct.pack("!2Q", 1, n))
    link.a.sendall(b"h")
    for _ in range(n):
        link.a.sendmsg(
            [b"b"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd] * shm.MAX_FDS))]
        )
    os.close(fd)
    try:
        frames = transport.read_message(link.reader)
    except ProtocolError as e:
        assert "file descriptors" in str(e)
    else:
        # read in fewer pieces than were sent: the message itself is whole
        assert frames == [b"h", b"b" * n]
    link.reader.close()
    assert link.reader.inbox.count == 0


def test_a_refused_message_fails_alone_and_the_connection_stays_up() -> None:
    """Through ``Peer``: the refusal reaches ``on_decode_error`` with the message's header (so
    the dispatcher answers the right caller); the next message on the link arrives."""
    import queue

    from pydistributed import codec
    from pydistributed.messages import Result
    from pydistributed.peer import Peer

    a, b = socket.socketpair()
    reader, writer = sockets.socket_streams(b)
    peer = Peer(reader, writer, 2, sock=b)
    got: queue.Queue[Any] = queue.Queue()
    peer.start(
        lambda p, m: got.put(("message", m)),
        lambda p, e: got.put(("error", e)),
        lambda p, r: got.put(("close", r)),
    )
    try:
        frames, _ = codec.encode(Result(7, True, None))
        fd = _memfd(b"y" * 4096, seal=False)
        head, body = bytes(frames[0]), bytes(frames[1])
        _send_raw(a, [len(head), len(body), 4096 | shm.FD_FRAME], head + body, [fd])
        os.close(fd)
        kind, err = got.get(timeout=10)
        assert kind == "error" and err.tag == Result.TAG and err.header == {"response_id": 7}
        assert "not sealed" in str(err)
        good, _ = codec.encode(Result(8, True, "fine"))
        transport.SocketWriter(a).write_frames(good)
        kind, msg = got.get(timeout=10)
        assert kind == "message" and msg == Result(8, True, "fine")
    finally:
        peer.close("test over")
        if peer.thread is not None:
            peer.thread.join(10)
        a.close()


def test_a_received_frame_is_sent_on_without_a_copy_until_written(link: Link) -> None:
    """A worker returning or forwarding an array it received sends the same sealed memfd;
    once it has written to it, a copy (with its change)."""
    import numpy as np

    a = np.arange(2**18, dtype=np.float64)  # 2 MiB
    link.writer.write_frames([b"h", b"b", a])
    got = transport.read_message(link.reader)
    received = np.frombuffer(got[2], dtype=np.float64)
    before = dict(shm.stats)
    raw = pickle_raw(received)
    link.writer.write_frames([b"h", b"b", raw])
    again = transport.read_message(link.reader)
    assert shm.stats["forwarded"] == before["forwarded"] + 1
    assert shm.stats["copied"] == before["copied"]
    assert np.array_equal(np.frombuffer(again[2], dtype=np.float64), a)
    received[5] = -1.0  # now it differs from the memfd: sent by copy
    link.writer.write_frames([b"h", b"b", pickle_raw(received)])
    third = transport.read_message(link.reader)
    assert shm.stats["copied"] == before["copied"] + 1
    assert np.frombuffer(third[2], dtype=np.float64)[5] == -1.0
    assert np.frombuffer(again[2], dtype=np.float64)[5] == 5.0
    del got, received, raw, again, third


def pickle_raw(arr: Any) -> memoryview:
    """The frame codec.encode makes of an array: its protocol-5 buffer's raw view."""
    import pickle

    bufs: list[pickle.PickleBuffer] = []
    pickle.dumps(arr, protocol=5, buffer_callback=bufs.append)
    return bufs[0].raw()
