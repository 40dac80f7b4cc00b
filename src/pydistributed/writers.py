"""The writing side of a connection: messages out as frames (the format: ``transport.py``).

On a socket, a whole message goes out with one ``sendmsg`` (scatter-gather), so a 100 MB buffer
is never copied into an intermediate ``bytes``. On a Unix-socket link, large out-of-band
buffers go as shared memory instead (``shm.py``): a sealed ``memfd`` each, whose descriptors
ride with the message's first byte (``SCM_RIGHTS``). Other streams (a custom transport's file
objects) get one ``write`` per frame and a ``flush``.
"""

from __future__ import annotations

import array
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

from . import shm, shmpool
from .framemac import BULK_MIN, FrameMac, feed_frames
from .frames import COUNT, max_message_bytes, prefix

__all__ = ["FrameWriter", "SocketWriter", "StreamWriter", "as_frame_writer", "is_tls_socket"]

# Linux caps one sendmsg at IOV_MAX (1024) pieces.
_IOV_MAX = 1024
# a bulk frame of a MAC'd message is hashed and sent this much at a time, each chunk hashed
# just before it goes out, while it is in the CPU's cache (docs/security.md has the figures)
MAC_CHUNK = 1 << 21


def is_tls_socket(sock: Any) -> bool:
    """Whether ``sock`` is an ``ssl.SSLSocket``, without importing ``ssl`` (3 ms at startup)
    in a process that never uses TLS: a TLS socket exists only once ``ssl`` is imported."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


class FrameWriter(Protocol):
    """Where messages are written: a connection's outgoing side; with ``mac`` set, each message
    is followed by its tag."""

    mac: FrameMac | None

    def write_frames(self, frames: Sequence[Any]) -> None:
        """Write one whole message made of ``frames`` (bytes-like objects)."""

    def close(self) -> None:
        """Close the outgoing side."""


class SocketWriter:
    """Writes messages to a connected socket with ``sendmsg`` (no copies of large frames).

    ``mac``: when set (a :class:`FrameMac`), every message is followed by its tag.
    ``shm``: a Unix socket whose reader takes descriptors (``transport.SocketReader`` with
    ``fds``): out-of-band buffers of ``shm.min_bytes()`` or more go as shared memory (never on
    a link with tags: the tags would not cover them).
    """

    def __init__(self, sock: socket.socket, shm: bool = False) -> None:
        self.sock = sock
        self._limit = max_message_bytes()
        self.bytes_sent = 0
        self.partial = False
        self.mac: FrameMac | None = None
        self._tls = is_tls_socket(sock)  # no sendmsg: a sendall per piece
        self.shm_min = _shm_min() if shm and not self._tls else 0  # 0: never
        self.pool = shmpool.OutPool() if self.shm_min else None

    def write_frames(self, frames: Sequence[Any]) -> None:
        head, lens, total = prefix(frames, self._limit)
        self.bytes_sent += len(head) + total
        sock = self.sock
        mac = self.mac
        fds: list[int] = []
        owned: list[int] = []
        pool = self.pool
        if pool is not None and pool.holding:
            pool.tick()  # idle memfds given back, even on a link that only sends small messages
        # stays True if an exception leaves the message half written, or leaves the pool
        # counting a slot or its control page as sent (_to_shm) when nothing went out
        self.partial = True
        if self.shm_min and mac is None and len(frames) > 2 and total >= self.shm_min:
            head, frames, fds, owned = _to_shm(frames, lens, self.shm_min, pool)
        try:
            if not fds and total < BULK_MIN:  # (64 KiB: no frame of it is bulk)
                # small: one buffer, one send (cheaper than building an iovec list)
                data = head + b"".join(frames)
                sock.sendall(data if mac is None else data + mac.tag(data))
                self.partial = False
                return
            if mac is None:
                pieces: list[memoryview] = [memoryview(head)]
                pieces.extend(m for m in (memoryview(f).cast("B") for f in frames) if m.nbytes)
                self._send_pieces(pieces, fds)
            else:
                self._send_hashed(mac, head, frames, lens)
            self.partial = False
        finally:
            # the kernel holds its own references to descriptors in flight; the pool's stay
            shm.close_all(owned)

    def _send_hashed(self, mac: FrameMac, head: bytes, frames: Sequence[Any], lens: Any) -> None:
        """Send a message and its tag, hashing each piece just before it goes out: a bulk
        frame :data:`MAC_CHUNK` bytes at a time, hashed while it is in the CPU's cache, then
        sent (with the small pieces before it in one ``sendmsg``)."""
        h = mac.start()
        h.update(head)
        pieces: list[memoryview] = [memoryview(head)]
        for f, n in zip(frames, lens, strict=True):
            if not n:
                continue
            m = memoryview(f).cast("B")
            if n < BULK_MIN:
                h.update(m)
                pieces.append(m)
                continue
            h.begin()
            for start in range(0, n, MAC_CHUNK):
                chunk = m[start : start + MAC_CHUNK]
                h.bulk(chunk)
                pieces.append(chunk)
                self._send_pieces(pieces)
                pieces = []
            h.end()
        pieces.append(memoryview(h.digest()))
        self._send_pieces(pieces)

    def _send_pieces(self, pieces: list[memoryview], fds: list[int] | None = None) -> None:
        sock = self.sock
        if self._tls:
            for piece in pieces:
                sock.sendall(piece)
            return
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while pieces:
            sent = sock.sendmsg(pieces[:_IOV_MAX], anc)
            anc = []  # the descriptors go with the message's first byte only
            # drop what went out; keep the tail of a piece that went out in part
            while sent and pieces:
                n = pieces[0].nbytes
                if sent >= n:
                    sent -= n
                    pieces.pop(0)
                else:
                    pieces[0] = pieces[0][sent:]
                    sent = 0

    def write(self, data: Any) -> int:
        self.sock.sendall(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.pool is not None:
            self.pool.close()


def _shm_min() -> int:
    return shm.min_bytes() if shm.enabled() else 0


def _to_shm(
    frames: Sequence[Any], lens: list[int], least: int, pool: shmpool.OutPool | None
) -> tuple[bytes, list[Any], list[int], list[int]]:
    """Move the large out-of-band buffers of a message (frames 2..) to shared memory: the new
    prefix (their lengths marked ``shm.FD_FRAME``), the frames left for the stream, the
    descriptors to attach (in the receiver's order) and those of them to close once sent.

    A buffer goes into the link's pool (``shmpool.py``: a memcpy into reused pages); one that
    the pool cannot take, into a fresh sealed memfd (or, a received sealed frame sent on, its
    own memfd); one whose memfd cannot be made stays in the stream, and so do exact ``bytes``
    (the receiver reads them straight into a ``bytes``)."""
    fds: list[int] = []
    owned: list[int] = []
    out: list[Any] = list(frames[:2])
    marked = list(lens)
    try:
        for i in range(2, len(frames)):
            f = frames[i]
            if (
                lens[i] < least
                or len(fds) >= shm.MAX_FDS - 2
                or type(f) is bytes
                or type(getattr(f, "obj", None)) is bytes
            ):
                out.append(f)
                continue
            fd = shm.forwardable(f)  # a received sealed frame sent on: no copy
            if fd is not None:
                shm.stats["forwarded"] += 1
            else:
                word = pool.place(f, fds) if pool is not None else None
                if word is not None:
                    marked[i] = word
                    continue
                try:
                    fd = shm.sealed_copy(f)
                except OSError:
                    out.append(f)
                    continue
                shm.stats["copied"] += 1
            fds.append(fd)
            owned.append(fd)
            marked[i] = lens[i] | shm.FD_FRAME
    except BaseException:
        shm.close_all(owned)
        raise
    if marked == lens:
        return COUNT.pack(len(lens)) + struct.pack(f"!{len(lens)}Q", *lens), list(frames), [], []
    return COUNT.pack(len(marked)) + struct.pack(f"!{len(marked)}Q", *marked), out, fds, owned


class StreamWriter:
    """Writes messages to any binary file-like object (a custom transport); ``mac`` as for
    :class:`SocketWriter`."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._limit = max_message_bytes()
        self.bytes_sent = 0
        self.mac: FrameMac | None = None

    def write_frames(self, frames: Sequence[Any]) -> None:
        head, lens, total = prefix(frames, self._limit)
        tag = b""
        if self.mac is not None:  # first: a MAC that fails leaves the stream untouched
            h = self.mac.start()
            h.update(head)
            feed_frames(h, frames, lens)
            tag = h.digest()
        self.stream.write(head)
        for f in frames:
            self.stream.write(f)
        if tag:
            self.stream.write(tag)
        self.stream.flush()
        self.bytes_sent += len(head) + total

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass


def as_frame_writer(out: Any) -> FrameWriter:
    """Adapt the outgoing stream of ``ClusterManager.connect`` to a :class:`FrameWriter`."""
    if hasattr(out, "write_frames"):
        return out  # type: ignore[no-any-return]
    return StreamWriter(out)
