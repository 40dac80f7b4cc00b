"""``mpiexec -n N python -m pydistributed.mpi SCRIPT [ARGS...]``: an MPI job as a cluster.

Rank 0 becomes process 1 and runs SCRIPT as ``python SCRIPT ARGS`` would (``sys.argv``,
``__main__``, ``sys.path[0]``, the exit status; an uncaught exception prints its traceback and
gives status 1); ranks 1..N-1 become workers 2..N, connected over TCP::

    rank 0 (process 1)                          rank r >= 1 (worker r + 1)
    ------------------                          --------------------------
    cookie = cluster_cookie() (random)
    bcast(cookie, hostname)   ------ MPI ---->  listen (127.0.0.1 on rank 0's host,
                                                every interface elsewhere: mpirank.py)
    gather(addresses)         <----- MPI -----  its address
    addprocs(MPIRanksManager(addresses)):
      connect, authenticate, JoinPGRP ------->  serve calls (a worker like any other)
    run SCRIPT
    at exit: Exit to every worker  ---------->  close its connections; MPI_Finalize;
    MPI_Finalize (mpi4py, at exit)              exit 0
    exit status: the script's

``mpiexec`` (Open MPI) returns the first non-zero exit status of a rank: the script's, since
the workers exit with 0 (and prints a notice that the job was aborted because of it).

``python -m pydistributed.mpi --workers`` is the other mode, used by ``MPIManager``: every rank
is a worker. Rank 0 reads the cookie from its standard input (mpiexec hands its own stdin to
rank 0) and broadcasts it over MPI; each rank prints its banner ``pydist_worker:PORT#HOST`` on
stdout, and every line it writes carries its rank (``pydist_rank:R<TAB>``), so that the master
can tell the ranks' lines apart in mpiexec's output (``managers/mpijob.py``).

Without mpi4py, every rank prints one line saying how to install it and exits with status 1.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
import traceback
from typing import Any, NoReturn

USAGE = "usage: mpiexec -n N python -m pydistributed.mpi SCRIPT [ARGS...]"


def main(argv: list[str] | None = None) -> int:
    """Run this rank's part of the job; rank 0's return value is the script's exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "--workers":
        _workers_mode()
    if not args or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    from .mpirank import import_mpi

    try:
        mpi = import_mpi()
    except ImportError as e:
        print(f"pydistributed.mpi: {e}", file=sys.stderr)
        return 1
    comm = mpi.COMM_WORLD
    if comm.Get_rank() != 0:
        _worker_rank(mpi, comm)
    return _rank_zero(comm, args[0], args[1:])


# -- mpiexec ... python -m pydistributed.mpi SCRIPT -------------------------------------------


def _worker_rank(mpi: Any, comm: Any) -> NoReturn:
    """Ranks 1..N-1: become a worker of rank 0 (see the module's docstring)."""
    from .mpirank import bind_host, serve_rank

    setup = comm.bcast(None, root=0)
    reported = False

    def report(banner: str) -> None:
        nonlocal reported
        reported = True
        comm.gather(banner, root=0)

    try:
        serve_rank(mpi, setup["cookie"], bind_host(setup["host"]), report=report)
    except BaseException as e:
        if not reported:  # rank 0 waits for every rank's address: send the error instead
            comm.gather(f"error: {type(e).__name__}: {e}", root=0)
        raise


def _rank_zero(comm: Any, script: str, args: list[str]) -> int:
    """Rank 0: add the other ranks as workers, then run the script; its exit status."""
    from .cluster import cluster_cookie
    from .processes import addprocs
    from .relay import parse_banner

    cookie = cluster_cookie()
    comm.bcast({"cookie": cookie, "host": socket.gethostname()}, root=0)
    banners = comm.gather(None, root=0)[1:]
    addresses = []
    for rank, banner in enumerate(banners, start=1):
        address = parse_banner(banner) if banner.startswith("pydist_worker:") else None
        if address is None:
            print(f"pydistributed.mpi: rank {rank} could not start: {banner}", file=sys.stderr)
            return 1
        addresses.append(address)
    if addresses:
        from .managers.mpi import MPIRanksManager

        try:
            addprocs(MPIRanksManager(addresses))
        except Exception as e:
            print(f"pydistributed.mpi: the ranks could not join: {e}", file=sys.stderr)
            return 1
    return _run_script(script, args)


def _run_script(script: str, args: list[str]) -> int:
    """Run ``script`` as ``python script args`` would; the exit status it gives."""
    if not os.path.exists(script):
        print(
            f"{sys.executable}: can't open file {os.path.abspath(script)!r}: "
            "[Errno 2] No such file or directory",
            file=sys.stderr,
        )
        return 2
    sys.argv[:] = [script, *args]
    if not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        return _exit_status(e.code)
    except BaseException as e:
        _report(e)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    return 0


def _exit_status(code: object) -> int:
    """The status python gives for ``SystemExit(code)``; a message is printed, as python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stdout.flush()
    print(code, file=sys.stderr)
    return 1


def _report(e: BaseException) -> None:
    """Print ``e`` as python prints an uncaught exception, from the script's first frame."""
    tb = e.__traceback__
    while tb is not None and (
        tb.tb_frame.f_globals is globals() or tb.tb_frame.f_globals is vars(runpy)
    ):
        tb = tb.tb_next
    sys.stdout.flush()
    traceback.print_exception(type(e), e, tb)
    sys.stderr.flush()


# -- mpiexec ... python -m pydistributed.mpi --workers (MPIManager) ------------------------------


def _workers_mode() -> NoReturn:
    """Every rank is a worker of the master that started mpiexec (see the module's docstring)."""
    from .mpirank import TaggedStream, bind_host, import_mpi, rank_of, serve_rank

    sys.stdout = TaggedStream(sys.stdout, rank_of())
    sys.stderr = TaggedStream(sys.stderr, rank_of())
    try:
        mpi = import_mpi()
    except ImportError as e:
        print(f"pydistributed.mpi: {e}", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
    comm = mpi.COMM_WORLD
    cookie = None
    if comm.Get_rank() == 0:
        cookie = sys.stdin.readline().rstrip("\r\n") or None
    cookie = comm.bcast(cookie, root=0)
    if cookie is None:
        print("pydistributed.mpi: no cookie on rank 0's standard input", file=sys.stderr)
        sys.stderr.flush()
        mpi.Finalize()
        sys.exit(1)
    master = os.environ.pop("PYDIST_MPI_MASTER_HOST", socket.gethostname())
    serve_rank(mpi, cookie, bind_host(master), out=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
