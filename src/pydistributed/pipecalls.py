"""Pipelined calls: the elements of a pipelined map run one after another on a worker, and their
outcomes go back several to a message. Both ends of the wire live here; the map itself (which
elements go where, windows, errors) is ``pipeline.py``'s.

::

    caller (pipeline.py)                          worker (this module, SerialQueues)
    --------------------                          ----------------------------------
    MapCalls(stream, first, count, f, items) ---> reader thread: append the elements to the
                                                  queue of (connection, stream); start its
                                                  runner unless it runs already
                                                  runner, on the executor (the main thread if
                                                  free, so interrupt reaches it): one element
                                                  at a time, in arrival order, never two at once
    StreamSlot.deliver, on the reader     <------ MapResults(stream, first, count, ...): the
    thread (the slot is registered in             outcomes held, sent when FLUSH_COUNT are
    Peer.pending under the stream id, so          held, when no more are queued than held (so
    that a closed connection reaches it)          the caller refills before the queue runs
                                                  dry), or when holding them longer would keep
                                                  the oldest past FLUSH_AGE
    MapCancel(stream)                       ----> the runner answers the elements not started
                                                  as dropped, in order

The caller numbers the elements of a stream ``0, 1, 2...`` and the worker runs them in that
order, so the outcomes come back in runs of consecutive numbers (``first``, ``count``). A
``MapCalls`` whose function comes wrapped in :class:`Last` says that the caller has no more
elements for the stream: its outcomes then go back when none is queued (or by FLUSH_COUNT and
FLUSH_AGE), not early for a refill, which saves a map that sent everything at once a message
or two per worker. A stream's queue on the worker lives while it holds elements; a message
that finds none makes a new one. A runner that has run for ``SLICE`` seconds goes to the back
of the executor's queue, so that a call waiting for the main thread is not held up by a long
map.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from . import codec
from .errors import CapturedException, ProcessExitedException, capture
from .execution import Executor
from .messages import MapCalls, MapResults
from .peer import Peer, ResponseSlot, describe_unpicklable

__all__ = [
    "DROPPED",
    "FLUSH_AGE",
    "FLUSH_COUNT",
    "Last",
    "SerialQueues",
    "StreamSlot",
    "new_stream_id",
]

log = logging.getLogger("pydistributed")

FLUSH_COUNT = 64  # outcomes held at most before they are sent...
FLUSH_AGE = 0.001  # ...and how long the oldest may wait (s) for others to share its message
SLICE = 0.02  # a runner gives its thread back to the executor's queue after this long (s)
DROPPED = 2  # MapResults.oks: an element dropped by MapCancel (1: a value, 0: an error)

_streams = itertools.count(1)


def new_stream_id() -> int:
    """A stream id of this process: negative, so that it never meets a response id in
    ``Peer.pending``."""
    return -next(_streams)


Execute = Callable[[Any, tuple[Any, ...], dict[str, Any]], tuple[bool, Any]]


class Last:
    """In place of a ``MapCalls``'s function: the caller has no more elements for the stream
    (as far as it knows), so its outcomes need not go back early for it to send more."""

    __slots__ = ("f",)

    def __init__(self, f: Any) -> None:
        self.f = f

    def __reduce__(self) -> tuple[Any, ...]:
        return (Last, (self.f,))

    @property
    def _pydist_internal(self) -> bool:
        return bool(getattr(self.f, "_pydist_internal", False))


class _Queue:
    """The elements of one stream from one connection, waiting to run."""

    __slots__ = ("cancelled", "items", "last", "main_ok", "peer", "running", "stream")

    def __init__(self, peer: Peer, stream: int, main_ok: bool) -> None:
        self.peer = peer
        self.stream = stream
        self.items: collections.deque[tuple[int, Any, Any]] = collections.deque()  # seq, f, args
        self.running = False
        self.cancelled = False
        self.last = False  # the elements queued are the last ones the caller means to send
        self.main_ok = main_ok


class SerialQueues:
    """The worker's side: each stream's elements, run one after another by one runner.

    Args:
        executor: where runners run.
        execute: runs one call, ``(ok, value or CapturedException)`` (``Dispatcher.execute``).
    """

    def __init__(self, executor: Executor, execute: Execute) -> None:
        self.executor = executor
        self.execute = execute
        self._lock = threading.Lock()
        self._queues: dict[tuple[Peer, int], _Queue] = {}

    # -- on the reading thread ---------------------------------------------------------------

    def on_calls(self, peer: Peer, msg: MapCalls, main_ok: bool) -> None:
        f = msg.f
        last = type(f) is Last
        if last:
            f = f.f
        items = [(seq, f, args) for seq, args in enumerate(msg.items, msg.first)]
        self._append(peer, msg.stream, items, main_ok, last)

    def on_undecodable(self, peer: Peer, stream: int, first: int, count: int, err: Any) -> None:
        """A ``MapCalls`` whose body cannot be unpickled: each of its elements fails with
        ``err`` (a CapturedException), in its turn."""
        items = [(seq, None, err) for seq in range(first, first + max(0, count))]
        self._append(peer, stream, items, False)

    def _append(
        self,
        peer: Peer,
        stream: int,
        items: list[tuple[int, Any, Any]],
        main_ok: bool,
        last: bool = False,
    ) -> None:
        key = (peer, stream)
        with self._lock:
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = _Queue(peer, stream, main_ok)
            q.items.extend(items)
            q.last = last
            if q.running:
                return
            q.running = True
        self.executor.submit(functools.partial(self._run, q), q.main_ok)

    def cancel(self, peer: Peer, stream: int) -> None:
        """``MapCancel``: the elements of ``stream`` not started are answered as dropped."""
        with self._lock:
            q = self._queues.get((peer, stream))
            if q is not None:
                q.cancelled = True

    # -- the runner --------------------------------------------------------------------------

    def _run(self, q: _Queue) -> None:
        execute = self.execute
        lock = self._lock
        items = q.items
        clock = time.perf_counter
        began = clock()
        oks = bytearray()
        values: list[Any] = []
        first = 0
        oldest = 0.0  # when the oldest outcome held was made
        busy = 0.0
        while True:
            with lock:
                if q.cancelled:
                    q.cancelled = False
                    dropped = [seq for seq, _, _ in items]
                    items.clear()
                else:
                    dropped = []
                if dropped or not items:
                    if not oks and not dropped:
                        q.running = False
                        if self._queues.get((q.peer, q.stream)) is q:
                            del self._queues[(q.peer, q.stream)]
                        return
                    pending = False
                elif oks and items[0][0] != first + len(oks):
                    pending = False  # not the next number: send what is held first
                else:
                    seq, f, args = items.popleft()
                    pending = True
            if not pending:
                if oks and not self._flush(q, first, oks, values, busy):
                    return
                if dropped and not self._send_dropped(q, dropped):
                    return
                oks = bytearray()
                values = []
                busy = 0.0
                if clock() - began >= SLICE:
                    # back of the executor's queue: a call waiting for this thread goes first
                    self.executor.submit(functools.partial(self._run, q), q.main_ok)
                    return
                continue
            if not oks:
                first = seq
            t0 = clock()
            if f is None:
                ok, value = False, args
            else:
                ok, value = execute(f, args, {})
            t1 = clock()
            busy += t1 - t0
            if not oks:
                oldest = t1
            oks.append(ok)
            values.append(codec.oob(value) if ok else value)
            if (
                len(oks) >= FLUSH_COUNT
                or (len(items) <= len(oks) and not q.last)
                or t1 - oldest + (t1 - t0) >= FLUSH_AGE
            ):
                if not self._flush(q, first, oks, values, busy):
                    return
                oks = bytearray()
                values = []
                busy = 0.0
                if t1 - began >= SLICE:
                    self.executor.submit(functools.partial(self._run, q), q.main_ok)
                    return

    def _flush(self, q: _Queue, first: int, oks: bytearray, values: list[Any], busy: float) -> bool:
        """Send the outcomes held; False when the connection is gone (the queue is dropped)."""
        peer = q.peer
        try:
            peer.send(MapResults(q.stream, first, len(oks), bytes(oks), values, busy))
            return True
        except ProcessExitedException:
            pass
        except Exception:
            # a value that cannot be pickled: send them one by one, that one as its error
            try:
                for i, (ok, value) in enumerate(zip(oks, values, strict=True)):
                    self._send_one(peer, q.stream, first + i, ok, value)
                return True
            except ProcessExitedException:
                pass
        with self._lock:  # nobody to answer: forget the stream
            q.items.clear()
            q.running = False
            if self._queues.get((q.peer, q.stream)) is q:
                del self._queues[(q.peer, q.stream)]
        return False

    def _send_dropped(self, q: _Queue, seqs: list[int]) -> bool:
        """Answer the elements ``seqs`` as dropped, a message per run of numbers."""
        i = 0
        while i < len(seqs):
            j = i + 1
            while j < len(seqs) and seqs[j] == seqs[j - 1] + 1:
                j += 1
            n = j - i
            if not self._flush(q, seqs[i], bytearray([DROPPED] * n), [None] * n, 0.0):
                return False
            i = j
        return True

    @staticmethod
    def _send_one(peer: Peer, stream: int, seq: int, ok: int, value: Any) -> None:
        try:
            peer.send(MapResults(stream, seq, 1, bytes([ok]), [value], 0.0))
            return
        except ProcessExitedException:
            raise
        except Exception as e:
            what = "the return value" if ok else "the exception"
            err = pickle.PicklingError(describe_unpicklable(what, {what: value}, e))
        peer.send(MapResults(stream, seq, 1, b"\0", [capture(err)], 0.0))


class StreamSlot(ResponseSlot):
    """The caller's side of a stream, registered in ``Peer.pending`` under its id: outcomes
    go to ``post`` as ``(lane, first, count, oks, values, seconds)``, on the reading thread
    (``post`` must not block); the connection closing posts ``(lane, -1, 0, b"", exc, 0.0)``.
    """

    __slots__ = ("lane", "post")

    def __init__(self, post: Callable[[tuple[Any, ...]], None], lane: Any) -> None:
        super().__init__()
        self.post = post
        self.lane = lane

    def deliver(self, msg: MapResults) -> None:
        self.post((self.lane, msg.first, msg.count, msg.oks, msg.values, msg.seconds))

    def undecodable(self, first: int, count: int, err: CapturedException) -> None:
        """Outcomes that arrived but cannot be unpickled here: each fails with ``err``."""
        self.post((self.lane, first, count, b"\0" * count, [err] * count, 0.0))

    def set(self, ok: bool, value: Any) -> None:
        """The connection closed (``Peer.close``): ``value`` is the ProcessExitedException."""
        self.post((self.lane, -1, 0, b"", value, 0.0))
