"""The channel interface, :class:`AbstractChannel`, and what every channel shares: the check
of a size and the one wait on a condition with a deadline.

``channels.py`` builds the local :class:`~pydistributed.channels.Channel` on it; a channel of the
user's own (``RemoteChannel(f, pid)``) subclasses :class:`AbstractChannel`. No I/O.
"""

from __future__ import annotations

import abc
import math
import operator
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ChannelClosedError
from .timeouts import seconds

__all__ = ["AbstractChannel", "check_size", "take_until_closed", "wait_on"]

T = TypeVar("T")


class AbstractChannel(abc.ABC, Generic[T]):
    """The channel methods, as a base class for channel types of your own.

    ``RemoteChannel(f, pid)`` accepts anything that implements these methods. A subclass
    implements the abstract methods and inherits iteration, which calls :meth:`take` until it
    raises :class:`~pydistributed.errors.ChannelClosedError`.
    """

    @abc.abstractmethod
    def put(self, value: T, timeout: float | None = None) -> Any:
        """Add ``value`` to the channel.

        Blocks while the channel cannot accept the value (full, or unbuffered with no taker).
        The return value is unspecified; :class:`Channel` returns ``value`` (as Julia's
        ``put!`` on a ``Channel``).

        Raises:
            ChannelClosedError: the channel is closed (also if it closes while blocked).
            TimeoutError: ``timeout`` seconds passed first; the value was not added.
        """

    @abc.abstractmethod
    def take(self, timeout: float | None = None) -> T:
        """Remove and return the first value.

        Blocks until a value is available.

        Raises:
            ChannelClosedError: the channel is closed and empty (also if it becomes so while
                blocked). Iteration relies on this.
            TimeoutError: ``timeout`` seconds passed first.
        """

    @abc.abstractmethod
    def fetch(self, timeout: float | None = None) -> T:
        """Return the first value without removing it.

        Blocks until a value is available.

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first.
        """

    @abc.abstractmethod
    def isready(self) -> bool:
        """Whether a value can be taken now, without blocking. Never blocks."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> None:
        """Block until a value is available, without taking it.

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the channel: further ``put`` raises. Idempotent; wakes every blocked caller."""

    @abc.abstractmethod
    def isopen(self) -> bool:
        """Whether the channel is still open. Never blocks."""

    def __iter__(self) -> Iterator[T]:
        """Take values until the channel is closed and empty, then stop.

        Each step blocks in :meth:`take` (without timeout) while the channel is open and empty.
        """
        return take_until_closed(self.take)


def take_until_closed(take: Callable[[], T]) -> Iterator[T]:
    """``take()`` again and again, until it raises ChannelClosedError (closed and empty): the
    iteration of every kind of channel and consumer."""
    while True:
        try:
            value = take()
        except ChannelClosedError:
            return
        yield value


def check_size(size: Any) -> int | float:
    """Return ``size`` as an ``int`` or ``math.inf``; raise ``ValueError`` for anything else."""
    if isinstance(size, bool):
        raise ValueError(f"Channel size must be a non-negative int or math.inf, not {size!r}")
    if isinstance(size, float) and size == math.inf:
        return math.inf
    try:
        n = operator.index(size)
    except TypeError:
        raise ValueError(
            f"Channel size must be a non-negative int or math.inf, not {size!r}"
        ) from None
    if n < 0:
        raise ValueError(f"Channel size must be a non-negative int or math.inf, not {size!r}")
    return n


def wait_on(
    cond: threading.Condition, deadline: float | None, op: str, timeout: float | None
) -> None:
    """Wait on ``cond`` (held) once; raise ``TimeoutError`` if ``deadline`` has passed.

    Callers loop, re-checking their condition after every wakeup *before* calling this
    again, so a wakeup that races with the deadline is never wasted.
    """
    if deadline is None:
        cond.wait()
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"Channel.{op} timed out after {seconds(timeout)} s")
    cond.wait(min(remaining, threading.TIMEOUT_MAX))
