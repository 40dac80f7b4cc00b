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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pydistributed.worker")
    parser.add_argument("--cookie", default=None, help="the cluster cookie (default: stdin)")
    parser.add_argument("--bind-to", default=None, metavar="HOST[:PORT]")
    args = parser.parse_args(argv)
    _apply_sys_path()
    from pydistributed.processes import start_worker

    start_worker(sys.stdout, args.cookie, bind_to=args.bind_to)


if __name__ == "__main__":
    main()
