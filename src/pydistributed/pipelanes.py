"""The parts of the pipelined map engine (``pipeline.py``) that hold no I/O: a lane (one worker
taken from the pool and the elements in flight on it), the window rule, the markers of
elements that did not run, and which functions go by name."""

from __future__ import annotations

import math
import pickle
import time
from typing import Any

from . import codec
from .pipecalls import StreamSlot, new_stream_id

__all__ = ["MAX_WINDOW", "ByName", "Dropped", "Failure", "Lane", "next_window"]

MAX_WINDOW = 256  # elements in flight per worker, at most
BY_NAME_BYTES = 512  # a function pickled by name alone takes fewer bytes than this


class Dropped(Exception):
    """An element dropped before it ran, because the map stopped."""


class Lane:
    """One worker taken from the pool, and the elements in flight on it."""

    __slots__ = (
        "answered",
        "dead",
        "local",
        "next_seq",
        "peer",
        "pid",
        "sent",
        "since",
        "slot",
        "stopping",
        "stream",
        "t_item",
        "window",
    )

    def __init__(self, pid: int, window: int) -> None:
        self.pid = pid
        self.peer: Any = None
        self.slot: StreamSlot | None = None
        self.stream = new_stream_id()
        self.local = False
        self.next_seq = 0  # the number of the next element sent, and how many went
        self.answered = 0  # how many came back (counted by the reading thread)
        # seq -> (token, f, args, when sent, sent into an empty lane)
        self.sent: dict[int, tuple[Any, Any, tuple[Any, ...], float, bool]] = {}
        self.window = window
        self.since = time.monotonic()
        self.stopping = False  # sends nothing more; closes once its elements are back
        self.dead = False
        self.t_item = 0.0  # how long an element runs on the worker (a moving average)


class Failure:
    """An element that failed here, before it was sent (its arguments cannot be pickled)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def next_window(now: int, rtt: float, t_item: float) -> int:
    """The next window of a lane: enough elements to keep the worker busy over a round trip
    (twice over), one when an element takes 20 round trips or more; at most doubling."""
    ratio = 2 * rtt / max(t_item, 1e-7)
    want = 1 if ratio < 0.1 else min(MAX_WINDOW, 1 + math.ceil(ratio))
    return min(want, 2 * now)


class ByName:
    """Which functions pickle by name alone: as plain pickle does (cloudpickle sends a function
    of ``__main__`` or a closure by value), in few bytes. The answers of one map."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Any, bool]] = {}  # id(f) -> (f, by name)

    def check(self, f: Any) -> bool:
        known = self._known.get(id(f))
        if known is not None and known[0] is f:
            return known[1]
        try:
            data = codec.dumps(f)
            plain = len(data) <= BY_NAME_BYTES and data == pickle.dumps(f, 5)
        except Exception:
            plain = False
        self._known[id(f)] = (f, plain)
        return plain
