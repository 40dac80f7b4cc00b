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
dropped. Frames of 1 MiB or more are received into anonymous ``mmap`` memory, which the kernel
commits page by page as the data arrives, so a large frame costs no zero-filling and a lying
length costs no memory.

On a socket, a whole message goes out with one ``sendmsg`` (scatter-gather), so a 100 MB buffer
is never copied into an intermediate ``bytes``. Other streams (a custom transport's file
objects) get one ``write`` per frame and a ``flush``.
"""

from __future__ import annotations

import collections
import mmap
import os
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

from .errors import ProtocolError

__all__ = [
    "MAX_FRAMES",
    "BufferPool",
    "FrameWriter",
    "SocketReader",
    "SocketWriter",
    "StreamWriter",
    "connect",
    "connect_local",
    "connect_tcp",
    "handshake_io",
    "listen_local",
    "listen_tcp",
    "max_message_bytes",
    "read_message",
    "set_socket_options",
    "socket_streams",
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


def _prefix(frames: Sequence[Any], limit: int) -> tuple[bytes, list[int], int]:
    """The length prefix of a message, its frames' sizes and their total; checks the guard."""
    lens = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
    total = sum(lens)
    if total > limit:
        raise ProtocolError(
            f"message of {total} bytes exceeds the size guard of {limit} bytes "
            "(PYDIST_MAX_MESSAGE_BYTES)"
        )
    if not 1 <= len(frames) <= MAX_FRAMES:
        raise ProtocolError(f"a message has 1 to {MAX_FRAMES} frames, not {len(frames)}")
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


class _PooledBuffer(mmap.mmap):
    """A received frame's memory; weakly referenceable, so the pool sees when it is free."""


class BufferPool:
    """Memory for large incoming frames, reused once the objects built on it are gone.

    Fresh memory costs the kernel a page fault and a zero-fill per 4 KiB page: on this kind of
    machine receiving 100 MB into new memory takes several times longer than into memory
    that is already mapped. So a frame's memory is a ``memfd``, mapped with ``MAP_POPULATE``;
    when the last object using it (a numpy array, say) is freed, a weak reference hands the
    ``memfd`` back, and the next large frame maps the same pages again in one step. At most
    ``max_cached`` bytes are kept; idle memory is given back by :meth:`trim`.

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

    def get(self, size: int) -> Any:
        """A writable buffer of exactly ``size`` bytes."""
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
        if fd < 0:
            cap = size
            try:
                fd = os.memfd_create("pydist-frame", os.MFD_CLOEXEC)
                os.ftruncate(fd, cap)
            except OSError:
                if fd >= 0:
                    os.close(fd)
                return mmap.mmap(-1, size)
        try:
            buf = _PooledBuffer(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
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
    if not 1 <= n <= MAX_FRAMES:
        raise ProtocolError(f"bad frame count {n}")
    lens = struct.unpack(f"!{n}Q", _read_exact(reader, 8 * n))
    return _read_frames(reader, lens, limit, alloc)


def _read_frames(reader: BinaryIO, lens: Sequence[int], limit: int, alloc: Any) -> list[Any]:
    total = sum(lens)
    if total > limit:
        raise ProtocolError(
            f"message of {total} bytes exceeds the size guard of {limit} bytes "
            "(PYDIST_MAX_MESSAGE_BYTES); refused"
        )
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


def set_socket_options(sock: socket.socket, *, remote: bool = False) -> None:
    """TCP_NODELAY always; keepalive and TCP_USER_TIMEOUT for links that may be cut."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if remote:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 15000)


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
        if not 1 <= n <= MAX_FRAMES:
            raise ProtocolError(f"bad frame count {n}")
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
        if total > limit:
            raise ProtocolError(
                f"message of {total} bytes exceeds the size guard of {limit} bytes "
                "(PYDIST_MAX_MESSAGE_BYTES); refused"
            )
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


def socket_streams(sock: socket.socket) -> tuple[Any, SocketWriter]:
    """The (incoming, outgoing) pair for a connected socket."""
    return SocketReader(sock), SocketWriter(sock)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _local_name(host: str, port: int) -> str:
    # an abstract Unix socket name (Linux): no file to clean up, gone with its listener
    return f"\0pydistributed-{host}-{port}"


def listen_local(host: str, port: int) -> socket.socket | None:
    """A Unix-socket twin of the TCP listener ``host:port`` (Linux), or None.

    Processes on the same host reach a worker through it: a local round trip costs about half
    of a loopback TCP one, and bulk data moves faster. The cookie handshake is the same.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_local_name(host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        return None
    return sock


def connect_local(host: str, port: int, timeout: float) -> socket.socket | None:
    """Connect to the Unix-socket twin of a loopback ``host:port``; None if there is none."""
    if not _is_loopback(host) or not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(_local_name(host, port))
    except OSError:
        sock.close()
        return None
    return sock


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to a worker's listener: through its Unix socket when local, else TCP."""
    sock = connect_local(host, port, timeout)
    if sock is not None:
        return sock
    return connect_tcp(host, port, timeout)


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """Open a TCP connection with our socket options; ``timeout`` bounds the connect."""
    sock = socket.create_connection((host, port), timeout=timeout)
    set_socket_options(sock, remote=not _is_loopback(host))
    return sock


def listen_tcp(host: str, port: int = 0, backlog: int = 128) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: the OS picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock
