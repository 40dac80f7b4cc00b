"""A producer's streaming mode on a ``RemoteChannel``: ``with rc.stream() as s: s.put(x)``.

``rc.put(v)`` is a round trip: it returns once ``v`` is stored at the owner. A stream's
:meth:`~ChannelStream.put` returns once ``v`` is *accepted* by the stream, and the stream sends
values to the owner in batches, one batch in flight at a time, under a credit the owner grants::

    producer                                       owner (where)
    --------                                       -------------
    s = rc.stream()  -- CallFetch(stream_open) --> credit = the channel's size (1 .. 1024;
                     <------------- credit -----   1 for an unbuffered channel)
    s.put(v) x k     -- CallFetch(stream_put,  --> each value waits its turn for room, as a
       (buffered while     [v1 .. vk])             put does; answers once all are stored
        a batch flies) <------ (k, None) -------   (k, marker) if only k were: closed, gone

* **Credit.** A stream never has more values in flight (sent, not yet stored) than its credit,
  and the owner answers a batch only once every value of it is in the channel, so the credit
  comes back as room frees. The channel itself never holds more than its size; a batch
  waiting for room is the producer's, held by the owner's thread that stores it. While a batch
  flies, ``put`` buffers up to ``credit`` more values here, then blocks (backpressure).
* **Order.** Values of one stream are stored in the order of their ``put``. Values of
  different streams (and plain ``put``) interleave: every value waits its turn for room in the
  order the owner's threads asked for it, so no producer can starve another.
* **Unbuffered channels.** The credit is 1: a value is stored only when a taker takes it.
* **Errors** (the channel closed, the owner died, a value could not be pickled) are raised by
  the next ``put``, ``flush`` or ``close`` of the stream, and again by every later ``put`` and
  ``flush``. :attr:`ChannelStream.not_stored` then lists, in order, every value that the
  owner did not confirm storing: nothing is dropped silently. A value confirmed stored stays
  in the channel (a closed channel's values can still be taken).
* **Linger** (``rc.stream(linger=t)``, default 0): when nothing is in flight, a ``put`` sends
  its value at once; with ``linger`` it waits up to ``t`` seconds (on a pool thread) for more
  values to join the batch. Fewer, larger messages for a producer that puts now and then
  (each value may arrive ``t`` later); ``flush`` and ``close`` send at once.
* The answer of a batch fills an :class:`_Ack` on the thread that reads it; that thread never
  takes the stream's lock (it may be the one that a blocked send waits on) and hands the next
  send to a pool thread (``executor.submit``), so buffered values go out without a ``flush``.

On a channel that lives on this process a stream is the plain ``put`` (no batch, no credit).
Values are pickled when their batch is sent, not at ``put``: do not change a value after
putting it (``multiprocessing.Queue`` has the same rule).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import codec, refops, timeouts
from .peer import ResponseSlot

if TYPE_CHECKING:  # only a type here
    from types import TracebackType

__all__ = ["ChannelStream"]

T = TypeVar("T")


class _Ack(ResponseSlot):
    """The answer to one batch: set on the thread that reads it, which must not block."""

    __slots__ = ("stream",)

    def __init__(self, stream: ChannelStream[Any]) -> None:
        super().__init__()
        self.stream = stream

    def set(self, ok: bool, value: Any) -> None:
        super().set(ok, value)
        s = self.stream
        if s._buf and not s._kick_now():  # values wait for this answer: send them
            try:
                s._rc._cluster.executor.submit(s._kick, False)
            except Exception:  # shutting down: the next put, flush or close sends them
                pass


class ChannelStream(Generic[T]):
    """A streaming producer on a :class:`~pydistributed.RemoteChannel` (``rc.stream()``).

    Use it as a context manager (``close`` on exit) or call :meth:`close` yourself. Safe to
    share between threads; the order of values is the order in which ``put`` accepted them.

    Raises:
        TypeError: ``linger`` is not a number (a ``bool`` is not one).
        ValueError: ``linger`` is negative, infinite or NaN.
    """

    def __init__(self, rc: Any, linger: float = 0.0) -> None:
        if isinstance(linger, bool) or not isinstance(linger, (int, float)):
            raise TypeError(
                f"linger must be a number of seconds, not {type(linger).__name__} ({linger!r})"
            )
        if not 0 <= linger < math.inf:
            raise ValueError(f"linger must be a number of seconds >= 0, not {linger!r}")
        self._rc = rc
        self._linger = float(linger)
        self._lingering = False
        self._lock = threading.Lock()
        self._buf: list[Any] = []  # accepted, not yet sent
        self._inflight: list[Any] | None = None  # sent, not yet answered
        self._slot: _Ack | None = None
        self._error: BaseException | None = None
        self._reported = False
        self._closed = False
        self._not_stored: list[Any] = []
        c = rc._cluster
        self._local = rc.where == c.myid
        if self._local:
            self.credit = 0
        else:
            self.credit = int(
                refops.raise_marker(c.calls.call_fetch(rc.where, refops.stream_open, (rc._key,)))
            )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._error else "open"
        return f"ChannelStream({self._rc!r}, credit={self.credit}, {state})"

    @property
    def not_stored(self) -> list[Any]:
        """After an error: the values the owner did not confirm storing, in put order.

        For a closed channel none of them was stored; if the owner died, those of the batch in
        flight may or may not have been. Empty while the stream has not failed.
        """
        with self._lock:
            return list(self._not_stored)

    # -- the producer's side -----------------------------------------------------------------

    def put(self, value: T, timeout: float | None = None) -> None:
        """Accept ``value`` for the channel; returns before it is stored at the owner.

        Blocks while ``credit`` values are in flight and ``credit`` more wait here.

        Raises:
            ChannelClosedError: the channel is closed (this value or an earlier one found it
                so); see :attr:`not_stored`.
            ProcessExitedException: the owner has exited.
            TimeoutError: ``timeout`` seconds passed first; the value was not accepted.
            ValueError: the stream was closed.
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        if self._local:
            self._check_open()
            self._rc.put(value, timeout)
            return
        deadline = timeouts.deadline(timeout)
        with self._lock:
            self._check_open()
            self._settle()
            self._raise_error()
            while self._inflight is not None and len(self._buf) >= self.credit:
                self._wait_answer(deadline, timeout, "put")
                self._settle()
                self._raise_error()
            self._buf.append(value)
            if self._inflight is None:
                if self._linger and len(self._buf) < self.credit:
                    self._linger_then_send()
                else:
                    self._send()
            self._raise_error()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every value accepted so far is stored at the owner.

        Raises:
            ChannelClosedError, ProcessExitedException: as :meth:`put`.
            TimeoutError: ``timeout`` seconds passed first (the values are still on their way).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        if self._local:
            return
        deadline = timeouts.deadline(timeout)
        with self._lock:
            self._settle()
            self._raise_error()
            while self._inflight is not None or self._buf:
                if self._inflight is None:
                    self._send()
                    self._raise_error()
                    continue
                self._wait_answer(deadline, timeout, "flush")
                self._settle()
                self._raise_error()

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the stream (not the channel). Idempotent.

        Raises what :meth:`flush` raises, and an error of the stream that no call has raised
        yet; then the stream is closed all the same.
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        if self._closed:
            return
        again = self._reported  # raised by an earlier call already
        try:
            self.flush(timeout)
        except TimeoutError:
            raise
        except BaseException:
            self._closed = True
            if not again:
                raise
        else:
            self._closed = True

    def __enter__(self) -> ChannelStream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the block's exception wins; what was not stored is in not_stored
            self.close()
        except Exception:
            pass

    def __del__(self) -> None:
        try:
            if not self._local and not self._closed and self._error is None:
                left = len(self._buf) + len(self._inflight or ())
                if left:
                    warnings.warn(
                        f"{self!r} was not closed: {left} values may not reach the channel",
                        ResourceWarning,
                        stacklevel=1,
                    )
        except Exception:
            pass

    # -- internals (lock held unless said) ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("put on a closed ChannelStream")

    def _raise_error(self) -> None:
        err = self._error
        if err is not None:
            self._reported = True
            raise err

    def _wait_answer(self, deadline: float | None, timeout: float | None, op: str) -> None:
        slot = self._slot
        assert slot is not None
        remaining = timeouts.remaining(deadline)
        self._lock.release()
        try:
            answered = slot.wait(remaining)
        finally:
            self._lock.acquire()
        if not answered and not slot.is_set():
            raise TimeoutError(f"ChannelStream.{op} timed out after {timeouts.seconds(timeout)} s")

    def _settle(self) -> None:
        """Take in the answer of the batch in flight, if it has come (an error is kept)."""
        slot = self._slot
        if slot is not None and slot.is_set():
            batch = self._inflight or []
            self._slot = self._inflight = None
            if not slot.ok:  # the owner died (or the call could not run there)
                self._fail(slot.value, batch)
            else:
                n, marker = slot.value
                if marker is not None:
                    try:
                        refops.raise_marker(marker)
                    except BaseException as e:
                        self._fail(e, batch[n:])

    def _fail(self, error: BaseException, lost: list[Any]) -> None:
        if self._error is None:
            self._error = error
        self._not_stored += lost
        self._not_stored += self._buf
        self._buf = []

    def _send(self, wait: bool = True) -> bool:
        """Send up to ``credit`` buffered values as the batch in flight (none in flight).
        With ``wait`` False (a reading thread), False if another thread is writing to the
        owner now: nothing was sent, the values are buffered as before."""
        rc = self._rc
        c = rc._cluster
        batch, self._buf = self._buf[: self.credit], self._buf[self.credit :]
        slot = _Ack(self)
        self._inflight, self._slot = batch, slot
        try:
            rid = c.calls.call_fetch_nowait(
                rc.where, refops.stream_put, (rc._key, batch, c.myid), {}, slot, wait
            )
        except BaseException as e:  # unpicklable, or the owner is gone: nothing was sent
            self._inflight = self._slot = None
            self._fail(e, batch)
            return True
        if rid < 0:
            self._inflight = self._slot = None
            self._buf[:0] = batch
            return False
        return True

    def _linger_then_send(self) -> None:
        # Nothing in flight: let more values join this batch for ``linger`` seconds.
        if not self._lingering:
            self._lingering = True
            self._rc._cluster.executor.submit(self._lingered, False)

    def _lingered(self) -> None:
        time.sleep(self._linger)
        with self._lock:
            self._lingering = False
        self._kick()

    def _kick_now(self) -> bool:
        """On the thread that read an answer: send the next batch here if that cannot block
        on anything but the socket, as the owner's answers made at once are (``refops``):
        the stream's lock is free now, and the batch is of small values only, whose pickling
        runs no code of the user's and makes a small message. False: it was not sent (the
        lock is taken, or a value is not small): a pool thread does it (:meth:`_kick`)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._error is not None or not all(map(codec.small, self._buf[: self.credit])):
                return False
            self._settle()
            if self._inflight is None and self._buf and self._error is None:
                return self._send(wait=False)  # never waits for another writer
            return True
        finally:
            self._lock.release()

    def _kick(self) -> None:
        """On a pool thread, after an answer: send what waits (errors wait for the producer)."""
        with self._lock:
            self._settle()
            if self._inflight is None and self._buf and self._error is None:
                self._send()
