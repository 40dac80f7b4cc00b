"""``pydist [-p N|auto] [SCRIPT [ARGS...]]``: python with workers.

Like ``julia -p N``: adds ``N`` local workers, then runs ``SCRIPT`` as ``__main__`` with
``ARGS`` in ``sys.argv``; without a script, an interactive prompt. ``--machine-file FILE``
(Julia's SSH workers, one per line ``[count*][user@]host[:port] [bind_addr[:port]]``) is not
implemented yet: it is refused with a clear message and exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import code
import os
import runpy
import sys


def _nprocs(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-p takes a number or 'auto', not {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("-p takes a non-negative number")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pydist",
        description="Run Python with pydistributed workers already added (like julia -p N).",
        epilog="example: pydist -p 2 examples/hello.py",
    )
    parser.add_argument(
        "-p",
        "--procs",
        type=_nprocs,
        default=None,
        metavar="N|auto",
        help="add N local workers before the script runs (auto: one per CPU)",
    )
    parser.add_argument(
        "--machine-file",
        default=None,
        metavar="FILE",
        help="SSH workers, one per line of FILE: not implemented yet in this version (refused)",
    )
    parser.add_argument(
        "script", nargs="?", default=None, help="the script to run (default: a prompt)"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    ns = parser.parse_args(argv)
    if ns.machine_file:
        parser.error(
            "--machine-file: SSH workers are not implemented yet in this version of "
            "pydistributed; use -p N for local workers"
        )

    if ns.script is not None:
        # the script's folder first, as `python SCRIPT` does, before workers copy sys.path
        sys.path.insert(0, os.path.dirname(os.path.abspath(ns.script)))
    else:
        sys.path.insert(0, "")

    from pydistributed import addprocs

    if ns.procs:
        addprocs(ns.procs)

    if ns.script is None:
        code.interact(local={"__name__": "__main__"})
        return 0
    sys.argv = [ns.script, *ns.args]
    try:
        runpy.run_path(ns.script, run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
