"""The parts of the pipelined map engine (``pipeline.py``) that hold no I/O: a lane (one worker
taken from the pool and the elements in flight on it), the window rule, the markers of
elements that did not run, and which functions go by name."""

from __future__ import annotations

import math
import pickle
import sys
import time
import types
from typing import Any

from . import codec
from .pipecalls import StreamSlot, new_stream_id

__all__ = [
    "MAX_WINDOW",
    "Dropped",
    "Failure",
    "Lane",
    "next_window",
    "pickles_by_name",
    "victim",
]

MAX_WINDOW = 256  # elements in flight per worker, at most
BY_NAME_BYTES = 512  # a builtin pickled by name takes fewer bytes than this


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
        "steal_pending",
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
        self.steal_pending = False  # asked to give back its elements not started (MapCancel)
        self.t_item = 0.0  # how long an element runs on the worker (a moving average)


class Failure:
    """An element that failed here, before it was sent (its arguments cannot be pickled)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def victim(lanes: list[Lane], thief: Lane) -> Lane | None:
    """The lane to take elements back from for ``thief``, which has none in flight once the
    input is all sent: the one with the most in flight, if two or more (one runs on its
    worker, the others wait there behind it), not one asked already. Without this, batches
    dealt out ahead (``batch_size="auto"`` sends them all at once) would stay on a worker
    whose share turned out slow while another worker idles."""
    best = None
    for lane in lanes:
        if lane is thief or lane.local or lane.dead or lane.steal_pending:
            continue
        if len(lane.sent) >= 2 and (best is None or len(lane.sent) > len(best.sent)):
            best = lane
    return best


def next_window(now: int, rtt: float, t_item: float) -> int:
    """The next window of a lane: enough elements to keep the worker busy over a round trip
    (twice over), one when an element takes 20 round trips or more; at most doubling."""
    ratio = 2 * rtt / max(t_item, 1e-7)
    want = 1 if ratio < 0.1 else min(MAX_WINDOW, 1 + math.ceil(ratio))
    return min(want, 2 * now)


def pickles_by_name(f: Any) -> bool:
    """Whether ``f`` pickles by name alone, in a few bytes: a function that cloudpickle sends
    by reference (of an importable module other than ``__main__``), or a builtin. Asked
    without pickling ``f`` (a closure may hold much)."""
    if type(f) is types.FunctionType:
        try:
            if "cloudpickle" not in sys.modules:  # nothing registered by value: its rule
                return codec._by_reference(f)
            from cloudpickle.cloudpickle import _should_pickle_by_reference

            return bool(_should_pickle_by_reference(f))
        except Exception:  # another cloudpickle layout, or a function that refuses
            return False
    if type(f) is types.BuiltinFunctionType:
        try:
            return len(pickle.dumps(f, 5)) <= BY_NAME_BYTES
        except Exception:
            return False
    return False
