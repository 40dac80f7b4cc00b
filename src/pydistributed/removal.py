"""The master's side of removing workers: ``rmprocs`` (exit request, then interrupt, then
kill, within ``waitfor``), ``interrupt``, and the end of every worker at the master's exit. The
base of ``lifecycle.Lifecycle``, which adds and admits them (see its docstring).
"""

from __future__ import annotations

import logging
import time

from . import timeouts
from .connections import Connections
from .managers.base import overrides
from .messages import Exit, Interrupt
from .registry import Registry, WorkerInfo
from .workerexit import KILL_WAIT, end_process

__all__ = ["Removal"]

log = logging.getLogger("pydistributed")


class Removal:
    """Removes and interrupts workers (process 1 only); the base of ``Lifecycle``."""

    registry: Registry
    connections: Connections
    closing: bool
    reaping: dict[int, WorkerInfo]  # workers that left, their launch process within its grace

    def _check_master(self) -> None:
        if self.registry.myid != 1:
            raise RuntimeError("Only process 1 can add and remove workers")

    @staticmethod
    def _manage(info: WorkerInfo, op: str) -> None:
        if info.manager is None or info.config is None:
            return
        try:
            info.manager.manage(info.pid, info.config, op)
        except Exception:
            log.exception("manage(%s) failed for worker %d", op, info.pid)

    # -- removing and interrupting ---------------------------------------------------------

    def _ask_to_exit(self, info: WorkerInfo) -> None:
        peer = self.connections.lookup(info.pid)
        if peer is not None:
            peer.removing = True  # its callers learn that it was removed, not that it died
        if info.manager is not None and info.config is not None and overrides(info.manager, "kill"):
            try:
                info.manager.kill(info.pid, info.config)
            except Exception:
                log.exception("kill of worker %d failed", info.pid)
        else:
            self.connections.send_quietly(info.pid, Exit())

    def interrupt_one(self, pid: int) -> None:
        """Interrupt the calls running on ``pid``, and tell its manager."""
        self.connections.send_quietly(pid, Interrupt())
        info = self.registry.get(pid)
        if info is not None:
            self._manage(info, "interrupt")

    def interrupt(self, pids: list[int]) -> None:
        """``interrupt(*pids)``: every worker when ``pids`` is empty."""
        targets = pids or [p for p in self.registry.worker_ids() if p != 1]
        for pid in targets:
            self.interrupt_one(pid)

    def remove_workers(self, pids: list[int], waitfor: float | None = None) -> None:
        """``rmprocs``: ask each worker to exit, then interrupt, then kill; within ``waitfor``.

        Raises:
            RuntimeError: called on a worker.
            TimeoutError: some workers were still there after ``waitfor`` seconds (they were
                killed).
        """
        self._check_master()
        infos = [
            info
            for p in dict.fromkeys(pids)
            if p != 1 and (info := self.registry.mark_removing(p)) is not None
        ]
        if not infos:
            return
        start = time.monotonic()
        deadline = timeouts.deadline(waitfor)
        grace = 1.0 if waitfor is None else max(0.05, min(1.0, waitfor / 3))

        def wait_until(t: float) -> list[WorkerInfo]:
            for info in infos:
                left = t - time.monotonic()
                if left <= 0:
                    break
                info.exited.wait(left)
            return [i for i in infos if not i.exited.is_set()]

        def by(t: float) -> float:
            return t if deadline is None else min(t, deadline)

        for info in infos:
            self._ask_to_exit(info)
        left = wait_until(by(start + grace))
        if left:
            for info in left:
                self.interrupt_one(info.pid)
            left = wait_until(by(start + 2 * grace))
        if left:
            late = deadline is not None and time.monotonic() >= deadline
            for info in left:
                end_process(info.process)
                self.connections.drop(info.pid, "removed by rmprocs")
            # killed and disconnected: they are deregistered at once; bound the wait anyway
            still = wait_until(max(deadline or 0.0, time.monotonic() + KILL_WAIT))
            if late or still:
                raise TimeoutError(
                    f"workers {[i.pid for i in left]} did not exit within "
                    f"{timeouts.seconds(waitfor)} s; they were killed"
                )
        # reap the processes, so that none is left behind as a zombie
        last = KILL_WAIT if deadline is None else (timeouts.remaining(deadline) or 0.0)
        for info in infos:
            end_process(info.process, grace=last)

    # -- at exit ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """At the master's exit: tell every worker to exit, and make sure they do."""
        self.closing = True
        infos = self.registry.infos()
        for info in infos:
            self.connections.send_quietly(info.pid, Exit())
        deadline = time.monotonic() + 2.0
        for info in infos:
            info.exited.wait(max(0.0, deadline - time.monotonic()))
        for info in infos:
            end_process(info.process, grace=max(0.05, deadline - time.monotonic()))
        # workers that left and whose launch process (an ssh session to a host that was cut
        # off) was still within its grace: it would outlive this process, which is ending
        for info in list(self.reaping.values()):
            end_process(info.process)
