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
(a connection passes its cluster's ``buffers.BufferPool``: fresh huge pages, or the reused
pages of frames whose objects are gone); without one, into fresh anonymous ``mmap`` memory.

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
import socket
import struct
from collections.abc import Callable, Collection, Sequence
from typing import Any, BinaryIO

from . import shm, shmpool
from .buffers import new_bytes
from .errors import ProtocolError
from .framemac import BULK_MIN, MAC_SIZE, FrameMac, feed_frames
from .frames import BIG_FRAME, COUNT, MAX_FRAMES, check_size, max_message_bytes, prefix
from .writers import FrameWriter, SocketWriter, StreamWriter, as_frame_writer, is_tls_socket

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

_check_size = check_size
_prefix = prefix
_BIG_FRAME = BIG_FRAME
_BUFFER_SIZE = 1 << 16  # a SocketReader's buffer
# writers and readers decide which frames are bulk frames of the MAC by BULK_MIN alone; the
# reader's fast path (a whole message in its buffer, SocketReader) and the writer's (a message
# under 64 KiB, SocketWriter) take every frame as a small one: they take messages under BULK_MIN
assert BULK_MIN <= _BIG_FRAME
_COUNT = COUNT
_COMMIT_CHUNK = 8 << 20  # memory of a large frame is committed this much at a time
# a bulk frame of a MAC'd message is read and hashed this much at a time, each chunk while it is
# still in the CPU's cache (L2: 2 MiB a core here); cheaper than a second thread hashing behind
# the reads (docs/security.md has the figures)
_MAC_CHUNK = 1 << 21
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


def _read_exact(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if data is None or len(data) != n:
        raise EOFError("connection closed")
    return data


def _read_small(reader: BinaryIO, size: int, i: int, as_bytes: Collection[int]) -> Any:
    """Frame ``i`` of a message, of ``size`` bytes (under :data:`BIG_FRAME`). An out-of-band
    buffer (``i`` >= 2) comes in a ``bytearray``, read straight into it: a numpy array built
    on it is writable, as one sent in-band, through shared memory or as a large frame is (in
    ``bytes`` it was read-only); one that was an exact ``bytes`` (``as_bytes``) stays one."""
    if not size:
        return b""
    if i < 2 or i in as_bytes:
        return _read_exact(reader, size)
    out = bytearray(size)
    _read_into(reader, out)
    return out


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
        if on_chunk is None:
            while got < end:
                k = reader.readinto(view[got:end])  # type: ignore[attr-defined]
                if not k:
                    raise EOFError("connection closed in the middle of a message")
                got += k
            continue
        while got < end:
            start = got
            stop = min(end, got + _MAC_CHUNK)
            while got < stop:
                k = reader.readinto(view[got:stop])  # type: ignore[attr-defined]
                if not k:
                    raise EOFError("connection closed in the middle of a message")
                got += k
            on_chunk(view[start:stop])


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


def _new_frame(size: int, as_bytes: bool, alloc: Any) -> tuple[Any, Any]:
    """The memory of a large incoming frame: ``(frame, writable buffer to receive into)``."""
    try:
        if as_bytes:
            return new_bytes(size)
        frame = alloc(size) if alloc is not None else mmap.mmap(-1, size)
        return frame, frame
    except (OSError, ValueError, OverflowError, MemoryError) as e:
        raise ProtocolError(f"cannot allocate a frame of {size} bytes: {e}") from e


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
    frames: list[Any] = []
    as_bytes: Collection[int] = ()
    for i, size in enumerate(lens):
        if size < _BIG_FRAME:
            frame = _read_small(reader, size, i, as_bytes)
            if h is not None:
                feed_frames(h, (frame,), (size,))  # (a bulk frame from BULK_MIN on)
        else:
            frame, buf = _new_frame(size, i in as_bytes, alloc)
            if h is None:
                _read_into(reader, buf)
            else:  # a bulk frame of the MAC (BULK_MIN <= _BIG_FRAME)
                h.begin()
                _read_into(reader, buf, h.bulk)
                h.end()
        frames.append(frame)
        if i == 0 and bytes_frames is not None and len(lens) > 2:
            as_bytes = bytes_frames(frames[0])
    if h is not None:
        FrameMac.check(h, _read_exact(reader, MAC_SIZE))
    return frames


def _read_shm_frames(
    reader: SocketReader,
    lens: Sequence[int],
    fds: list[int],
    alloc: Any,
    bytes_frames: Callable[[Any], Collection[int]] | None,
    limit: int,
) -> list[Any]:
    """The frames of a message with shared-memory frames (lengths marked ``shm.FD_FRAME``;
    the prefix has been read): stream frames from the socket, the others mapped from ``fds``
    (a sealed memfd each) or taken from the link's pool (``shmpool.py``).

    The whole message is read even when a descriptor is refused, so the stream stays in step;
    every descriptor is mapped or closed.

    Raises:
        shm.ShmRefused: a descriptor is missing, extra, or not what its frame declares.
    """
    pool = reader.pool
    assert pool is not None
    marked = [i for i, n in enumerate(lens) if n & shm.FD_FRAME]
    pooled = [i for i in marked if lens[i] & shmpool.POOL]
    control = bool(pooled) and pool.expects_control()
    wanted = control + sum(
        1 for i in marked if not lens[i] & shmpool.POOL or lens[i] & shmpool.ATTACHED
    )
    error = None
    if marked and marked[0] < 2:
        error = "only out-of-band buffers (frames 2..) may come as shared memory"
    elif len(fds) != wanted:
        error = f"the message declares {wanted} descriptors and {len(fds)} came with it"
    if error is not None:
        shm.close_all(fds)
        fds = []
    fds = list(fds)
    frames: list[Any] = []
    as_bytes: Collection[int] = ()
    try:
        if control and error is None:
            try:
                pool.take_control(fds.pop(0))
            except shm.ShmRefused as e:
                error = str(e).removeprefix("shared-memory frame refused: ")
        for i, n in enumerate(lens):
            if n & shm.FD_FRAME:
                frames.append(b"")
                if error is not None:
                    continue
                try:
                    if n & shmpool.POOL:
                        frames[-1] = pool.frame(n, fds, limit)
                    else:
                        frames[-1] = shm.map_frame(fds.pop(0), n & shmpool.SIZE_MASK)
                except shm.ShmRefused as e:
                    error = str(e).removeprefix("shared-memory frame refused: ")
            elif n < _BIG_FRAME:
                frames.append(_read_small(reader, n, i, as_bytes))  # type: ignore[arg-type]
            else:
                frame, buf = _new_frame(n, i in as_bytes, alloc)
                _read_into(reader, buf)  # type: ignore[arg-type]
                frames.append(frame)
            if i == 0 and bytes_frames is not None:
                as_bytes = bytes_frames(frames[0])
    finally:
        shm.close_all(fds)
    if error is not None:
        raise shm.ShmRefused(error, frames[0] if frames else b"")
    return frames


class SocketReader:
    """Buffered reads from a socket, which also tell how much is buffered.

    The reading role of a connection can pass between threads (see ``peer.py``): a thread that
    gives it up must know whether bytes are already buffered before it waits on the socket
    with ``select``; ``io.BufferedReader`` cannot tell without reading.
    """

    def __init__(self, sock: socket.socket, size: int = _BUFFER_SIZE, fds: bool = False) -> None:
        self.sock = sock
        # ``fds``: a Unix socket that may carry shared-memory frames (``shm.py``): every read
        # takes ancillary data, and ``_pos`` counts the stream's bytes to place descriptors
        self.inbox = shm.FdInbox() if fds else None
        self.pool = shmpool.InPool() if fds else None  # the peer's pool as mapped here
        self._pos = 0
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.closed = False
        self._tls = is_tls_socket(sock)

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
            got = self._recv(self._view[self._end :], True)
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
        pool = self.pool
        if pool is not None and pool.holding:
            pool.tick()  # mappings of memfds the sender closed are dropped
        if self._end - self._start < 4 and not self._fill(4):
            if self._end == self._start:
                raise EOFError("connection closed")
            raise EOFError("connection closed in the middle of a message")
        view = self._view
        (n,) = _COUNT.unpack_from(view, self._start)
        _check_size(n, 0, limit)
        head = 4 + 8 * n
        inbox = self.inbox
        if inbox is not None and (inbox.count or head > len(self._buf)):
            return self._read_fd_message(n, limit, alloc, mac, bytes_frames)
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
        if total >= shm.FD_FRAME and inbox is not None:  # shared-memory frames
            return self._read_fd_message(n, limit, alloc, mac, bytes_frames)
        _check_size(n, total, limit)
        tag = 0 if mac is None else MAC_SIZE
        whole = head + total + tag
        if whole <= len(self._buf) and total < BULK_MIN:  # (no frame of it is bulk)
            if self._end - self._start < whole and not self._fill(whole):
                raise EOFError("connection closed in the middle of a message")
            start = self._start
            pos = start + head
            frames: list[Any] = []
            for size in lens:
                frames.append(bytes(view[pos : pos + size]))
                pos += size
            if mac is not None:
                mac.verify(view[start:pos], view[pos : pos + MAC_SIZE])
                pos += MAC_SIZE
            self._start = pos
            return frames
        h = None
        if mac is not None:
            h = mac.start()
            h.update(view[self._start : self._start + head])
        self._start += head
        return _read_frames(self, lens, limit, alloc, h, bytes_frames)  # type: ignore[arg-type]

    def _read_fd_message(
        self,
        n: int,
        limit: int,
        alloc: Any,
        mac: FrameMac | None,
        bytes_frames: Callable[[Any], Collection[int]] | None,
    ) -> list[Any]:
        """:meth:`read_message` on a link that may carry descriptors (the count ``n`` is
        buffered, not consumed): places the descriptors that came so far (``shm.FdInbox``)."""
        inbox = self.inbox
        assert inbox is not None
        p = self._pos - (self._end - self._start)  # the stream offset of this message
        self._start += 4
        raw_lens = _read_exact(self, 8 * n)  # type: ignore[arg-type]
        lens = struct.unpack(f"!{n}Q", raw_lens)
        sizes = [size & shmpool.SIZE_MASK if size & shm.FD_FRAME else size for size in lens]
        _check_size(n, sum(sizes), limit)
        stream = 4 + 8 * n + sum(a for a, b in zip(lens, sizes, strict=True) if a == b)
        fds = inbox.take(p, stream)
        if sizes == list(lens):
            if fds:  # descriptors with a message that has no shared-memory frame
                inbox.drop(fds)
            h = None
            if mac is not None:
                h = mac.start()
                h.update(_COUNT.pack(n))
                h.update(raw_lens)
            return _read_frames(self, lens, limit, alloc, h, bytes_frames)  # type: ignore[arg-type]
        if mac is not None:
            shm.close_all(fds)
            raise ProtocolError("shared-memory frames on a link with frame tags")
        return _read_shm_frames(self, lens, fds, alloc, bytes_frames, limit)

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
        out, view = new_bytes(n)  # read straight into the bytes (no copies of it)
        got = self.readinto(view)
        if got != n or type(out) is not bytes:
            return bytes(memoryview(view).cast("B")[:got])
        return out  # type: ignore[no-any-return]

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
            k = self._recv(view[got:], False)
            if not k:
                break
            got += k
        return got

    def _recv(self, view: memoryview, at_message_start: bool) -> int:
        """One read from the socket; on a link with descriptors, they are kept for their
        message when they may be one's (``at_message_start``: bytes read into the buffer,
        where messages begin), closed otherwise (inside a frame's data)."""
        inbox = self.inbox
        if inbox is None:
            return self.sock.recv_into(view)
        n, anc, flags, _ = self.sock.recvmsg_into([view], shm.ANC_SPACE)
        if anc:
            fds = shm.fds_of(anc)
            if at_message_start and not flags & socket.MSG_CTRUNC:
                inbox.add(self._pos, self._pos + n, fds)
            else:
                inbox.drop(fds)
        self._pos += n
        return n

    def close(self) -> None:
        self.closed = True
        if self.inbox is not None:
            self.inbox.close()
        if self.pool is not None:
            self.pool.close()
