"""One ``mpiexec`` job of MPIManager: its process, its ranks' output, their addresses, its end.

::

    mpiexec -n NP ... python -m pydistributed.mpi --workers
      stdin   <- the cookie, one line (mpiexec hands its stdin to rank 0 only; rank 0
                 broadcasts it to the other ranks over MPI): never on a command line
      stdout  -> "pydist_rank:R\\t<line>" from every rank, mixed   --+
      stderr  -> the same, plus mpiexec's own messages (untagged)  --+--> demux threads
                                                                        |
            rank R's banner "pydist_worker:PORT#HOST"  -> addresses[R]  (launch waits for all)
            rank R's other lines  -> rank R's own pipes  -> relayed by the master as
                                     "From worker N:" (WorkerConfig.io, process.stderr)
            untagged lines        -> rank 0's stderr pipe, and the job's tail (for errors)

The job ends when every one of its workers has left the cluster (:meth:`MPIJob.left`): the
ranks end by themselves (their connections closed, ``MPI_Finalize``), so mpiexec is given
``STOP_GRACE`` seconds to exit, then SIGTERM (Open MPI passes it to every rank), then SIGKILL.
At the master's exit every job still running is ended the same way (``atexit``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import subprocess
import threading
import time
import weakref
from typing import Any, BinaryIO

from ..errors import LaunchError, LaunchTimeoutError
from ..relay import BANNER_PREFIX, parse_banner
from ..timeouts import seconds

__all__ = ["TAG", "MPIJob"]

log = logging.getLogger("pydistributed")

TAG = "pydist_rank:"  # before each line of a rank (mpirank.TaggedStream writes it)
STOP_GRACE = 3.0  # how long mpiexec may take to end by itself once its workers have left
KILL_GRACE = 3.0  # after SIGTERM, before SIGKILL

_jobs: weakref.WeakSet[MPIJob] = weakref.WeakSet()  # the jobs to end at exit


class MPIJob:
    """A running ``mpiexec`` of ``np`` worker ranks, and the demultiplexing of its output."""

    def __init__(self, proc: subprocess.Popen[bytes], np: int) -> None:
        self.proc = proc
        self.np = np
        self.addresses: dict[int, tuple[str, int]] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._cond = threading.Condition()
        self._ended = 0  # streams of mpiexec that reached their end
        self._out: list[int] = []  # write ends: rank r's stdout is _out[r], stderr _err[r]
        self._err: list[int] = []
        self.stdout: list[BinaryIO] = []  # read ends, for the master's relay
        self.stderr: list[BinaryIO] = []
        for _ in range(np):
            for writers, readers in ((self._out, self.stdout), (self._err, self.stderr)):
                r, w = os.pipe()
                writers.append(w)
                readers.append(open(r, "rb", buffering=0))
        self._joined: set[int] = set()
        self._stopping = False
        self._lock = threading.Lock()
        _jobs.add(self)
        for stream, kind in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            threading.Thread(
                target=self._demux, args=(stream, kind), name="pydist-mpiexec", daemon=True
            ).start()

    # -- output ------------------------------------------------------------------------------

    def _demux(self, stream: Any, kind: str) -> None:
        writers = self._out if kind == "stdout" else self._err
        try:
            for raw in iter(stream.readline, b""):
                self._route(raw, kind, writers)
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass
            with self._cond:
                self._ended += 1
                self._cond.notify_all()
            for fd in writers:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _route(self, raw: bytes, kind: str, writers: list[int]) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        rank = None
        if line.startswith(TAG):
            head, sep, rest = line[len(TAG) :].partition("\t")
            if sep and head.isdigit() and int(head) < self.np:
                rank, line = int(head), rest
        if rank is not None and kind == "stdout" and line.startswith(BANNER_PREFIX):
            address = parse_banner(line)
            if address is not None and rank not in self.addresses:
                with self._cond:
                    self.addresses[rank] = address
                    self._cond.notify_all()
                return
        if kind == "stderr" or rank is None:
            self.tail.append(line if rank is None else f"[rank {rank}] {line}")
        target = writers[0] if rank is None else writers[rank]
        data = (line + "\n").encode("utf-8", "replace")
        try:
            os.write(target, data)
        except OSError:  # its reader is gone: the worker left, or never joined
            pass

    # -- starting ----------------------------------------------------------------------------

    def wait_addresses(self, timeout: float) -> list[tuple[str, int]]:
        """The address of every rank, in rank order, once all have reported.

        Raises:
            LaunchError: mpiexec ended (or closed its output) first; the message has its exit
                code and the end of its output.
            LaunchTimeoutError: not all reported within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.addresses) < self.np:
                left = deadline - time.monotonic()
                if self._ended == 2 or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            if len(self.addresses) == self.np:
                return [self.addresses[r] for r in range(self.np)]
            reported = len(self.addresses)
        code = self._code_after(2.0)
        tail = "\n".join(self.tail)
        told = f"; its output ended with:\n{tail}" if tail else "; it printed nothing"
        what = f"{reported} of its {self.np} ranks reported an address"
        if code is None and self._ended < 2:
            raise LaunchTimeoutError(
                f"mpiexec (pid {self.proc.pid}): only {what} within {seconds(timeout)} s "
                f"(PYDIST_WORKER_TIMEOUT){told}",
                tail,
                self.proc.pid,
            )
        raise LaunchError(
            f"mpiexec (pid {self.proc.pid}) exited with code {code} before its ranks joined "
            f"({what}){told}",
            tail,
            self.proc.pid,
        )

    def _code_after(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- ending ------------------------------------------------------------------------------

    def joined(self, rank: int) -> None:
        with self._lock:
            self._joined.add(rank)

    def left(self, rank: int) -> None:
        """Rank ``rank``'s worker left the cluster; the last one to leave ends the job."""
        with self._lock:
            self._joined.discard(rank)
            last = not self._joined and not self._stopping
            if last:
                self._stopping = True
        if last:
            threading.Thread(target=self.stop, name="pydist-mpiexec-stop", daemon=True).start()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """End mpiexec and its ranks: ``grace`` seconds to exit by itself, then SIGTERM, then
        SIGKILL; reaped. Never raises."""
        with self._lock:
            self._stopping = True
        if self._code_after(grace) is None:
            for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
                try:
                    self.proc.send_signal(sig)
                except OSError:
                    pass
                if self._code_after(wait) is not None:
                    break
        _jobs.discard(self)

    def close_readers(self) -> None:
        """Close the read ends nobody will relay (a launch that failed)."""
        for f in (*self.stdout, *self.stderr):
            try:
                f.close()
            except OSError:
                pass


def _end_all() -> None:
    """At the master's exit: end the jobs still running (their workers were told to exit by the
    cluster's own shutdown, when it ran first, and end by themselves)."""
    jobs = list(_jobs)
    threads = [threading.Thread(target=job.stop, args=(2.0,), daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2.0 + 2 * KILL_GRACE + 1.0)


atexit.register(_end_all)
