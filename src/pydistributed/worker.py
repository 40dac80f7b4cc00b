"""``python -m pydistributed.worker [--cookie C] [--bind-to HOST[:PORT]]``: a worker process.

Reads the cookie from the first line of standard input unless ``--cookie`` is given (local
workers always get it on stdin, never on the command line), listens on ``HOST`` (default
127.0.0.1) and a free port unless one is given, prints ``pydist_worker:PORT#HOST`` and serves
until its connection to the master closes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _apply_sys_path() -> None:
    """Start with the master's sys.path (set by LocalManager), so its modules import here."""
    raw = os.environ.pop("PYDIST_SYS_PATH", None)
    if not raw:
        return
    try:
        master = [p for p in json.loads(raw) if isinstance(p, str)]
    except ValueError:
        return
    sys.path[:] = master + [p for p in sys.path if p not in master and p != ""]


def _die_with_parent() -> None:
    """Ask the kernel to kill this worker when its parent, the master, dies (local workers).

    The master's connection closing makes a worker exit, but only a thread of the worker can
    notice that; a call stuck in C code holding the GIL would outlive the master. The kernel
    does not need the GIL.
    """
    raw = os.environ.pop("PYDIST_PARENT_PID", None)
    if not raw or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig, sigkill = 1, 9
        libc.prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != raw:  # the master died before we asked
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pydistributed.worker")
    parser.add_argument("--cookie", default=None, help="the cluster cookie (default: stdin)")
    parser.add_argument("--bind-to", default=None, metavar="HOST[:PORT]")
    args = parser.parse_args(argv)
    _die_with_parent()
    _apply_sys_path()
    from pydistributed.processes import start_worker

    start_worker(sys.stdout, args.cookie, bind_to=args.bind_to)


if __name__ == "__main__":
    main()
