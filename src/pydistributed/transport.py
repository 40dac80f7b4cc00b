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

After the cookie handshake, a connection that the kernel cannot vouch for (TCP, a custom
transport) authenticates every message: a 16-byte tag follows the last frame (``framemac.py``).

Memory for a large frame is committed as its data arrives, a chunk at a time
(``MADV_POPULATE_WRITE``), never for the declared size up front.

On a socket, a whole message goes out with one ``sendmsg`` (scatter-gather), so a 100 MB buffer
is never copied into an intermediate ``bytes``. Other streams (a custom transport's file
objects) get one ``write`` per frame and a ``flush``.
"""

from __future__ import annotations

import mmap
import os
import socket
import ssl
import struct
from collections.abc import Callable, Collection, Sequence
from typing import Any, BinaryIO, Protocol

from .buffers import new_bytes
from .errors import ProtocolError
from .framemac import MAC_SIZE, BackgroundHash, FrameMac

__all__ = [
    "MAC_SIZE",
    "MAX_FRAMES",
    "FrameMac",
    "FrameWriter",
    "SocketReader",
    "SocketWriter",
    "StreamWriter",
    "as_frame_writer",
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


_COMMIT_CHUNK = 8 << 20  # memory of a large frame is committed this much at a time
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


class FrameWriter(Protocol):
    """Where messages are written: a connection's outgoing side; with ``mac`` set, each message
    is followed by its tag."""

    mac: FrameMac | None

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
    """Writes messages to a connected socket with ``sendmsg`` (no copies of large frames).

    ``mac``: when set (a :class:`FrameMac`), every message is followed by its tag.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._limit = max_message_bytes()
        self.bytes_sent = 0
        self.partial = False
        self.mac: FrameMac | None = None
        self._tls = isinstance(sock, ssl.SSLSocket)  # no sendmsg: a sendall per piece

    def write_frames(self, frames: Sequence[Any]) -> None:
        prefix, lens, total = _prefix(frames, self._limit)
        self.bytes_sent += len(prefix) + total
        sock = self.sock
        mac = self.mac
        self.partial = True  # stays True if an exception leaves the message half written
        if total < 65536:
            # small: one buffer, one send (cheaper than building an iovec list)
            data = prefix + b"".join(frames)
            sock.sendall(data if mac is None else data + mac.tag(data))
            self.partial = False
            return
        pieces: list[memoryview] = [memoryview(prefix)]
        pieces.extend(memoryview(f).cast("B") for f, n in zip(frames, lens, strict=True) if n)
        bg = None
        if mac is not None:
            bg = BackgroundHash(mac.start())  # hashes while the pieces go out
            for piece in pieces:
                bg.update(piece)
        self._send_pieces(pieces)
        if bg is not None:
            sock.sendall(bg.digest())
        self.partial = False

    def _send_pieces(self, pieces: list[memoryview]) -> None:
        sock = self.sock
        if self._tls:
            for piece in pieces:
                sock.sendall(piece)
            return
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
    """Writes messages to any binary file-like object (a custom transport); ``mac`` as for
    :class:`SocketWriter`."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._limit = max_message_bytes()
        self.bytes_sent = 0
        self.mac: FrameMac | None = None

    def write_frames(self, frames: Sequence[Any]) -> None:
        prefix, _, total = _prefix(frames, self._limit)
        h = self.mac.start() if self.mac is not None else None
        self.stream.write(prefix)
        if h is not None:
            h.update(prefix)
        for f in frames:
            self.stream.write(f)
            if h is not None:
                h.update(f)
        if h is not None:
            self.stream.write(h.digest())
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


def _read_into(reader: BinaryIO, buf: Any, on_chunk: Callable[[Any], None] | None = None) -> None:
    """Fill ``buf`` from ``reader``, committing the memory of an ``mmap`` a chunk at a time,
    just before its data is read into it (so a peer that declares a huge frame and sends
    nothing costs no memory). ``on_chunk`` gets each chunk once it is in (a MAC)."""
    view = memoryview(buf).cast("B")
    got = 0
    n = view.nbytes
    populate = getattr(buf, "madvise", None)
    while got < n:
        end = min(n, got + _COMMIT_CHUNK)
        if populate is not None:
            try:
                populate(_MADV_POPULATE_WRITE, got, end - got)
            except (OSError, ValueError):
                populate = None  # an older kernel: the pages fault in as they are written
        start = got
        while got < end:
            k = reader.readinto(view[got:end])  # type: ignore[attr-defined]
            if not k:
                raise EOFError("connection closed in the middle of a message")
            got += k
        if on_chunk is not None:
            on_chunk(view[start:end])


def read_message(
    reader: BinaryIO,
    limit: int | None = None,
    alloc: Any = None,
    mac: FrameMac | None = None,
    bytes_frames: Callable[[Any], Collection[int]] | None = None,
) -> list[Any]:
    """Read one whole message from ``reader`` and return its frames.

    ``alloc(size)`` gives the memory of frames of 1 MiB or more (default: anonymous mmap);
    ``mac``, when given, checks the message's tag; ``bytes_frames(frame0)`` names the frames
    (by index) that are to arrive as ``bytes`` objects (read straight into them).

    Raises:
        EOFError: the stream ended (cleanly, between messages, or in the middle of one).
        ProtocolError: a frame count or size outside the guard (nothing was allocated for
            it), or a tag that does not match.
    """
    if limit is None:
        limit = max_message_bytes()
    if type(reader) is SocketReader:
        return reader.read_message(limit, alloc, mac, bytes_frames)
    head = reader.read(4)
    if not head:
        raise EOFError("connection closed")
    if len(head) != 4:
        raise EOFError("connection closed in the middle of a message")
    (n,) = _COUNT.unpack(head)
    _check_size(n, 0, limit)
    raw_lens = _read_exact(reader, 8 * n)
    lens = struct.unpack(f"!{n}Q", raw_lens)
    h = None
    if mac is not None:
        h = mac.start()
        h.update(head)
        h.update(raw_lens)
    return _read_frames(reader, lens, limit, alloc, h, bytes_frames)


def _read_frames(
    reader: BinaryIO,
    lens: Sequence[int],
    limit: int,
    alloc: Any,
    h: Any = None,
    bytes_frames: Callable[[Any], Collection[int]] | None = None,
) -> list[Any]:
    """Read the frames of sizes ``lens`` (the prefix has been read), and the tag if ``h``
    (the message's MAC, fed with the prefix already) is given."""
    _check_size(len(lens), sum(lens), limit)
    if h is not None and max(lens) >= _BIG_FRAME:
        h = BackgroundHash(h)  # hashes each chunk while the next one arrives
    frames: list[Any] = []
    as_bytes: Collection[int] = ()
    for i, size in enumerate(lens):
        if size < _BIG_FRAME:
            frames.append(_read_exact(reader, size) if size else b"")
        else:
            try:
                frame: Any
                if i in as_bytes:
                    frame, buf = new_bytes(size)
                else:
                    frame = buf = alloc(size) if alloc is not None else mmap.mmap(-1, size)
            except (OSError, ValueError, OverflowError, MemoryError) as e:
                raise ProtocolError(f"cannot allocate a frame of {size} bytes: {e}") from e
            _read_into(reader, buf, h.update if h is not None else None)
            frames.append(frame)
        if i == 0 and bytes_frames is not None and len(lens) > 2:
            as_bytes = bytes_frames(frames[0])
        if h is not None and size < _BIG_FRAME:
            h.update(frames[-1])
    if h is not None:
        FrameMac.check(h, _read_exact(reader, MAC_SIZE))
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
        self._tls = isinstance(sock, ssl.SSLSocket)

    def fileno(self) -> int:
        return self.sock.fileno()

    def buffered(self) -> int:
        """Bytes that can be read without waiting on the socket (TLS: decrypted ones too)."""
        if self._tls:
            return self._end - self._start + self.sock.pending()  # type: ignore[attr-defined]
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

    def read_message(
        self,
        limit: int,
        alloc: Any = None,
        mac: FrameMac | None = None,
        bytes_frames: Callable[[Any], Collection[int]] | None = None,
    ) -> list[Any]:
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
            count = bytes(view[self._start : self._start + 4])
            self._start += 4
            raw_lens = _read_exact(self, 8 * n)  # type: ignore[arg-type]
            lens = struct.unpack(f"!{n}Q", raw_lens)
            h = None
            if mac is not None:
                h = mac.start()
                h.update(count)
                h.update(raw_lens)
            return _read_frames(self, lens, limit, alloc, h, bytes_frames)  # type: ignore[arg-type]
        if self._end - self._start < head and not self._fill(head):
            raise EOFError("connection closed in the middle of a message")
        lens = struct.unpack_from(f"!{n}Q", view, self._start + 4)
        total = sum(lens)
        _check_size(n, total, limit)
        tag = 0 if mac is None else MAC_SIZE
        whole = head + total + tag
        if whole <= len(self._buf) and total < _BIG_FRAME:
            if self._end - self._start < whole and not self._fill(whole):
                raise EOFError("connection closed in the middle of a message")
            start = self._start
            pos = start + head
            frames: list[Any] = []
            for size in lens:
                frames.append(bytes(view[pos : pos + size]))
                pos += size
            if mac is not None:
                h = mac.start()
                h.update(view[start:pos])
                FrameMac.check(h, view[pos : pos + MAC_SIZE])
                pos += MAC_SIZE
            self._start = pos
            return frames
        h = None
        if mac is not None:
            h = mac.start()
            h.update(view[self._start : self._start + head])
        self._start += head
        return _read_frames(self, lens, limit, alloc, h, bytes_frames)  # type: ignore[arg-type]

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
