"""Reference identities: ``RRID(whence, id)`` and the counter that allocates them."""

from __future__ import annotations

import itertools
import threading
from typing import NamedTuple

__all__ = ["RRID", "IdCounter", "check_pid"]


class RRID(NamedTuple):
    """The identity of a remote reference.

    ``whence`` is the process that created the reference; ``id`` is unique among the
    references created there. Equal and hashable by ``(whence, id)``.
    """

    whence: int
    id: int

    def __repr__(self) -> str:
        return f"RRID({self.whence}, {self.id})"


class IdCounter:
    """A thread-safe source of increasing integers (``next()`` is atomic under the GIL)."""

    def __init__(self, start: int = 1) -> None:
        self._it = itertools.count(start)
        self._lock = threading.Lock()

    def next(self) -> int:
        # itertools.count.__next__ is atomic in CPython; the lock keeps free-threaded builds honest
        with self._lock:
            return next(self._it)


def check_pid(pid: object, what: str = "a process id") -> int:
    """``pid`` itself if it is an ``int`` (not a ``bool``): the one check of every process id
    a user gives.

    Raises:
        TypeError: it is not; the message names ``what`` was expected.
    """
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"expected {what} (an int), not {type(pid).__name__}")
    return pid
