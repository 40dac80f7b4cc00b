"""One ``addprocs`` call's launch and setups, kept off the main thread.

A Ctrl-C raises ``KeyboardInterrupt`` in the main thread, between any two of its bytecodes. So
the thread that calls ``addprocs`` keeps no record of the call's workers: it starts the call's
coordinator (a thread, ``pydist-addprocs``) and waits on :attr:`AddCall.finished`, an
``Event``, which an interrupt leaves intact. The coordinator starts the manager's launch (a
thread, ``pydist-launch``), starts a setup thread for each ``WorkerConfig`` the launch adds,
and joins them all; then the outcome (:attr:`AddCall.results`) is complete and ``finished``
set. After :meth:`AddCall.abandon` (the call was interrupted) the configs launched from then
on are not set up: their processes are ended. Whatever was being set up finishes, and the
caller removes what joined (``Lifecycle``). The coordinator launches nothing before
:meth:`AddCall.start` has returned: interrupted in ``start``, the call has nothing to undo.

Why the main thread neither joins nor starts the setup threads: CPython's ``Thread.join``,
interrupted by a signal whose handler raises (Ctrl-C), may mark a thread that still runs as
ended (python/cpython#90882; seen here with Python 3.11); joining it again then returns at
once. When the main thread joined the setups, a Ctrl-C landing in the last join left the worker
whose setup ended a moment later in the cluster, with an id the caller never got.
``Thread.start`` waits too, and interrupted there, a thread runs that no list holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .workerexit import end_process

if TYPE_CHECKING:
    from .managers.workerconfig import WorkerConfig

__all__ = ["AddCall", "Launch", "Result", "Setup"]

Result = tuple[int | None, BaseException | None]
"""A setup's outcome: the worker's id (None if it got none), and its error (None: it joined)."""
Launch = Callable[[list["WorkerConfig"], threading.Condition], None]
"""``manager.launch(params, ...)`` with the params bound: appends configs, notifies."""
Setup = Callable[["WorkerConfig", list[Result]], None]
"""Sets up one launched worker; appends its :data:`Result` (it never raises)."""


class AddCall:
    """The workers of one ``addprocs`` call: launched, being set up, their outcomes."""

    def __init__(self, launch: Launch, setup: Setup) -> None:
        self._launch = launch
        self._setup = setup
        self.launched: list[WorkerConfig] = []
        self.cond = threading.Condition()  # the manager's launch_ntfy
        self.launch_error: list[BaseException] = []
        self.results: list[Result] = []
        self.finished = threading.Event()  # the launch is over and every setup has ended
        # after abandon(): no setup runs, and none will start (a launch may still be running:
        # what it adds from now on is ended, not set up), so joined() is complete
        self.settled = threading.Event()
        self._active = 0  # setups running
        self._launch_over = False
        self._abandoned = False
        self._go = threading.Event()  # set once start() has started the coordinator

    def start(self) -> None:
        """Start the coordinator (the one thread started from the caller's thread)."""
        threading.Thread(target=self._coordinate, name="pydist-addprocs", daemon=True).start()
        self._go.set()

    def abandon(self) -> None:
        """The call was interrupted: set up none of the configs launched from now on (their
        processes are ended). Those being set up finish; :meth:`joined` then has them."""
        self._abandoned = True  # (first: one store, whatever interrupts what follows)
        if not self._go.is_set():
            # interrupted in start(): the coordinator, if it runs at all, launches nothing
            self._go.set()
            self.finished.set()
            self.settled.set()
            return
        with self.cond:
            if not self._active:
                self.settled.set()
            self.cond.notify_all()

    def joined(self) -> list[int]:
        """The ids of the workers that joined (all of them, once :attr:`finished` is set)."""
        return [pid for pid, err in list(self.results) if pid is not None and err is None]

    def errors(self) -> list[BaseException]:
        return [err for _, err in list(self.results) if err is not None]

    def _run_launch(self) -> None:
        try:
            self._launch(self.launched, self.cond)
        except BaseException as e:
            self.launch_error.append(e)
        finally:
            with self.cond:
                self._launch_over = True
                self.cond.notify_all()

    def _run_setup(self, config: WorkerConfig) -> None:
        try:
            self._setup(config, self.results)
        finally:
            self._setup_ended()

    def _setup_ended(self) -> None:
        with self.cond:
            self._active -= 1
            if self._abandoned and not self._active:
                self.settled.set()

    def _coordinate(self) -> None:
        from .managers.workerconfig import WorkerConfig  # (a dataclass: not on a worker's start)

        setups: list[threading.Thread] = []
        handled = 0  # the configs set up or ended, in launch order
        try:
            while not self._go.wait(0.1):  # (polled: a set() cut short may not notify)
                pass
            if self._abandoned:
                return
            threading.Thread(target=self._run_launch, name="pydist-launch", daemon=True).start()
            seen = 0
            while True:
                with self.cond:
                    while len(self.launched) == seen and not self._launch_over:
                        self.cond.wait(0.5)
                    new = self.launched[seen:]
                    seen = len(self.launched)
                    over = self._launch_over  # (and every config it added is in new)
                for config in new:
                    if not isinstance(config, WorkerConfig):
                        # nothing to set up, nor to end: the call fails with this, once the
                        # workers it did launch are set up (and then removed)
                        self.launch_error.append(
                            TypeError(
                                "a cluster manager's launch() must append WorkerConfig objects "
                                f"to launched, not {type(config).__name__} ({config!r:.80})"
                            )
                        )
                    else:
                        with self.cond:  # (abandon() reads _active under it)
                            abandoned = self._abandoned
                            if not abandoned:
                                self._active += 1
                        if abandoned:
                            end_process(config.process)
                        else:
                            t = threading.Thread(
                                target=self._run_setup, args=(config,), name="pydist-setup"
                            )
                            t.daemon = True
                            try:
                                t.start()
                            except BaseException:
                                self._setup_ended()
                                raise
                            setups.append(t)
                    handled += 1
                if over:
                    break
            for t in setups:
                t.join()
        except BaseException as e:  # a thread that could not start: the call fails with it
            self.launch_error.append(e)
            with self.cond:
                unhandled = self.launched[handled:]
            for config in unhandled:
                if isinstance(config, WorkerConfig):
                    end_process(config.process)
            for t in setups:
                t.join()
        finally:
            self.finished.set()
