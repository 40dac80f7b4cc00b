"""The pipelined map engine: several elements in flight per worker, their outcomes streamed back.

``pmap`` and ``imap`` (``pmap.py``) decide what an element is and what its failure means; this
module runs the elements on the workers of a pool::

    hub: the caller's thread                             a lane per worker taken from the pool
    ------------------------                             --------------------------------------
    take free workers from the pool, a lane each
    fill each lane's window: the elements to retry       MapCalls(stream, first, count, f, ...)
      first, then the input, read lazily; one message      --> run one after another, in order
      per lane and function                                    (pipecalls.SerialQueues)
    wait on the inbox, which the reading threads fill    <-- MapResults(stream, ...), several
      (they wake the hub when a window is half empty,        outcomes to a message
      an element failed, a lane is done; or always, for
      imap and a progress bar: see Pipeline.post)
    hand the outcomes to the caller, in completion order

A lane's *window* is how many of its elements may be in flight: it starts at 1 (2 or 4 for
batches) and then follows the ratio of the round trip to an element's time on the worker
(``pipelanes.next_window``): quick elements travel dozens to a message, slow ones one at a time.
Once the input is all sent, an idle lane takes back what another has not started
(:meth:`Pipeline._steal_for`).

A lane holds its worker for ``ROTATE`` seconds at most, then gives it back to the pool once its
elements are back (another map gets its turn); the hub takes more workers as the pool grows.

A worker that dies fails the elements in flight on it with ``ProcessExitedException`` (the
caller retries them, or not). A stop (:meth:`Pipeline.fail`) sends nothing more and drops the
elements that have not started (``MapCancel``); Ctrl-C (:meth:`Pipeline.interrupt`) also
interrupts the ones running, and waits a few seconds at most for them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .cluster import Cluster
from .errors import ProcessExitedException, RemoteException
from .funccache import FunctionCache
from .messages import MapCancel
from .pipecalls import DROPPED, StreamSlot
from .pipelanes import MAX_WINDOW, Dropped, Failure, Lane, next_window, victim
from .pipesend import Filling
from .remotecall import WorkerSource

__all__ = ["MAX_WINDOW", "Dropped", "Outcome", "Pipeline", "next_window"]

log = logging.getLogger("pydistributed.pmap")

ROTATE = 0.5  # seconds a lane holds its worker at most before giving it back
_FIRST_RTT = 300e-6  # the round trip assumed until one is measured (s)
_LOOK = 0.1  # how often the hub looks for more workers while it waits (s)
STEAL_AFTER = 0.02  # an idle lane takes elements back from one whose have been out this long
stats = {"given back": 0}  # MapCancel sent to take elements back (for tests)

Outcome = tuple[Any, Any, tuple[Any, ...], bool, Any]
"""``(token, f, args, ok, value)``: an element's outcome; ``value`` is the exception when not
``ok`` (a RemoteException, a ProcessExitedException, :class:`Dropped`)."""


class Pipeline(Filling):
    """One map's elements over the workers of ``pool``.

    Args:
        cluster: this process's cluster.
        pool: where workers come from (``take``/``put``).
        nworkers: how many workers the pool has now (asked every ``_LOOK`` seconds).
        cache: ships each function to each worker once.
        source: the elements, ``(token, f, args)``, read lazily.
        window: a new lane's window (the elements it sends before the first answer).
        eager: wake up for every outcome (a reader of imap, a progress bar), not only when a
            window is half empty, an element failed or a lane is done.
        sent_all: called with a worker's id once the map has sent it its last element (the
            input is used up, no retry is due): its copy of the function can go.
        by_name: the functions pickle by name alone (``pipelanes.pickles_by_name``): each
            goes as itself in each message, not through ``cache`` (nothing left to drop).
        length: how many elements ``source`` has, if known (a hint): the messages that carry
            the last ones are marked ``Last`` (no early answers for a refill).
    """

    def __init__(
        self,
        cluster: Cluster,
        pool: WorkerSource,
        nworkers: Callable[[], int],
        cache: FunctionCache,
        source: Iterator[tuple[Any, Any, tuple[Any, ...]]],
        window: int = 1,
        eager: bool = False,
        sent_all: Callable[[int], None] | None = None,
        by_name: bool = False,
        length: int | None = None,
    ) -> None:
        self.cluster = cluster
        self.first_window = window
        self.pool = pool
        self.nworkers = nworkers
        self.cache = cache
        self.source = source
        self.eager = eager
        self.sent_all = sent_all
        self.by_name = by_name
        self.length = length
        self._taken = 0  # elements read from source
        self._all_sent = False  # the last elements went out (as far as ``length`` tells)
        # outcomes, from the reading threads; the bell wakes the hub when it has work (see
        # post): a map that only collects its results sleeps while its windows are well filled
        self.inbox: deque[tuple[Any, ...]] = deque()
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.lanes: list[Lane] = []
        self.retries: deque[tuple[Any, Any, tuple[Any, ...]]] = deque()
        self._later: list[tuple[float, int, Any, Any, tuple[Any, ...]]] = []
        self._order = itertools.count()
        self.exhausted = False
        self.stopped = False
        self.error: BaseException | None = None
        self.rtt = _FIRST_RTT
        self._steal_at = 0.0  # when an idle lane may take elements back (see _steal_for)
        self._steal_due = 0.0  # before then, post does not wake the hub for a steal
        self._windows: dict[int, int] = {}  # a worker's last window, for its next lane
        self._target = max(1, nworkers())
        self._looked = time.monotonic()
        self._main = threading.current_thread() is threading.main_thread()

    # -- what the caller asks ----------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Nothing in flight, nothing to retry, and no input left (or the map stopped)."""
        if any(lane.sent for lane in self.lanes):
            return False
        if self.stopped:
            return True
        return self.exhausted and not self.retries and not self._later

    def retry(self, token: Any, f: Any, args: tuple[Any, ...], delay: float) -> None:
        """Run an element again after ``delay`` seconds, on whichever worker has room first."""
        if delay <= 0:
            self.retries.append((token, f, args))
        else:
            when = time.monotonic() + delay
            heapq.heappush(self._later, (when, next(self._order), token, f, args))

    def fail(self, error: BaseException) -> None:
        """Stop the map with ``error`` (the first one is kept): nothing more is sent, the
        elements not started are dropped; those running finish."""
        if self.error is None and not self.stopped:
            self.error = error
        self._stop()

    def step(self) -> list[Outcome]:
        """Send what the windows allow, wait for outcomes, return those that came (maybe
        none: the hub also wakes up to look for workers and retries that are due)."""
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            _, _, token, f, args = heapq.heappop(self._later)
            self.retries.append((token, f, args))
        if not self.stopped:
            self._take_workers(now)
            self._fill()
        out: list[Outcome] = []
        self._close_finished()
        if self.done:
            return out
        timeout = _LOOK
        if self._steal_at:
            timeout = max(0.0, min(timeout, self._steal_at - now))
            self._steal_at = 0.0
        if self._later:
            timeout = max(0.0, min(timeout, self._later[0][0] - now))
        due = self._steal_due = self._earliest_steal()
        if due > now:  # the hub looks then (post does not ring for a steal before)
            timeout = min(timeout, due - now)
        if not self.inbox:
            try:
                self._bell.get(timeout=timeout)
            except queue.Empty:
                pass
        self._take_inbox(out)
        self._close_finished()
        return out

    def _take_inbox(self, out: list[Outcome]) -> None:
        while True:
            try:
                self._bell.get_nowait()
            except queue.Empty:
                break
        inbox = self.inbox
        while inbox:
            self._handle(inbox.popleft(), out)

    def post(self, event: tuple[Any, ...]) -> None:
        """From a reading thread (must not block): an event for the hub, ``(lane, first,
        count, oks, values, seconds)`` (``first`` -1: the connection closed). The hub is woken
        when it has something to do: refill a window half empty, handle a failure, close a
        lane whose elements are all back, stop; or for every outcome when ``eager``. Once the
        last elements went out, a lane all back waits for the others (or the hub's next look):
        the hub would only compete with the reading of their outcomes for the GIL."""
        self.inbox.append(event)
        lane = event[0]
        lane.answered += event[2]
        if self.eager or self.stopped or event[1] < 0 or b"\0" in event[3] or DROPPED in event[3]:
            self._bell.put(None)
        elif lane.next_seq - lane.answered <= lane.window // 2:
            lanes = list(self.lanes)
            if not self._all_sent or all(o.next_seq == o.answered for o in lanes):
                self._bell.put(None)
            elif (
                lane.next_seq == lane.answered
                and time.monotonic() >= self._steal_due
                and any(o.next_seq - o.answered >= 2 for o in lanes)
            ):
                self._bell.put(None)  # idle while another has elements waiting: _steal_for

    def interrupt(self, grace: float) -> None:
        """Ctrl-C: drop the elements not started, interrupt those running (``interrupt`` of
        their workers), and wait ``grace`` seconds at most for them; a second Ctrl-C ends the
        wait at once."""
        self._stop()
        pids = [lane.pid for lane in self.lanes if lane.sent and not lane.local]
        if pids:
            self.cluster.lifecycle.interrupt(pids)
        self.drain(grace)

    def drain(self, grace: float) -> None:
        """Wait ``grace`` seconds at most for the elements in flight (their outcomes are
        dropped); a Ctrl-C ends the wait."""
        deadline = time.monotonic() + grace
        try:
            while any(lane.sent for lane in self.lanes):
                left = deadline - time.monotonic()
                if left <= 0:
                    n = sum(len(lane.sent) for lane in self.lanes)
                    log.warning("map: %d elements still out %g s after it stopped", n, grace)
                    return
                if not self.inbox:
                    try:
                        self._bell.get(timeout=min(left, _LOOK))
                    except queue.Empty:
                        continue
                self._take_inbox([])
        except KeyboardInterrupt:
            return

    def close(self) -> None:
        """Give every worker back to the pool (a stream with elements still out is forgotten)."""
        for lane in list(self.lanes):
            self._release(lane)

    # -- workers -----------------------------------------------------------------------------

    def _take_workers(self, now: float) -> None:
        if not self.retries and self.exhausted:
            return
        if now - self._looked >= _LOOK:
            self._looked = now
            try:
                self._target = max(1, self.nworkers())
            except Exception:
                pass
        while len(self.lanes) < self._target:
            if self.lanes:
                try:
                    pid = self.pool.take(0)
                except (TimeoutError, RuntimeError):
                    return
            else:
                try:
                    pid = self.pool.take(_LOOK)  # nothing in flight: wait for a worker
                except TimeoutError:
                    return
            self._open(pid)

    def _open(self, pid: int) -> None:
        lane = Lane(pid, self._windows.get(pid, self.first_window))
        if pid == self.cluster.myid:
            lane.local = True
            lane.window = 1
            self.lanes.append(lane)
            return
        try:
            peer = self.cluster.connections.get(pid)
        except ProcessExitedException:
            self.pool.put(pid)  # gone: the pool forgets it
            return
        except ValueError:
            self.pool.put(pid)
            reg = self.cluster.registry
            if reg.topology != "all_to_all" or reg.get(pid) is not None:
                # alive, but this process cannot call it (a worker's map over a pool of a
                # master_worker cluster): the map fails, as a call to it would; taken again
                # and again, it would spin for ever
                raise
            return  # a worker this one does not know yet (or any more)
        lane.peer = peer
        lane.slot = StreamSlot(self.post, lane)
        peer.pending[lane.stream] = lane.slot
        self.lanes.append(lane)
        if peer.closed and peer.pending.pop(lane.stream, None) is not None:
            lane.slot.set(False, ProcessExitedException(pid, peer.close_reason))

    def _release(self, lane: Lane) -> None:
        self.lanes.remove(lane)
        if lane.peer is not None:
            lane.peer.pending.pop(lane.stream, None)
        self._windows[lane.pid] = lane.window
        try:
            self.pool.put(lane.pid)
        except Exception:
            log.exception("map: giving worker %d back to its pool failed", lane.pid)

    def _close_finished(self) -> None:
        now = time.monotonic()
        for lane in list(self.lanes):
            if not lane.stopping:
                if self.exhausted and not self.retries and not self._later:
                    lane.stopping = True  # its last elements went out
                    if self.sent_all is not None and not lane.local and not self.stopped:
                        self.sent_all(lane.pid)
                elif now - lane.since >= ROTATE:
                    lane.stopping = True
            if lane.dead or (lane.stopping and not lane.sent):
                if not lane.dead and self._steal_for(lane):
                    continue  # keeps its worker for the elements it takes back
                self._release(lane)

    def _steal_for(self, thief: Lane) -> bool:
        """Once the input is all sent, an idle lane asks the busiest one's worker to give back
        the elements it has not started (``MapCancel``: they come back dropped, and go out
        again to whichever lanes have room), once they have been out ``STEAL_AFTER`` seconds
        (or four round trips: no churn at the end of a quick map). Whether ``thief`` waits."""
        if self.stopped or not self.exhausted or self.retries or self._later:
            return False
        if any(lane.steal_pending for lane in self.lanes):
            return True
        busy = victim(self.lanes, thief)
        if busy is None:
            return False
        due = self._due(busy)
        if time.monotonic() < due:
            self._steal_at = due  # the hub looks again then
            return True
        stats["given back"] += 1
        busy.steal_pending = True
        try:
            busy.peer.send(MapCancel(busy.stream))
        except Exception:  # its connection closed: its elements fail and are retried
            busy.steal_pending = False
            return False
        return True

    def _earliest_steal(self) -> float:
        """When an idle lane could take elements back at the earliest (see _steal_for), as far
        as the elements out now tell (inf: no lane has two or more out, or the input is not
        all sent)."""
        if not self.exhausted:
            return 0.0
        if self.stopped:
            return math.inf
        return min(
            (self._due(lane) for lane in self.lanes if len(lane.sent) >= 2), default=math.inf
        )

    def _due(self, lane: Lane) -> float:
        """When ``lane``'s elements may be taken back: its oldest out ``STEAL_AFTER`` seconds
        (four round trips if more)."""
        return next(iter(lane.sent.values()))[3] + max(STEAL_AFTER, 4 * self.rtt)

    def _stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.retries.clear()
        self._later.clear()
        for lane in self.lanes:
            lane.stopping = True
            if lane.sent and not lane.local and not lane.dead:
                try:
                    lane.peer.send(MapCancel(lane.stream))
                except Exception:
                    pass

    # -- outcomes ----------------------------------------------------------------------------

    def _handle(self, event: tuple[Any, ...], out: list[Outcome]) -> None:
        lane, first, count, oks, values, seconds = event
        if first < 0:  # the connection closed: everything in flight there failed
            lane.dead = True
            for token, f, args, _, _ in lane.sent.values():
                out.append((token, f, args, False, values))
            lane.sent.clear()
            return
        now = time.monotonic()
        sent = lane.sent
        pid = lane.pid
        lane.steal_pending = False
        back = 0  # elements given back (see _steal_for)
        for i in range(count):
            entry = sent.pop(first + i, None)
            if entry is None:
                continue
            token, f, args, when, alone = entry
            ok = oks[i]
            if ok == 1:
                out.append((token, f, args, True, values[i]))
            elif ok == DROPPED and not self.stopped:
                self.retries.append((token, f, args))
                back += 1
            elif ok == DROPPED:
                out.append((token, f, args, False, Dropped()))
            else:
                value = values[i]
                err = value.error if isinstance(value, Failure) else RemoteException(pid, value)
                out.append((token, f, args, False, err))
            if alone and first + i:  # (a lane's first element also carried the function)
                sample = now - when - seconds / count
                if sample > 0:
                    # down at once, up slowly: a slow spell of the machine is not a round trip
                    self.rtt = min(sample, 0.8 * self.rtt + 0.2 * sample)
        if back:
            for other in self.lanes:
                other.stopping = other.dead  # they take the elements given back
        elif count and not lane.local:
            t = seconds / count
            lane.t_item = t if not lane.t_item else 0.7 * lane.t_item + 0.3 * t
            lane.window = next_window(lane.window, self.rtt, lane.t_item)
