"""An MPI rank as a pydistributed worker: mpi4py, the address to listen on, serving, the end.

Used by ``python -m pydistributed.mpi`` (``mpi.py``) in both of its modes. A worker rank
serves like any worker (``serve.Server``), with two differences:

- Its end. A worker ends with ``os._exit`` (``execution.exit_process``); a rank that ended so
  would not have called ``MPI_Finalize``, and ``mpiexec`` would report it and abort the job.
  So a worker rank's ``Server.exit`` closes its connections first (the master sees it leave at
  once), then calls ``MPI_Finalize`` and only then ``os._exit``. Open MPI's ``MPI_Finalize``
  waits for every rank of the job to call it (a fence): a rank removed early waits there,
  holding no connection, until the job ends.
- Where it listens. A rank on the host of the master (by hostname) listens on 127.0.0.1, as a
  local worker does; a rank on another host listens on every interface and reports this host's
  primary address (``sockets.primary_ip``), since the master must reach it over the network.

mpi4py is optional (``pip install 'pydistributed[mpi]'``): :func:`import_mpi` raises an
``ImportError`` that names the fix.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from . import handshake
from .cluster import Cluster, set_current_cluster
from .managers.mpijob import TAG

__all__ = ["MISSING_MPI4PY", "TaggedStream", "bind_host", "import_mpi", "rank_of", "serve_rank"]

MISSING_MPI4PY = (
    "pydistributed.mpi needs mpi4py, which cannot be imported here ({error}); install it with "
    "pip install 'pydistributed[mpi]' (it needs an MPI library, e.g. Debian's openmpi-bin "
    "and libopenmpi-dev)"
)


def import_mpi() -> Any:
    """``mpi4py.MPI`` (which initializes MPI).

    Raises:
        ImportError: mpi4py (or the MPI library under it) cannot be imported; the message
            names the fix.
    """
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(MISSING_MPI4PY.format(error=e)) from e
    return MPI


def rank_of() -> str:
    """This process's rank as the MPI launcher announced it (before MPI is initialized):
    Open MPI's, PMIx's, MPICH's or Slurm's variable; ``"?"`` when none is set."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value is not None:
            return value
    return "?"


def bind_host(master_host: str) -> str:
    """Where a worker rank listens: loopback on the master's host, every interface elsewhere."""
    return "127.0.0.1" if socket.gethostname() == master_host else "0.0.0.0"


class TaggedStream:
    """A text stream that writes each whole line as ``pydist_rank:R\\t<line>`` to ``raw``.

    Lines are written whole, one ``write`` each, so that mpiexec never splits one. ``flush``
    writes an unfinished line too (ended with a newline).
    """

    def __init__(self, raw: Any, rank: int | str) -> None:
        self.raw = raw
        self.prefix = f"{TAG}{rank}\t"
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            data = self._partial + text
            *lines, self._partial = data.split("\n")
            if lines:
                self.raw.write("".join(f"{self.prefix}{line}\n" for line in lines))
                self.raw.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self.raw.write(f"{self.prefix}{self._partial}\n")
                self._partial = ""
            self.raw.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.raw.fileno())

    @property
    def encoding(self) -> str:
        return str(getattr(self.raw, "encoding", "utf-8"))


class _AddressReport:
    """The ``out`` of a worker rank whose address goes to rank 0 over MPI, not on stdout: the
    banner ``pydist_worker:PORT#HOST`` that ``Server.serve`` writes is handed to ``report``."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self._text = ""

    def write(self, text: str) -> int:
        self._text += text
        return len(text)

    def flush(self) -> None:
        line, self._text = self._text.strip(), ""
        if line:
            self._report(line)


def serve_rank(
    mpi: Any, cookie: str, host: str, out: Any = None, report: Callable[[str], None] | None = None
) -> NoReturn:
    """Make this rank a worker listening on ``host``; never returns.

    Its banner goes to ``out`` (MPIManager's ranks: the master reads it from mpiexec's
    stdout), or to ``report`` (``mpiexec ... python -m pydistributed.mpi SCRIPT``: to rank 0
    over MPI). The process ends through :func:`_finalize_and_exit`.
    """
    c = Cluster(0, handshake.check_cookie(cookie), role="worker")
    set_current_cluster(c)
    # no watchdog process (serve.py): it would kill this rank while it waits in MPI_Finalize
    # for the others, and mpiexec would abort the job. The rank's life is tied to the job's
    # instead: mpiexec ends every rank when one dies, and MPIManager's mpiexec dies with the
    # master (managers/mpijob.py)
    c.server.watchdog = False
    ending = _Ending()

    def end(code: int) -> None:
        _finalize_and_exit(mpi, c, code, ending)

    c.server.exit = end  # type: ignore[method-assign]
    if report is not None:
        out = _AddressReport(report)
    c.server.serve(host, 0, out if out is not None else sys.stdout)


class _Ending:
    """Who is ending the process: the first caller; the others wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: int | None = None


def _finalize_and_exit(mpi: Any, cluster: Cluster, code: int, ending: _Ending) -> None:
    """A worker rank's end: close its connections, ``MPI_Finalize``, ``os._exit(code)``.

    Called from whichever thread learns that the worker must go (the master's Exit, its
    connection closing); a second caller waits here for the first to end the process. Closing
    a connection calls this again on the same thread (the connection's loss): that call
    returns at once, and the first one goes on.
    """
    if ending.owner == threading.get_ident():
        return
    ending.lock.acquire()  # never released: the process ends below
    ending.owner = threading.get_ident()
    for peer in list(cluster.connections.snapshot().values()):
        try:
            peer.close("this MPI rank is exiting")
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        if not mpi.Is_finalized():
            mpi.Finalize()
    except Exception:
        pass
    os._exit(code)
