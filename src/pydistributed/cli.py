"""``pydist [-p N|auto] [--machine-file FILE] [SCRIPT [ARGS...]]``: python with workers.

Like ``julia -p N``: adds ``N`` local workers (or one per line of the machine file), then runs
``SCRIPT`` as ``__main__`` with ``ARGS`` in ``sys.argv``; without a script, an interactive
prompt. Machine-file lines: ``[count*][user@]host[:port] [bind_addr[:port]]``.
"""

from __future__ import annotations

import argparse
import code
import os
import runpy
import sys
from typing import Any


def parse_machine_file(path: str) -> list[Any]:
    """The machine specs of a machine file: ``spec`` or ``(spec, count)`` per line."""
    machines: list[Any] = []
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            count_s, star, spec = line.partition("*")
            if star and count_s.strip().isdigit():
                machines.append((spec.strip(), int(count_s)))
            else:
                machines.append(line)
    return machines


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
        prog="pydist", description="Run Python with pydistributed workers already added."
    )
    parser.add_argument("-p", "--procs", type=_nprocs, default=None, metavar="N|auto")
    parser.add_argument("--machine-file", default=None, metavar="FILE")
    parser.add_argument("script", nargs="?", default=None)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)

    if ns.script is not None:
        # the script's folder first, as `python SCRIPT` does, before workers copy sys.path
        sys.path.insert(0, os.path.dirname(os.path.abspath(ns.script)))
    else:
        sys.path.insert(0, "")

    from pydistributed import addprocs

    if ns.procs:
        addprocs(ns.procs)
    if ns.machine_file:
        addprocs(parse_machine_file(ns.machine_file))

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
