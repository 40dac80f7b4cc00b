"""Large out-of-band buffers as shared memory between processes of one host (Linux).

On a Unix-socket link (a local worker, whose peer the kernel has checked with
``SO_PEERCRED``), a frame of at least :func:`min_bytes` that is an out-of-band buffer of pickle
protocol 5 does not go through the socket; the frame's length says so (:data:`FD_FRAME`, the
top bit). On by default; ``PYDIST_SHM=0`` turns it off for the sender (a reader on a Unix link
accepts shared memory either way). Two ways:

- **The link's pool** (``shmpool.py``, the usual way): one ``memcpy`` into a memfd that the
  sender has used before and the receiver still maps, so neither side pays for fresh pages;
  the receiver's user gets an ordinary writable numpy array over the shared pages, and the
  memfd is used again once that array is freed.
- **A fresh sealed memfd** (this module), for a buffer the pool cannot take (larger than
  ``shmpool.MAX_BUFFER``, or every slot of the pool still in use by the receiver): the sender
  copies it once into a new ``memfd`` (:func:`sealed_copy`), seals it (``F_SEAL_WRITE |
  F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``: nobody can change it any more) and passes its
  descriptor with the message (``SCM_RIGHTS``). The receiver checks the descriptor
  (:func:`map_frame`: a sealed ``memfd`` of the declared size, or the message is refused) and
  maps it privately: reads share the sender's pages, a write by the receiving user copies the
  page it touches (copy on write). The mapping is freed with the last object that uses it. A
  received sealed frame sent on unchanged goes as the same memfd (:func:`forwardable`).

Everything else takes the socket: another host (TCP), TLS, a link with frame tags, small
buffers, exact ``bytes`` (they are read straight into a ``bytes`` object anyway), a system
without ``memfd_create`` or sealing, ``PYDIST_SHM=0``.

Descriptors the receiver did not ask for are closed at once (:class:`FdInbox`); see
``docs/security.md``.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import stat
import sys
from typing import Any

from .errors import ProtocolError

__all__ = [
    "FD_FRAME",
    "MAX_FDS",
    "FdInbox",
    "ShmMapping",
    "ShmRefused",
    "close_all",
    "enabled",
    "forwardable",
    "map_frame",
    "min_bytes",
    "sealed_copy",
]

FD_FRAME = 1 << 63  # set in a frame's length: the frame is a descriptor, not bytes
MAX_FDS = 64  # descriptors in one message at most (the kernel's own cap is 253)
ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4) if hasattr(socket, "CMSG_SPACE") else 0
MAX_INBOX = 1024  # descriptors waiting for their message, at most
_DEFAULT_MIN = 1 << 20

try:
    import fcntl

    _ADD_SEALS: int = fcntl.F_ADD_SEALS  # type: ignore[attr-defined]
    _GET_SEALS: int = fcntl.F_GET_SEALS  # type: ignore[attr-defined]
    _SEALS_NEEDED: int = (
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW  # type: ignore[attr-defined]
    )
    _SEALS_ALL: int = _SEALS_NEEDED | fcntl.F_SEAL_SEAL  # type: ignore[attr-defined]
    _SUPPORTED = (
        sys.platform.startswith("linux")
        and hasattr(os, "memfd_create")
        and hasattr(socket, "SCM_RIGHTS")
        and hasattr(socket.socket, "recvmsg_into")
    )
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _SUPPORTED = False
    _ADD_SEALS = _GET_SEALS = _SEALS_NEEDED = _SEALS_ALL = 0

_MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels fault the pages in as they are read
_TRACKFD = sys.version_info >= (3, 13)  # mmap(trackfd=False): no duplicate descriptor kept


class ShmMapping(mmap.mmap):
    """A received shared-memory frame: a private mapping of a sealed memfd (see
    :func:`forwardable`)."""

    ino = -1  # the memfd's inode


stats = {"copied": 0, "forwarded": 0}  # buffers sent as shared memory, by how (for tests)


class ShmRefused(ProtocolError):
    """A message's shared-memory frame was refused (not a sealed memfd of the declared size,
    or missing). The message was read whole and the stream is intact: only this message fails.

    ``header`` is the message's frame 0, so that the receiver can answer the right caller.
    """

    def __init__(self, reason: str, header: Any = b"") -> None:
        super().__init__(f"shared-memory frame refused: {reason}")
        self.header = header


def supported() -> bool:
    """Whether this system can receive shared-memory frames (Linux, memfd, sealing)."""
    return _SUPPORTED


def enabled() -> bool:
    """Whether large buffers are sent as shared memory on local links: on by default,
    ``PYDIST_SHM=0`` turns it off (the socket then carries them). A reader accepts shared
    memory either way."""
    return _SUPPORTED and os.environ.get("PYDIST_SHM", "1").strip().lower() not in (
        "0",
        "no",
        "off",
        "false",
    )


def min_bytes() -> int:
    """The smallest buffer sent as shared memory (``PYDIST_SHM_MIN_BYTES``, default 1 MiB)."""
    raw = os.environ.get("PYDIST_SHM_MIN_BYTES")
    if raw:
        try:
            return max(4096, int(raw))
        except ValueError:
            pass
    return _DEFAULT_MIN


def sealed_copy(buf: Any) -> int:
    """A new sealed ``memfd`` holding a copy of ``buf`` (the caller closes it).

    Raises:
        OSError: no memfd could be made or filled (out of memory or descriptors): the caller
            sends the buffer through the socket instead.
    """
    view = memoryview(buf).cast("B")
    n = view.nbytes
    fd = os.memfd_create("pydist-shm", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, n)
        done = 0
        while done < n:
            done += os.pwrite(fd, view[done:], done)
        fcntl.fcntl(fd, _ADD_SEALS, _SEALS_ALL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def forwardable(buf: Any) -> int | None:
    """A new descriptor of the sealed memfd that ``buf`` reads, when ``buf`` is a whole
    received shared-memory frame that this process has not written to: then it is sent on
    without a copy (a worker returning or forwarding an array it received). None otherwise.

    "Not written to": none of the mapping's pages is a private copy (``/proc/self/pagemap``:
    every page present is still the memfd's). A write racing with this check leaves the
    receiver with the data as it was before it: the memfd itself never changes.
    """
    owner = getattr(buf, "obj", None)
    for _ in range(8):  # a numpy array's base chain, down to the mapping
        if owner is None or isinstance(owner, ShmMapping):
            break
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    if not isinstance(owner, ShmMapping):
        return None
    try:
        view = memoryview(buf).cast("B")
        if view.readonly or view.nbytes != len(owner):
            return None
        import ctypes

        start = ctypes.addressof(ctypes.c_char.from_buffer(view))
        if start != ctypes.addressof(ctypes.c_char.from_buffer(owner)):
            return None
        if _written(start, view.nbytes):
            return None
        return _reopen(owner.ino)
    except (OSError, ValueError, TypeError, BufferError, AttributeError):
        return None


def _reopen(ino: int) -> int | None:
    """A new descriptor of the memfd ``ino`` through the duplicate that Python's ``mmap``
    keeps (3.11/3.12); None when there is none (3.13's ``trackfd=False``)."""
    for name in os.listdir("/proc/self/fd"):
        path = f"/proc/self/fd/{name}"
        try:
            if os.readlink(path).startswith("/memfd:pydist-shm") and os.stat(path).st_ino == ino:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
    return None


def _written(start: int, size: int) -> bool:
    """Whether any page of ``[start, start + size)`` is a private (written) copy."""
    page = mmap.PAGESIZE
    first, last = start // page, (start + size - 1) // page
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, 8 * (last - first + 1), 8 * first)
    finally:
        os.close(fd)
    entries = array.array("Q")
    entries.frombytes(raw)
    if len(entries) != last - first + 1:
        return True
    present_or_swapped = (1 << 63) | (1 << 62)
    file_page = 1 << 61
    return any(e & present_or_swapped and not e & file_page for e in entries)


def _check(fd: int, size: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise ShmRefused(f"the descriptor cannot be inspected: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ShmRefused("the descriptor is not a memfd (not a regular file)")
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if not target.startswith("/memfd:"):
        raise ShmRefused(f"the descriptor is not a memfd ({target or 'unknown'})")
    try:
        seals = fcntl.fcntl(fd, _GET_SEALS)
    except OSError as e:
        raise ShmRefused(f"the memfd's seals cannot be read: {e}") from e
    if seals & _SEALS_NEEDED != _SEALS_NEEDED:
        raise ShmRefused(
            "the memfd is not sealed against writes and resizing "
            "(F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW)"
        )
    if st.st_size != size:
        raise ShmRefused(f"the memfd holds {st.st_size} bytes, the frame declares {size}")
    if st.st_blocks * 512 < size:
        # holes: mapping them would make this process commit memory that the sender never
        # filled (the socket path commits memory only as data arrives)
        raise ShmRefused("the memfd has holes (it was resized, not written)")


def map_frame(fd: int, size: int) -> ShmMapping:
    """Check that ``fd`` is a sealed memfd of ``size`` bytes and map it privately (reads share
    the sender's pages; writes copy). ``fd`` is closed in every case.

    Raises:
        ShmRefused: it is not one; nothing is mapped.
    """
    try:
        _check(fd, size)
        try:
            kw: dict[str, Any] = {"trackfd": False} if _TRACKFD else {}
            m = ShmMapping(
                fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, **kw
            )
        except (OSError, ValueError, OverflowError) as e:
            raise ShmRefused(f"the memfd cannot be mapped: {e}") from e
        m.ino = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    try:  # map the existing pages in one step rather than one fault at a time
        m.madvise(_MADV_POPULATE_READ, 0, size)
    except (OSError, ValueError):
        pass
    return m


def close_all(fds: Any) -> None:
    """Close every descriptor of ``fds``, ignoring the ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors carried by ``recvmsg``'s ancillary data (any other kind is ignored:
    the kernel makes nothing else to close on a Unix socket unless asked)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[: len(data) - len(data) % a.itemsize])
            fds.extend(a)
    return fds


class FdInbox:
    """Descriptors received on a Unix socket, waiting for the message they came with.

    A sender attaches a message's descriptors to its first byte, and the kernel hands them over
    with the ``recvmsg`` that reads that byte, ending that read at the end of their block of
    data: so descriptors that came with the read of stream bytes ``[start, end)`` belong to the
    message that starts at ``p`` only if ``start <= p < end <= p + stream length``. Everything
    else (descriptors on bytes of no message, more or fewer than a message declares, or
    arriving in the middle of a frame's data) is closed, never kept. At most
    :data:`MAX_INBOX` wait at once; more is a protocol error (the connection is dropped).
    """

    def __init__(self) -> None:
        self._batches: list[tuple[int, int, list[int]]] = []  # (start, end, fds)
        self.count = 0
        self.refused = 0  # descriptors closed unused (for tests and logs)

    def add(self, start: int, end: int, fds: list[int]) -> None:
        if self.count + len(fds) > MAX_INBOX:
            self.refused += len(fds)
            close_all(fds)
            self.close()
            raise ProtocolError(
                f"the peer sent more than {MAX_INBOX} file descriptors ahead of their messages"
            )
        self._batches.append((start, end, fds))
        self.count += len(fds)

    def drop(self, fds: list[int]) -> None:
        """Close descriptors that came where none can belong (inside a frame's data)."""
        self.refused += len(fds)
        close_all(fds)

    def take(self, p: int, length: int) -> list[int]:
        """The descriptors of the message at stream offset ``p`` of ``length`` stream bytes
        (possibly none); closes those that came before it and belong to nothing."""
        mine: list[int] = []
        keep: list[tuple[int, int, list[int]]] = []
        for batch in self._batches:
            start, end, fds = batch
            if end <= p:  # on bytes of earlier messages: nobody's
                self.refused += len(fds)
                close_all(fds)
            elif start <= p and end <= p + length and not mine:
                mine = fds
            else:
                keep.append(batch)
        self._batches = keep
        self.count = sum(len(b[2]) for b in keep)
        return mine

    def close(self) -> None:
        for _, _, fds in self._batches:
            close_all(fds)
        self._batches = []
        self.count = 0
