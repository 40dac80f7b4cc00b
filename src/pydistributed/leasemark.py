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
the owner never did; a consumer killed before its owner mapped the page leaves it behind, and
the next process of this user that makes a page removes it: :func:`sweep`). A file the owner
cannot open (the owner is on another host, or there is no ``/dev/shm``) means no mark: the
consumer then reports every value in a request of its own, one at a time, as with
``ahead=1``. No import above the standard library.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct

__all__ = ["MarkReader", "UsedMark", "sweep"]

_DIR = "/dev/shm"
_Q = struct.Struct("<q")


class UsedMark:
    """The consumer's side: ``set(n)`` before returning value ``n``; ``close()`` at the end."""

    __slots__ = ("_mm", "path")

    def __init__(self) -> None:
        """Raises ``OSError`` if the page cannot be made (then there is no mark)."""
        global _swept
        if not _swept:
            _swept = True
            sweep()
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


_swept = False  # this process has looked for pages left behind (sweep)


def sweep() -> list[str]:
    """Remove the pages of consumers that died before their owner mapped (and unlinked) them:
    ``pydist-lease-PID-*`` files of this user whose process is gone. A page whose process
    number is in use again is left alone. The paths removed."""
    removed: list[str] = []
    try:
        names = os.listdir(_DIR)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        parts = name.split("-")
        if len(parts) != 4 or not name.startswith("pydist-lease-") or not parts[2].isdigit():
            continue
        path = os.path.join(_DIR, name)
        try:
            if os.lstat(path).st_uid != uid:
                continue
            os.kill(int(parts[2]), 0)  # still there (or its number is in use again)
        except ProcessLookupError:
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
        except OSError:
            continue
    return removed


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
