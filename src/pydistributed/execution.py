"""How a process runs the calls that arrive for it: concurrently, like Julia tasks.

A worker's main thread runs calls when it is free (so that ``interrupt`` can deliver SIGINT to
it and break a ``time.sleep``, a blocking read or a pure-Python loop); when it is busy, a call
goes to a pool thread, started on demand, so that a call blocked on a channel or a lock never
stops the next one. On the master (process 1) the main thread belongs to the user, so every
incoming call runs on a pool thread.

Interrupting: a call on the main thread gets :class:`InterruptException` from the SIGINT
handler; a call on a pool thread gets it as an asynchronous exception
(``PyThreadState_SetAsyncExc``), which takes effect at the next Python bytecode: it cannot break
a blocking C call (``time.sleep``, a socket read, a long numpy operation) on a pool thread until
that call returns. An idle process ignores an interrupt.
"""

from __future__ import annotations

import _signal
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from . import scope
from .errors import InterruptException

__all__ = ["Executor", "exit_process", "hold_sigint", "release_sigint"]

log = logging.getLogger("pydistributed.execution")

_IDLE_RETIRE = 30.0

_Item = tuple[int, Callable[[], None]]


def _async_raise(ident: int, exc: type[BaseException] | None) -> None:
    import ctypes  # 2 ms at startup: only once a call is interrupted

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


def exit_process(code: int) -> NoReturn:
    """End this process now, whatever its threads are doing (a worker that must go: its master
    left, it was told to exit, or a call raised ``SystemExit``). Output is flushed first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def hold_sigint() -> tuple[Any, list[Any]] | None:
    """On the main thread: hold off SIGINT until :func:`release_sigint` (for a message that must
    be read or written whole). Returns None, holding nothing, when SIGINT has no Python
    handler (ignored or default), so there is nothing to hold.

    ``_signal``, not ``signal``: the enum wrapping of the latter costs more than a small read.
    """
    old = _signal.getsignal(signal.SIGINT)
    if not callable(old):
        return None
    held: list[Any] = []
    _signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    return old, held


def release_sigint(token: tuple[Any, list[Any]]) -> None:
    """End :func:`hold_sigint`: restore the handler and deliver a SIGINT that came meanwhile."""
    old, held = token
    _signal.signal(signal.SIGINT, old)
    if held:
        old(signal.SIGINT, held[0])


def _nothing() -> None:
    pass


class Executor:
    """Runs submitted callables on the main thread when free, else on pool threads.

    ``owner`` (the cluster) is bound to every pool thread (see ``scope``).
    """

    def __init__(self, use_main_thread: bool, owner: Any = None) -> None:
        self._use_main = use_main_thread
        self._owner = owner
        self._lock = threading.Lock()
        # each item: (how many interrupts had come when it was submitted, the callable)
        self._main_q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._main_idle = False
        self._main_ident = threading.main_thread().ident
        self._pool_q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._pool_idle = 0
        self._in_call: dict[int, int] = {}
        # how many interrupts have come: a call submitted before the last one, and started
        # after it, is interrupted as it starts (see check_interrupted)
        self._interrupts = 0
        self._local = threading.local()
        # set on a worker once it has joined: ``(serve, wake)`` of the master's connection,
        # whose reading role the idle main thread takes (``Peer.serve``)
        self.source: tuple[Callable[[Callable[[], bool]], None], Callable[[], None]] | None = None
        self._serving = False

    # -- submitting -----------------------------------------------------------------------

    def submit(self, fn: Callable[[], None], main_ok: bool = True) -> None:
        """Run ``fn()`` soon, concurrently with everything else. Never blocks."""
        item = (self._interrupts, fn)
        with self._lock:
            if main_ok and self._main_idle:
                self._main_idle = False
                self._main_q.put(item)
                if self._serving and threading.get_ident() != self._main_ident:
                    source = self.source
                    if source is not None:
                        source[1]()
                return
            if self._pool_idle:
                self._pool_idle -= 1
                self._pool_q.put(item)
                return
        # a Thread keeps its args as long as it runs: pass the item in a box that the loop
        # empties, so that a finished call (and the arguments its closure holds, remote
        # references among them) does not outlive itself
        box = [item]
        t = threading.Thread(target=self._pool_loop, args=(box,), name="pydist-call", daemon=True)
        t.start()

    def _pool_loop(self, box: list[_Item]) -> None:
        scope.bind(self._owner)
        item = box.pop()
        while True:
            self._run(item)
            del item  # see submit: nothing of a finished call stays referenced
            with self._lock:
                self._pool_idle += 1
            try:
                item = self._pool_q.get(timeout=_IDLE_RETIRE)
            except InterruptException:
                log.warning("an interrupt reached an idle pool thread; ignored")
                item = self._pool_q.get()
            except queue.Empty:
                with self._lock:
                    if self._pool_idle:
                        # nobody claimed this thread while it timed out: retire
                        self._pool_idle -= 1
                        return
                item = self._pool_q.get()  # a submitter claimed us just now; its item is coming

    def wake_main(self) -> None:
        """Make an idle main thread look at :attr:`source` again."""
        with self._lock:
            if self._main_idle and self._main_q.empty():
                self._main_idle = False
                self._main_q.put((self._interrupts, _nothing))

    def run_main(self) -> None:
        """Serve calls on the calling (main) thread forever. Used by workers."""
        with self._lock:
            self._main_idle = True
        get, run, lock, empty = self._main_q.get, self._run, self._lock, self._main_q.empty
        while True:
            source = self.source
            if source is not None and empty():
                # read the master's calls here rather than wait for the reader thread's
                # hand-off (a thread wake-up each way)
                self._serving = True
                try:
                    source[0](empty)
                finally:
                    self._serving = False
            item = get()
            run(item)
            del item  # see submit
            with lock:
                if empty():
                    self._main_idle = True

    def check_interrupted(self) -> None:
        """At the start of a call: raise InterruptException if an interrupt came after the
        call was submitted (it was waiting for a thread: ``interrupt`` meant it too)."""
        seen = getattr(self._local, "interrupts", None)
        if seen is not None and seen != self._interrupts:
            self._local.interrupts = None
            raise InterruptException()
        self._local.interrupts = None  # a call nested in this one is not meant

    def _run(self, item: _Item) -> None:
        try:
            # as many interrupts as had come when it was submitted (see check_interrupted)
            self._local.interrupts, fn = item
            del item
            fn()
        except BaseException:  # a call wrapper must not raise; if it does, keep serving
            log.exception("internal error while running a call")

    # -- interrupting ---------------------------------------------------------------------

    def enter_call(self) -> int:
        """Mark this thread as running user code that ``interrupt`` may break (calls may nest)."""
        ident = threading.get_ident()
        with self._lock:
            self._in_call[ident] = self._in_call.get(ident, 0) + 1
        return ident

    def exit_call(self, ident: int) -> None:
        """End what :meth:`enter_call` began."""
        with self._lock:
            depth = self._in_call.pop(ident, 1) - 1
            if depth:
                self._in_call[ident] = depth
                return
            if ident != self._main_ident:
                # clear an asynchronous interrupt that arrived as the call returned
                _async_raise(ident, None)
            elif self._use_main and self._main_q.empty():
                # the main thread is free again before it sends this call's answer, so the
                # caller's next call (which may arrive before that send returns) runs here,
                # where an interrupt can reach it
                self._main_idle = True

    def shield(self, big: bool = True) -> Any:
        """Hold interrupts off this thread while it writes a message (a message cut in half
        would put the stream out of step). On the main thread a SIGINT is held and delivered
        by :meth:`unshield`; a pool thread is out of reach of ``interrupt`` meanwhile.

        ``big=False`` (a message that goes out in one small ``send``, which a signal cannot
        cut unless the socket is full) skips the SIGINT swap, which costs two system calls.
        """
        ident = threading.get_ident()
        if ident == self._main_ident:
            if not big:
                return None
            token = hold_sigint()
            return None if token is None else (True, token)
        if ident not in self._in_call:
            return None
        with self._lock:
            depth = self._in_call.pop(ident, 0)
        return (False, ident, depth) if depth else None

    def unshield(self, token: Any) -> None:
        """End :meth:`shield`; deliver a SIGINT that arrived meanwhile."""
        if token[0]:
            release_sigint(token[1])
            return
        _, ident, depth = token
        with self._lock:
            self._in_call[ident] = depth

    def in_call(self) -> bool:
        """True while this thread runs interruptible user code (an interrupt may land in it)."""
        return threading.get_ident() in self._in_call

    def main_in_call(self) -> bool:
        """True while the main thread runs interruptible user code."""
        return self._main_ident in self._in_call

    def interrupt(self) -> int:
        """Interrupt every call running now, and those submitted and not started yet;
        returns how many were running."""
        with self._lock:
            self._interrupts += 1
            running = list(self._in_call)
            for ident in running:
                if ident == self._main_ident:
                    signal.pthread_kill(ident, signal.SIGINT)
                else:
                    _async_raise(ident, InterruptException)
        return len(running)

    def install_sigint_handler(self) -> None:
        """On the main thread: SIGINT interrupts the call running there, else is ignored."""

        def handler(signum: int, frame: Any) -> None:
            if self.main_in_call():
                raise InterruptException()

        signal.signal(signal.SIGINT, handler)
