"""Byte streams and frames: how messages cross a connection. No pickle here.

The frame format
----------------
A message is a list of frames: frame 0 is a fixed-size header, frame 1 the pickled body, frames
2.. the raw out-of-band buffers of pickle protocol 5 (large numpy arrays, big ``bytes``)::

    +---------+-----------+-----------+-----+-----------+---------+---------+-----+
    | n: u32  | len0: u64 | len1: u64 | ... | lenN: u64 | frame 0 | frame 1 | ... |
    +---------+-----------+-----------+-----+-----------+---------+---------+-----+

All integers are big-endian. ``1 <= n <= MAX_FRAMES`` and the sum of the lengths is checked
against the size guard (``PYDIST_MAX_MESSAGE_BYTES``, default 16 GiB) *before* anything is
allocated; a violation is a :class:`~pydistributed.errors.ProtocolError` and the connection is
dropped. Frames of 1 MiB or more are received into memory that the reader's ``alloc`` gives
(a connection passes its cluster's ``buffers.BufferPool``, which reuses the pages of frames
whose objects are gone); without one, into fresh anonymous ``mmap`` memory.

On a socket, a whole message goes out with one ``sendmsg`` (scatter-gather), so a 100 MB buffer
is never copied into an intermediate ``bytes``. Other streams (a custom transport's file
objects) get one ``write`` per frame and a ``flush``.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

from .errors import ProtocolError

__all__ = [
    "MAX_FRAMES",
    "FrameWriter",
    "SocketReader",
    "SocketWriter",
    "StreamWriter",
    "as_frame_writer",
    "handshake_io",
    "max_message_bytes",
    "read_message",
]

MAX_FRAMES = 65536
_COUNT = struct.Struct("!I")
_BIG_FRAME = 1 << 20
_DEFAULT_MAX = 16 << 30
# Linux caps one sendmsg at IOV_MAX (1024) pieces.
_IOV_MAX = 1024


def max_message_bytes() -> int:
    """The size guard: the largest message (sum of its frames) accepted or sent."""
    raw = os.environ.get("PYDIST_MAX_MESSAGE_BYTES")
    if raw:
        try:
            return max(1024, int(raw))
        except ValueError:
            pass
    return _DEFAULT_MAX


class FrameWriter(Protocol):
    """Where messages are written: a connection's outgoing side."""

    def write_frames(self, frames: Sequence[Any]) -> None:
        """Write one whole message made of ``frames`` (bytes-like objects)."""

    def close(self) -> None:
        """Close the outgoing side."""


def _check_size(n_frames: int, total: int, limit: int) -> None:
    """The guard of every message, sent or received: the frame count and the total size.

    Raises:
        ProtocolError: outside the guard; nothing has been allocated or sent for it.
    """
    if not 1 <= n_frames <= MAX_FRAMES:
        raise ProtocolError(f"a message has 1 to {MAX_FRAMES} frames, not {n_frames}")
    if total > limit:
        raise ProtocolError(
            f"message of {total} bytes exceeds the size guard of {limit} bytes "
            "(PYDIST_MAX_MESSAGE_BYTES)"
        )


def _prefix(frames: Sequence[Any], limit: int) -> tuple[bytes, list[int], int]:
    """The length prefix of a message, its frames' sizes and their total; checks the guard."""
    lens = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
    total = sum(lens)
    _check_size(len(frames), total, limit)
    return _COUNT.pack(len(frames)) + struct.pack(f"!{len(lens)}Q", *lens), lens, total


class SocketWriter:
    """Writes messages to a connected socket with ``sendmsg`` (no copies of large frames)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._limit = max_message_bytes()
        self.bytes_sent = 0
        self.partial = False

    def write_frames(self, frames: Sequence[Any]) -> None:
        prefix, lens, total = _prefix(frames, self._limit)
        self.bytes_sent += len(prefix) + total
        sock = self.sock
        self.partial = True  # stays True if an exception leaves the message half written
        if total < 65536:
            # small: one buffer, one send (cheaper than building an iovec list)
            sock.sendall(prefix + b"".join(frames))
            self.partial = False
            return
        pieces: list[memoryview] = [memoryview(prefix)]
        pieces.extend(memoryview(f).cast("B") for f, n in zip(frames, lens, strict=True) if n)
        while pieces:
            sent = sock.sendmsg(pieces[:_IOV_MAX])
            # drop what went out; keep the tail of a piece that went out in part
            while sent and pieces:
                n = pieces[0].nbytes
                if sent >= n:
                    sent -= n
                    pieces.pop(0)
                else:
                    pieces[0] = pieces[0][sent:]
                    sent = 0
        self.partial = False

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


class StreamWriter:
    """Writes messages to any binary file-like object (a custom transport)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._limit = max_message_bytes()
        self.bytes_sent = 0

    def write_frames(self, frames: Sequence[Any]) -> None:
        prefix, _, total = _prefix(frames, self._limit)
        self.stream.write(prefix)
        for f in frames:
            self.stream.write(f)
        self.stream.flush()
        self.bytes_sent += len(prefix) + total

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


def _read_exact(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if data is None or len(data) != n:
        raise EOFError("connection closed")
    return data


def _read_into(reader: BinaryIO, buf: Any) -> None:
    view = memoryview(buf).cast("B")
    got = 0
    n = view.nbytes
    while got < n:
        k = reader.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            raise EOFError("connection closed in the middle of a message")
        got += k


def read_message(reader: BinaryIO, limit: int | None = None, alloc: Any = None) -> list[Any]:
    """Read one whole message from ``reader`` and return its frames.

    ``alloc(size)`` gives the memory of frames of 1 MiB or more (default: anonymous mmap).

    Raises:
        EOFError: the stream ended (cleanly, between messages, or in the middle of one).
        ProtocolError: a frame count or size outside the guard; nothing was allocated for it.
    """
    if limit is None:
        limit = max_message_bytes()
    if type(reader) is SocketReader:
        return reader.read_message(limit, alloc)
    head = reader.read(4)
    if not head:
        raise EOFError("connection closed")
    if len(head) != 4:
        raise EOFError("connection closed in the middle of a message")
    (n,) = _COUNT.unpack(head)
    _check_size(n, 0, limit)
    lens = struct.unpack(f"!{n}Q", _read_exact(reader, 8 * n))
    return _read_frames(reader, lens, limit, alloc)


def _read_frames(reader: BinaryIO, lens: Sequence[int], limit: int, alloc: Any) -> list[Any]:
    _check_size(len(lens), sum(lens), limit)
    frames: list[Any] = []
    for size in lens:
        if size < _BIG_FRAME:
            frames.append(_read_exact(reader, size) if size else b"")
        else:
            try:
                buf: Any = alloc(size) if alloc is not None else mmap.mmap(-1, size)
            except (OSError, ValueError, OverflowError) as e:
                raise ProtocolError(f"cannot allocate a frame of {size} bytes: {e}") from e
            _read_into(reader, buf)
            frames.append(buf)
    return frames


class SocketReader:
    """Buffered reads from a socket, which also tell how much is buffered.

    The reading role of a connection can pass between threads (see ``peer.py``): a thread that
    gives it up must know whether bytes are already buffered before it waits on the socket
    with ``select``; ``io.BufferedReader`` cannot tell without reading.
    """

    def __init__(self, sock: socket.socket, size: int = 1 << 16) -> None:
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def buffered(self) -> int:
        return self._end - self._start

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available (need <= the buffer's size); False at EOF."""
        while self._end - self._start < need:
            if self._start and len(self._buf) - self._start < need:
                n = self._end - self._start
                self._view[:n] = self._view[self._start : self._end]
                self._start, self._end = 0, n
            got = self.sock.recv_into(self._view[self._end :])
            if not got:
                return False
            self._end += got
        return True

    def read_message(self, limit: int, alloc: Any = None) -> list[Any]:
        """``transport.read_message`` for this reader: small messages come out of the buffer
        with one ``recv`` and no copies beyond the frames themselves."""
        if self._end - self._start < 4 and not self._fill(4):
            if self._end == self._start:
                raise EOFError("connection closed")
            raise EOFError("connection closed in the middle of a message")
        view = self._view
        (n,) = _COUNT.unpack_from(view, self._start)
        _check_size(n, 0, limit)
        head = 4 + 8 * n
        if head > len(self._buf):
            # more frame lengths than the buffer holds: the general path
            self._start += 4
            lens = struct.unpack(f"!{n}Q", _read_exact(self, 8 * n))  # type: ignore[arg-type]
            return _read_frames(self, lens, limit, alloc)  # type: ignore[arg-type]
        if self._end - self._start < head and not self._fill(head):
            raise EOFError("connection closed in the middle of a message")
        lens = struct.unpack_from(f"!{n}Q", view, self._start + 4)
        total = sum(lens)
        _check_size(n, total, limit)
        if head + total <= len(self._buf) and total < _BIG_FRAME:
            if self._end - self._start < head + total and not self._fill(head + total):
                raise EOFError("connection closed in the middle of a message")
            pos = self._start + head
            frames: list[Any] = []
            for size in lens:
                frames.append(bytes(view[pos : pos + size]))
                pos += size
            self._start = pos
            return frames
        self._start += head
        return _read_frames(self, lens, limit, alloc)  # type: ignore[arg-type]

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at EOF."""
        avail = self._end - self._start
        if avail >= n:
            start = self._start
            self._start = start + n
            return bytes(self._view[start : start + n])
        if n <= len(self._buf):
            self._fill(n)
            take = min(n, self._end - self._start)
            start = self._start
            self._start = start + take
            return bytes(self._view[start : start + take])
        out = bytearray(n)
        got = self.readinto(out)
        return bytes(out[:got])

    def readinto(self, b: Any) -> int:
        """Fill ``b`` (stops early only at EOF); large reads go straight into ``b``."""
        view = memoryview(b).cast("B")
        n = view.nbytes
        avail = self._end - self._start
        take = min(avail, n)
        view[:take] = self._view[self._start : self._start + take]
        self._start += take
        got = take
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                break
            got += k
        return got

    def close(self) -> None:
        self.closed = True


def handshake_io(instream: Any, outstream: Any) -> tuple[Any, Any]:
    """``(read_exact, write)`` over a connection's two streams, for the handshake."""

    def read_exact(n: int) -> bytes:
        data = instream.read(n)
        if data is None or len(data) != n:
            raise EOFError("connection closed during the handshake")
        return bytes(data)

    def write(data: bytes) -> None:
        outstream.write(data)
        flush = getattr(outstream, "flush", None)
        if flush is not None:
            flush()

    return read_exact, write
