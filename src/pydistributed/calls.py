"""Outgoing calls: send a request, wait for its answer, on the caller's own thread.

How ``remotecall_fetch(f, 2, x)`` travels (the master calling worker 2)::

    caller thread (master)                   worker 2
    ----------------------                   --------
    Calls.call_fetch
      request: encode CallFetch(rid, f, x),
      write it under the send lock  -------> its reader thread decodes it (dispatch.py) and
                                             submits it to the executor (execution.py):
                                             the main thread if free, else a pool thread
      wait_answer: take the connection's     runs f(x), encodes Result(rid, value),
      reading role and read until the        writes it from that same thread
      answer to rid is in  <---------------
      (dispatch fills the slot of rid;
       no hand-off to another thread)
    return the value, or raise RemoteException(2, ...)

A caller that finds the reading role held by another caller waits on its slot instead; the
holder fills it (``peer.py``). A call to this process itself runs the function through the same
``Dispatcher`` methods, without a message, and passes the objects themselves (no copy).

Ctrl-C while waiting: the request is abandoned here and the call is interrupted on the other
side (an ``Interrupt`` message); a message being read when the signal lands is read to its end
first (SIGINT is held meanwhile, ``execution.hold_sigint``).
"""

from __future__ import annotations

import pickle
import threading
from _thread import get_ident
from collections.abc import Callable
from typing import Any

from . import codec
from .connections import Connections
from .dispatch import Dispatcher
from .errors import ProcessExitedException, RemoteException
from .execution import Executor, hold_sigint, release_sigint
from .ids import RRID, IdCounter
from .messages import Call, CallFetch, CallWait, Interrupt, Message, RemoteDo
from .peer import Peer, ResponseSlot, describe_unpicklable
from .registry import Registry
from .timeouts import seconds

__all__ = ["Calls"]

_UNPICKLABLE = (pickle.PicklingError, TypeError, AttributeError)
_HOLD_SIGINT = (hold_sigint, release_sigint)
_MAIN = threading.main_thread().ident


def _hold_on_main() -> Any:
    """On the main thread: hold SIGINT from before a request is sent until
    :meth:`Calls.wait_answer` is ready to handle it (a Ctrl-C in between would leave a request
    running that nobody waits for, nor interrupts). Two system calls."""
    return hold_sigint() if get_ident() == _MAIN else None


def _never(value: Any) -> bool:
    return False


def _release(held: Any) -> None:
    if held is not None:
        release_sigint(held)


CTRL_C_GRACE = 1.0  # seconds a Ctrl-C waits for the interrupted remote call to answer


def _oob_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Let large ``bytes`` arguments travel out of band (see ``codec.oob``)."""
    for a in args:
        if type(a) is bytes:
            args = tuple(codec.oob(x) for x in args)
            break
    if kwargs:
        kwargs = {k: codec.oob(v) for k, v in kwargs.items()}
    return args, kwargs


def _unpicklable(
    f: Any, args: tuple[Any, ...], kwargs: dict[str, Any], e: BaseException
) -> pickle.PicklingError:
    values: dict[str, Any] = {"the function": f}
    values.update({f"argument {i + 1}": a for i, a in enumerate(args)})
    values.update({f"keyword argument {k!r}": v for k, v in kwargs.items()})
    return pickle.PicklingError(describe_unpicklable("cannot send the call", values, e))


class Calls:
    """The four call forms, and the request/answer machinery under them.

    Raises (each call form):
        pickle.PicklingError: ``f`` or an argument could not be pickled; nothing was sent.
        ProcessExitedException: the process has exited, or exits before answering.
        ValueError: there is no such process.
    """

    def __init__(
        self,
        registry: Registry,
        connections: Connections,
        dispatch: Dispatcher,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.connections = connections
        self.dispatch = dispatch
        self.executor = executor
        self._rids = IdCounter()
        self._main = threading.main_thread().ident

    # -- the call forms --------------------------------------------------------------------

    def call_fetch(
        self,
        pid: int,
        f: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``f`` on ``pid`` and return its value (raise its error as RemoteException).

        Raises:
            RemoteException: ``f`` raised there.
            TimeoutError: no answer within ``timeout`` seconds (the call may still run).
        """
        kwargs = kwargs or {}
        if pid == self.registry.myid:
            ok, value = self.dispatch.execute(f, args, kwargs)
            if ok:
                return value
            raise RemoteException(pid, value)
        args, kwargs = _oob_args(args, kwargs)
        # (request_on and _send_call, written out: this is the path of every small call)
        held = hold_sigint() if get_ident() == self._main else None  # see _hold_on_main
        try:
            peer = self.connections.get(pid)
            rid = self._rids.next()
            slot = ResponseSlot()
            peer.pending[rid] = slot
            try:
                peer.send(CallFetch(rid, f, args, kwargs))
            except BaseException:
                peer.pending.pop(rid, None)
                raise
        except BaseException as e:
            _release(held)
            if isinstance(e, _UNPICKLABLE):
                raise _unpicklable(f, args, kwargs, e) from e
            raise
        if peer.closed and peer.pending.pop(rid, None) is not None:
            # closed between our check and our registration: nobody else will wake us
            slot.set(False, ProcessExitedException(peer.pid or 0, peer.close_reason))
        cancel_with = getattr(f, "cancel_with", None)
        return self.wait_answer(peer, rid, slot, timeout, cancel_with, held, f)

    def call_fetch_nowait(
        self,
        pid: int,
        f: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        slot: ResponseSlot,
        wait: bool = True,
    ) -> int:
        """Send ``remotecall_fetch``'s request and return its response id at once: the answer
        fills ``slot`` (``slot.set`` runs on the thread that reads it, and must not block).
        For a process other than this one (the caller runs a call to itself its own way).
        With ``wait`` False (a reading thread), nothing is sent and -1 returned if another
        thread is writing to that process now (``Peer.send_frames``).

        Raises:
            pickle.PicklingError: ``f`` or an argument could not be pickled; nothing was sent.
            ProcessExitedException: the process has exited.
        """
        args, kwargs = _oob_args(args, kwargs)
        # (request_on, written out: a consumer's take ahead comes this way, once per value)
        peer = self.connections.get(pid)
        rid = self._rids.next()
        peer.pending[rid] = slot
        try:
            if not peer.send(CallFetch(rid, f, args, kwargs), wait):
                peer.pending.pop(rid, None)
                return -1
        except BaseException as e:
            peer.pending.pop(rid, None)
            if isinstance(e, _UNPICKLABLE):
                raise _unpicklable(f, args, kwargs, e) from e
            raise
        if peer.closed and peer.pending.pop(rid, None) is not None:
            # closed between our check and our registration: nobody else will wake us
            slot.set(False, ProcessExitedException(peer.pid or 0, peer.close_reason))
        return rid

    def call(
        self, pid: int, rrid: RRID, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Start ``f`` on ``pid``, its result to be stored under ``rrid`` there.

        Returns the local storage when ``pid`` is this process, else None.
        """
        if pid == self.registry.myid:
            return self.dispatch.start_call(rrid, pid, f, args, kwargs, main_ok=False)
        args, kwargs = _oob_args(args, kwargs)
        try:
            self.connections.get(pid).send(Call(rrid.whence, rrid.id, f, args, kwargs))
        except _UNPICKLABLE as e:
            raise _unpicklable(f, args, kwargs, e) from e
        return None

    def call_wait(
        self, pid: int, rrid: RRID, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``f`` on ``pid``, store its result under ``rrid`` there, return when done.

        Returns the local storage when ``pid`` is this process, else None.

        Raises:
            RemoteException: ``f`` raised (its failure is stored under ``rrid`` too).
        """
        if pid == self.registry.myid:
            slot = self.dispatch.refs.add(rrid, pid)
            ok, value = self.dispatch.call_into(slot, f, args, kwargs)
            if not ok:
                raise RemoteException(pid, value)
            return slot
        args, kwargs = _oob_args(args, kwargs)
        held = _hold_on_main()
        peer, rid, rslot = self._send_call(
            pid,
            f,
            args,
            kwargs,
            held,
            lambda rid: CallWait(rid, rrid.whence, rrid.id, f, args, kwargs),
        )
        self.wait_answer(peer, rid, rslot, held=held)
        return None

    def _send_call(
        self,
        pid: int,
        f: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        held: Any,
        make: Callable[[int], Message],
    ) -> tuple[Peer, int, ResponseSlot]:
        """:meth:`request` of a call of ``f``; ``held`` (the caller's SIGINT hold) is released
        if the request fails, and an unpicklable call is reported as such."""
        try:
            return self.request(pid, make)
        except BaseException as e:
            _release(held)
            if isinstance(e, _UNPICKLABLE):
                raise _unpicklable(f, args, kwargs, e) from e
            raise

    def remote_do(self, pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Start ``f`` on ``pid`` and return at once; nobody is answered."""
        if pid == self.registry.myid:
            self.dispatch.start_remote_do(f, args, kwargs, pid, main_ok=False)
            return
        args, kwargs = _oob_args(args, kwargs)
        try:
            self.connections.get(pid).send(RemoteDo(f, args, kwargs))
        except _UNPICKLABLE as e:
            raise _unpicklable(f, args, kwargs, e) from e

    # -- requests and answers --------------------------------------------------------------

    def request(
        self, pid: int, make: Callable[[int], Message], slot: ResponseSlot | None = None
    ) -> tuple[Peer, int, ResponseSlot]:
        """Send ``make(rid)`` to ``pid`` with a fresh response id; the slot its answer fills.

        ``slot``: a slot of the caller's own (a subclass whose ``set`` acts on the answer, on
        the thread that reads it: it must not block); a new one when None.
        """
        return self.request_on(self.connections.get(pid), make, slot)

    def request_on(
        self, peer: Peer, make: Callable[[int], Message], slot: ResponseSlot | None = None
    ) -> tuple[Peer, int, ResponseSlot]:
        """:meth:`request` on a given connection (one not in the table yet: a joining worker)."""
        rid = self._rids.next()
        if slot is None:
            slot = ResponseSlot()
        peer.pending[rid] = slot
        try:
            peer.send(make(rid))
        except BaseException:
            peer.pending.pop(rid, None)
            raise
        if peer.closed and peer.pending.pop(rid, None) is not None:
            # closed between our check and our registration: nobody else will wake us
            slot.set(False, ProcessExitedException(peer.pid or 0, peer.close_reason))
        return peer, rid, slot

    def wait_answer(
        self,
        peer: Peer,
        rid: int,
        slot: ResponseSlot,
        timeout: float | None = None,
        cancel_with: Any = None,
        held: Any = None,
        f: Any = None,
    ) -> Any:
        """Wait for the answer to request ``rid``.

        Ctrl-C (KeyboardInterrupt) lands at once, between messages. It interrupts the calls
        running on the other side (``Interrupt``) and waits up to ``CTRL_C_GRACE`` s for the
        interrupted call to answer, so that the worker is free again when KeyboardInterrupt
        is raised here; a second Ctrl-C stops that wait at once. A request made with
        ``cancel_with`` (an operation on a channel, which must not interrupt the owner's
        other calls) is cancelled instead, by ``RemoteDo(cancel_with, (myid, rid))``: if it
        had done its work already (taken a value), its answer is returned all the same, so
        that nothing is lost; else the interruption itself (``InterruptException`` in a call
        that ``interrupt`` reached, as in any other wait; an answer for which the function
        ``f``'s ``is_cancelled`` says yes is the owner's "cancelled"). ``held``: the SIGINT
        hold the caller took before sending the request (see ``_hold_on_main``), released
        here.

        Raises:
            RemoteException: the call raised there.
            ProcessExitedException: the connection closed first.
            TimeoutError: no answer within ``timeout`` seconds.
            KeyboardInterrupt: Ctrl-C.
        """
        try:
            if held is not None:
                release_sigint(held)  # a Ctrl-C that came meanwhile is raised here
            if timeout is None and not slot.is_set():
                self._read_answer(peer, slot)
            answered = slot.wait(timeout)
        except KeyboardInterrupt:
            try:
                if rid in peer.pending and peer.pid is not None:
                    if cancel_with is None:
                        self.connections.send_quietly(peer.pid, Interrupt())
                    else:
                        msg = RemoteDo(cancel_with, (self.registry.myid, rid), {})
                        self.connections.send_quietly(peer.pid, msg)
                    slot.wait(CTRL_C_GRACE)  # read by the reader thread; Ctrl-C ends it
            finally:
                peer.pending.pop(rid, None)
            if cancel_with is None or not slot.is_set() or not slot.ok:
                raise
            if getattr(f, "is_cancelled", _never)(slot.value):
                raise  # (not the owner's KeyboardInterrupt: what came here, as it came)
            return slot.value  # done before the cancel came (a cancelled one raises)
        if not answered:
            peer.pending.pop(rid, None)
            raise TimeoutError(f"no answer from process {peer.pid} within {seconds(timeout)} s")
        if slot.ok:
            return slot.value
        raise slot.value

    def _read_answer(self, peer: Peer, slot: ResponseSlot) -> None:
        """Read the answer on this thread when the connection lets us (no hand-off).

        On the main thread a Ctrl-C is held while a message is being read, and delivered
        once it is whole: a message is never read in part. While the thread waits for the
        next message, Ctrl-C lands at once.
        """
        if get_ident() != self._main:
            # an interrupt can land anywhere in a call on a pool thread (an asynchronous
            # exception): such a thread waits on its slot instead of reading the stream
            if not self.executor.in_call():
                peer.read_until(slot.is_set)
            return
        peer.read_until(slot.is_set, _HOLD_SIGINT)
