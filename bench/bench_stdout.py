"""Printing on a worker: 100k ``print`` calls to its relayed ``sys.stdout``, by the kind of stream.

``python bench/bench_stdout.py [--rounds R] [--lines N]`` (from the repository root). A master
(a child of this script, its own output to ``/dev/null``) starts one local worker; the worker
times ``N`` prints to a stream on its descriptor 1, a pipe the master relays, in rounds that
alternate the kinds, so a slow spell of the machine hits them all alike:

* ``guarded raw``: the worker's ``sys.stdout`` (a ``TextIOWrapper`` over
  ``outputloss.GuardedFileIO``, which swaps a broken pipe for ``/dev/null``);
* ``wrapper``: what a worker's ``sys.stdout`` was before, an ``outputloss.GuardedStream``
  around the interpreter's stream;
* ``plain``: the interpreter's stream unguarded (a fresh ``python``'s), the floor.

Each shows the median of its rounds, us per print, and its ratio to ``wrapper`` and ``plain``
(lower is faster). Not a test: nothing here fails a build.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KINDS = ("guarded raw", "wrapper", "plain")


def _stream(kind: str) -> Any:
    """On the worker: a stream of ``kind`` on descriptor 1, its settings those of sys.stdout."""
    import io

    from pydistributed.outputloss import GuardedStream

    out = sys.stdout
    if kind == "guarded raw":
        return out
    settings = (out.encoding, out.errors, out.write_through)
    raw = io.FileIO(1, "wb", closefd=False)  # the interpreter's kind of raw file
    stream = io.TextIOWrapper(
        raw if settings[2] else io.BufferedWriter(raw),
        encoding=settings[0],
        errors=settings[1],
        newline="\n",
        write_through=settings[2],
    )
    return GuardedStream(stream, 1) if kind == "wrapper" else stream


def _prints(kind: str, n: int) -> float:
    """On the worker: seconds for ``n`` prints to a stream of ``kind``."""
    import time

    stream = _stream(kind)
    start = time.perf_counter()
    for i in range(n):
        print("a line of a worker's output", i, file=stream)
    stream.flush()
    return time.perf_counter() - start


def _master(rounds: int, lines: int) -> None:
    from pydistributed import addprocs, remotecall_fetch, rmprocs

    (w,) = addprocs(1)
    remotecall_fetch(_prints, w, "plain", 1000)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(rounds):
        order = KINDS[r % 3 :] + KINDS[: r % 3]
        for kind in order:
            times[kind].append(remotecall_fetch(_prints, w, kind, lines))
    rmprocs(w, waitfor=30)
    med = {k: statistics.median(v) / lines * 1e6 for k, v in times.items()}
    print(
        f"{lines} prints to a worker's relayed stdout, median of {rounds} rounds:", file=sys.stderr
    )
    for k in KINDS:
        spread = f"{min(times[k]) / lines * 1e6:.2f}..{max(times[k]) / lines * 1e6:.2f}"
        print(
            f"  {k:<12} {med[k]:6.2f} us/print  x wrapper {med[k] / med['wrapper']:.2f}  "
            f"x plain {med[k] / med['plain']:.2f}  (spread {spread})",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--master", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.master:
        _master(args.rounds, args.lines)
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, __file__, "--master", "--rounds", str(args.rounds)]
    cmd += ["--lines", str(args.lines)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env, timeout=1800)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
