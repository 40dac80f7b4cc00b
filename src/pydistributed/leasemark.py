"""A consumer's *used mark*: the number of the last value its ``take`` returned, written into
a page of shared memory that the channel's owner reads (``channelconsumer.py``, ``refstore``).

A consumer that keeps several values ahead hands them out without a message per value. For
the owner to give back exactly the values that were never returned when the consumer's
process dies (SIGKILL included), the consumer writes the number of each value into this page
before ``take`` returns it: memory shared with the owner, so it costs no system call and
wakes nobody, and what was written survives the process. The owner maps the page at the
consumer's first request and reads it only when the consumer's process has exited.

The page is a file under ``/dev/shm`` made by the consumer with a random name (mode 0600);
the owner maps it and unlinks it at once (the consumer unlinks it too when it closes, in case
the owner never did). A file the owner cannot open (the owner is on another host, or there is
no ``/dev/shm``) means no mark: the consumer then reports every value in a request of its
own, one at a time, as with ``ahead=1``. No import above the standard library.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct

__all__ = ["MarkReader", "UsedMark"]

_DIR = "/dev/shm"
_Q = struct.Struct("<q")


class UsedMark:
    """The consumer's side: ``set(n)`` before returning value ``n``; ``close()`` at the end."""

    __slots__ = ("_mm", "path")

    def __init__(self) -> None:
        """Raises ``OSError`` if the page cannot be made (then there is no mark)."""
        self.path = os.path.join(_DIR, f"pydist-lease-{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, _Q.size)
            self._mm = mmap.mmap(fd, _Q.size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)

    def set(self, n: int) -> None:
        _Q.pack_into(self._mm, 0, n)

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass  # the owner did it
        try:
            self._mm.close()
        except (OSError, ValueError, BufferError):
            pass


class MarkReader:
    """The owner's side: the consumer's page, mapped and unlinked; ``get()`` reads it."""

    __slots__ = ("_mm",)

    def __init__(self, path: str) -> None:
        """Raises ``OSError`` (``FileNotFoundError`` on another host) or ``ValueError`` (not
        a mark's name)."""
        name = os.path.basename(path)
        if os.path.dirname(path) != _DIR or not name.startswith("pydist-lease-"):
            raise ValueError(f"not a consumer's mark: {path!r}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            if os.fstat(fd).st_size < _Q.size:
                raise ValueError(f"not a consumer's mark: {path!r}")
            self._mm = mmap.mmap(fd, _Q.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass

    def get(self) -> int:
        return int(_Q.unpack_from(self._mm, 0)[0])

    def close(self) -> None:
        try:
            self._mm.close()
        except (OSError, ValueError, BufferError):
            pass
