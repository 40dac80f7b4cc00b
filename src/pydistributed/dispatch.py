"""Incoming messages: what each one does here, and how a call's function is run.

Every message a connection reads goes to :meth:`Dispatcher.on_message`, which looks its type
up in the handler table::

    Call(whence, id, f, ...)       store storage for RRID(whence, id); run f later; put the
                                   result (or the captured error) into that storage
    CallFetch(rid, f, ...)         run f later; answer Result(rid, value) to the caller
    CallWait(rid, whence, id, f)   as Call, then answer once stored: Result(rid, None), or
                                   the failure (stored too) when f raised
    RemoteDo(f, ...)               run f later; a failure is logged here, nobody is answered
    Result(rid, ok, value)         fill the caller's response slot ``rid`` of that connection
    JoinComplete(rid, ...)         likewise (the answer to JoinPGRP)
    RefCount(adds, dels)           adjust the reference counts of the stored values
    Interrupt()                    interrupt the calls running here (``execution``)
    Ping(nonce), Pong(nonce)       the heartbeat: answer a Ping at once; a Pong needs nothing
    MapCalls, MapCancel            a pipelined map's elements, to its stream's serial queue
    MapResults(stream, ...)        to the stream's slot of that connection (``pipecalls``)
    Exit(), PeerUpdate(...)        registered by the cluster (the life cycle's concern)

"Run later" means: submitted to the executor (the main thread when free, else a pool thread),
so that the reader goes back to reading at once. A call to this process itself
(``remotecall(f, myid(), ...)``) takes the same functions below (:meth:`Dispatcher.execute`,
:meth:`Dispatcher.start_call`, :meth:`Dispatcher.call_into`,
:meth:`Dispatcher.start_remote_do`) without a message.

A message whose body cannot be decoded still has a header: :meth:`Dispatcher.on_decode_error`
answers the caller it names with the error (or stores the error where the call's result was to
go), and the connection stays up.
"""

from __future__ import annotations

import functools
import logging
import pickle
import threading
import traceback
from collections.abc import Callable
from typing import Any

from . import codec
from .errors import CapturedException, ProcessExitedException, RemoteException, capture
from .execution import Executor, exit_process
from .ids import RRID
from .messages import (
    Call,
    CallFetch,
    CallWait,
    Interrupt,
    JoinComplete,
    MapCalls,
    MapCancel,
    MapResults,
    Message,
    Ping,
    Pong,
    RefCount,
    RemoteDo,
    Result,
)
from .peer import Peer, describe_unpicklable
from .pipecalls import SerialQueues, StreamSlot
from .refstore import Failure, RefStore
from .registry import Registry

__all__ = ["LATER", "Dispatcher", "is_internal"]

log = logging.getLogger("pydistributed")


def _ignore(peer: Peer, msg: Message) -> None:
    pass


class _Later:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


LATER: Any = _Later()
"""What the at-once form of a runtime operation (``f._pydist_now``, see ``refops``) answers
when it cannot finish at once: the operation then runs the usual way."""


def _undecodable_answer(err: codec.DecodeError, sender: int | None, me: int) -> CapturedException:
    """The error of an answer that arrived but cannot be unpickled here: it names the cause
    (the original exception) and says that the value was computed, and where."""
    cause = err.cause
    why = ""
    if isinstance(cause, (ImportError, AttributeError)):
        why = f" (a module or class that process {sender} has is missing on process {me})"
    text = (
        f"The call ran on process {sender}, but its answer cannot be received on process "
        f"{me}: unpickling it raised {type(cause).__name__}: {cause}{why}.\n"
        + "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    )
    return CapturedException(cause, text)


class Cancellable:
    """The requests running here that their caller may cancel (an operation that waits, on a
    channel: the caller's Ctrl-C), by ``(caller, response id)``. The operation asks
    :meth:`cancelled` between the slices of its wait."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._running: dict[tuple[int, int], bool] = {}

    def register(self, key: tuple[int, int]) -> None:
        """On the reading thread, as the request arrives: a cancel that the caller sent after
        it finds it, even before a thread has started to run it."""
        self._running[key] = False

    def begin(self, key: tuple[int, int]) -> None:
        """On the thread that runs the request (registered)."""
        self._local.key = key

    def end(self, key: tuple[int, int]) -> None:
        self._running.pop(key, None)
        self._local.key = None

    def cancel(self, key: tuple[int, int]) -> None:
        """Cancel request ``key`` if it still runs (else nothing: it has answered)."""
        if key in self._running:
            self._running[key] = True

    def cancelled(self) -> bool:
        """Whether the request this thread runs has been cancelled."""
        key = getattr(self._local, "key", None)
        return key is not None and self._running.get(key, False)


def is_internal(f: Any) -> bool:
    """Whether ``f`` is one of the runtime's own operations (on references and pools).

    They serve other processes, not the user of this one: an interrupt is not for them, and
    they never run on the main thread (where they could block an interruptible call).
    """
    return getattr(f, "_pydist_internal", False)


class Dispatcher:
    """The handler table of incoming messages, and the running of calls.

    Args:
        registry: this process's id and role.
        refs: the stored values of calls and references owned here.
        executor: where calls run.
    """

    def __init__(self, registry: Registry, refs: RefStore, executor: Executor) -> None:
        self.registry = registry
        self.refs = refs
        self.executor = executor
        self.requests = Cancellable()
        self.serial = SerialQueues(executor, self.execute)
        self._handlers: dict[type[Message], Callable[[Peer, Any], None]] = {
            Call: self._on_call,
            CallFetch: self._on_call_fetch,
            CallWait: self._on_call_wait,
            RemoteDo: self._on_remote_do,
            Result: self._on_result,
            JoinComplete: self._on_answer,
            RefCount: self._on_refcount,
            Interrupt: self._on_interrupt,
            Ping: self._on_ping,
            Pong: _ignore,  # arriving was the point (Peer.last_heard)
            MapCalls: self._on_map_calls,
            MapResults: self._on_map_results,
            MapCancel: self._on_map_cancel,
        }

    def register(self, msg_type: type[Message], handler: Callable[[Peer, Any], None]) -> None:
        """Handle messages of ``msg_type`` with ``handler(peer, msg)`` (on the reading thread:
        it must not block)."""
        self._handlers[msg_type] = handler

    # -- reading side ----------------------------------------------------------------------

    def on_message(self, peer: Peer, msg: Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("unexpected %s from process %s; ignored", type(msg).__name__, peer.pid)
            return
        handler(peer, msg)

    def on_decode_error(self, peer: Peer, err: codec.DecodeError) -> None:
        h = err.header
        captured = capture(err)
        log.debug("undecodable message from %s: %s", peer.pid, err)
        if err.tag in (CallFetch.TAG, CallWait.TAG):
            if err.tag == CallWait.TAG:
                slot = self.refs.add(RRID(h["whence"], h["id"]), h["whence"])
                self.store(slot, False, captured)
            self.reply(peer, h["response_id"], False, captured)
        elif err.tag == Call.TAG:
            slot = self.refs.add(RRID(h["whence"], h["id"]), h["whence"])
            self.store(slot, False, captured)
        elif err.tag == MapCalls.TAG:
            self.serial.on_undecodable(peer, h["stream"], h["first"], h["count"], captured)
        elif err.tag == MapResults.TAG:
            stream = peer.pending.get(h["stream"])
            if isinstance(stream, StreamSlot):
                myid = self.registry.myid
                failure = _undecodable_answer(err, peer.pid, myid)
                stream.undecodable(h["first"], h["count"], failure)
        elif err.tag in (Result.TAG, JoinComplete.TAG):
            rslot = peer.pending.pop(h["response_id"], None)
            if rslot is not None:
                # the failure is this process's, not the sender's (Julia labels it so too)
                myid = self.registry.myid
                rslot.set(False, RemoteException(myid, _undecodable_answer(err, peer.pid, myid)))
        else:
            log.warning("dropped an undecodable message from process %s: %s", peer.pid, err)

    def _on_call(self, peer: Peer, msg: Call) -> None:
        rrid = RRID(msg.whence, msg.id)
        self.start_call(rrid, msg.whence, msg.f, msg.args, msg.kwargs, not is_internal(msg.f))

    def _on_call_fetch(self, peer: Peer, msg: CallFetch) -> None:
        internal = is_internal(msg.f)
        if not internal and getattr(msg.f, "cancel_with", None) is None:
            # a function of the user's: the path of most calls, in short

            box = [msg]

            def run_user() -> None:
                m = box.pop()
                ok, value = self._execute_user(m.f, m.args, m.kwargs)
                rid = m.response_id
                del m  # the arguments go before the answer (a shared-memory one is free again)
                self.reply(peer, rid, ok, value)

            self.executor.submit(run_user, True)
            return
        now = getattr(msg.f, "_pydist_now", None) if internal else None
        if now is not None and self._answer_now(peer, msg, now):
            return

        def run() -> None:
            ok, value = self.execute(msg.f, msg.args, msg.kwargs)
            self.reply(peer, msg.response_id, ok, value, getattr(msg.f, "_pydist_pair", False))

        if getattr(msg.f, "cancel_with", None) is not None and peer.pid is not None:
            inner, key = run, (peer.pid, msg.response_id)
            self.requests.register(key)

            def run() -> None:
                self.requests.begin(key)
                try:
                    inner()
                finally:
                    self.requests.end(key)

            try:
                self.executor.submit(run, not internal)
            except BaseException:
                self.requests.end(key)
                raise
            return
        self.executor.submit(run, not internal)

    def _answer_now(self, peer: Peer, msg: CallFetch, now: Callable[..., Any]) -> bool:
        """Run a runtime operation that can finish at once here, on the reading thread, and
        answer it (no hand-off to a pool thread: ``refops._at_once``); False when it cannot,
        having done nothing."""
        try:
            value = now(*msg.args, **msg.kwargs)
        except Exception:
            return False  # the usual way runs it again and reports the error
        if value is LATER:
            return False
        self._answer_here(peer, Result(msg.response_id, True, value))
        return True

    def _answer_here(self, peer: Peer, answer: Message) -> None:
        """Send a small answer from the reading thread, or from a pool thread if another
        thread is writing to ``peer`` now: a reader that waited for the send lock, held by a
        writer that waits for the other side to read, could wait for ever if the other side's
        reader did the same."""
        try:
            if peer.send(answer, wait=False):
                return
        except ProcessExitedException:
            return
        except Exception:  # cannot be pickled: the general path says why
            pass
        if isinstance(answer, Result):
            reply = functools.partial(self.reply, peer, answer.response_id, answer.ok, answer.value)
            self.executor.submit(reply, False)
        else:
            self.executor.submit(functools.partial(peer.send_quietly, answer), False)

    def _on_call_wait(self, peer: Peer, msg: CallWait) -> None:
        slot = self.refs.add(RRID(msg.whence, msg.id), msg.whence)

        def run() -> None:
            ok, value = self.call_into(slot, msg.f, msg.args, msg.kwargs)
            # stored either way; the caller learns of a failure too (Julia's remotecall_wait)
            self.reply(peer, msg.response_id, ok, None if ok else value)

        self.executor.submit(run, not is_internal(msg.f))

    def _on_remote_do(self, peer: Peer, msg: RemoteDo) -> None:
        self.start_remote_do(msg.f, msg.args, msg.kwargs, peer.pid, not is_internal(msg.f))

    def _on_map_calls(self, peer: Peer, msg: MapCalls) -> None:
        self.serial.on_calls(peer, msg, not is_internal(msg.f))

    def _on_map_cancel(self, peer: Peer, msg: MapCancel) -> None:
        self.serial.cancel(peer, msg.stream)

    def _on_map_results(self, peer: Peer, msg: MapResults) -> None:
        stream = peer.pending.get(msg.stream)
        if isinstance(stream, StreamSlot):
            stream.deliver(msg)

    def _on_result(self, peer: Peer, msg: Result) -> None:
        slot = peer.pending.pop(msg.response_id, None)
        if slot is None:
            return  # its caller gave up
        if msg.ok:
            slot.set(True, msg.value)
        else:
            slot.set(False, RemoteException(peer.pid or 0, msg.value))

    def _on_answer(self, peer: Peer, msg: Any) -> None:
        slot = peer.pending.pop(msg.response_id, None)
        if slot is not None:
            slot.set(True, msg)

    def _on_refcount(self, peer: Peer, msg: RefCount) -> None:
        self.refs.apply(
            [(RRID(w, i), c) for w, i, c in msg.adds],
            [(RRID(w, i), c) for w, i, c in msg.dels],
        )

    def _on_interrupt(self, peer: Peer, msg: Interrupt) -> None:
        self.executor.interrupt()

    def _on_ping(self, peer: Peer, msg: Ping) -> None:
        self._answer_here(peer, Pong(msg.nonce))

    # -- running calls (from a message, or a call to this process itself) -----------------

    def execute(self, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """Run user code: ``(True, value)`` or ``(False, CapturedException)``.

        A user function is interruptible while it runs (``interrupt``, Ctrl-C on a worker);
        ``SystemExit`` in a call on a worker ends the worker, as ``exit()`` does in Julia.
        """
        if is_internal(f):
            try:
                return True, f(*args, **kwargs)
            except BaseException as e:
                return False, capture(e)
        return self._execute_user(f, args, kwargs)

    def _execute_user(
        self, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        """:meth:`execute` of a function that is not one of the runtime's own."""
        ex = self.executor
        ident = ex.enter_call()
        exited = False
        try:
            try:
                ex.check_interrupted()
                return True, f(*args, **kwargs)
            finally:
                ex.exit_call(ident)
                exited = True
        except SystemExit as e:
            if not exited:
                ex.exit_call(ident)
            if self.registry.role == "worker":
                exit_process(e.code if isinstance(e.code, int) else 0)
            return False, capture(e)
        except BaseException as e:
            if not exited:  # an interrupt landed before exit_call had finished
                ex.exit_call(ident)
            return False, capture(e)

    def store(self, slot: Any, ok: bool, value: Any) -> None:
        """Put a call's outcome into the storage of its Future."""
        if slot is None:
            return
        try:
            slot.put(value if ok else Failure(self.registry.myid, value))
        except RuntimeError:
            log.warning("a call's result arrived for a Future that was already set; dropped")

    def reply(self, peer: Peer, rid: int, ok: bool, value: Any, pair: bool = False) -> None:
        """Answer request ``rid`` of ``peer``; a value that cannot be pickled is answered with
        the error that says so. ``pair``: ``value`` is a ``(ready, value)`` answer of
        ``refops`` (``f._pydist_pair``), whose value is the one the error names."""
        try:
            if ok and type(value) is bytes:
                value = codec.oob(value)
            peer.send(Result(rid, ok, value))
            return
        except ProcessExitedException:
            return  # the caller is gone
        except Exception as e:
            what = "the return value" if ok else "the exception"
            if ok and pair and isinstance(value, tuple) and len(value) == 2:
                value = value[1]  # the value a Future holds, not the answer that carries it
            err = pickle.PicklingError(describe_unpicklable(what, {what: value}, e))
        try:
            peer.send(Result(rid, False, capture(err)))
        except Exception:
            log.exception("could not answer a call from process %s", peer.pid)

    def call_into(
        self, slot: Any, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        """Run ``f`` on this thread and store its outcome in ``slot``; returns the outcome."""
        ok, value = self.execute(f, args, kwargs)
        self.store(slot, ok, value)
        return ok, value

    def start_call(
        self,
        rrid: RRID,
        client: int,
        f: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        main_ok: bool,
    ) -> Any:
        """Make the storage of ``rrid`` (held by ``client``) and run ``f`` into it, soon.
        Returns the storage."""
        slot = self.refs.add(rrid, client)

        def run() -> None:
            self.call_into(slot, f, args, kwargs)

        self.executor.submit(run, main_ok)
        return slot

    def start_remote_do(
        self,
        f: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        origin: int | None,
        main_ok: bool,
    ) -> None:
        """Run ``f`` soon, for nobody: a failure is logged on this process."""

        def run() -> None:
            ok, value = self.execute(f, args, kwargs)
            if not ok:
                log.error("remote_do from process %s failed:\n%s", origin, value)

        self.executor.submit(run, main_ok)
