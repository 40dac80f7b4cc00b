"""``Executor.map`` over 10,000 tiny tasks against ``ProcessPoolExecutor(2)``, in one command.

Run from the repository root::

    python bench/bench_executor.py [--reps N] [--n N]

Each contender runs in a fresh process of its own (``--child``) with 2 workers, started and
warmed up before the clock starts; the figure is the wall time of
``list(ex.map(identity, range(n), chunksize=c))``, median of ``--reps`` repetitions, and tasks per
second. Rounds alternate the contenders, so that a slow spell of the machine hits them all
alike. pydistributed is taken from ``src/`` (put ahead of ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

CONTENDERS = [
    ("pydist", 1, "pydistributed Executor().map, chunksize=1"),
    ("ppe", 1, "ProcessPoolExecutor(2).map, chunksize=1"),
    ("pydist", 64, "pydistributed Executor().map, chunksize=64"),
    ("ppe", 64, "ProcessPoolExecutor(2).map, chunksize=64"),
]


def child(kind: str, chunksize: int, n: int) -> float:
    sys.path.insert(0, HERE)
    from _funcs import identity

    if kind == "pydist":
        from pydistributed import Executor, addprocs, rmprocs

        pids = addprocs(2)
        ex = Executor()
    else:
        from concurrent.futures import ProcessPoolExecutor

        pids = []
        ex = ProcessPoolExecutor(2)
    list(ex.map(identity, range(200), chunksize=chunksize))  # warm up: workers up, imports done
    t = time.perf_counter()
    out = list(ex.map(identity, range(n), chunksize=chunksize))
    elapsed = time.perf_counter() - t
    assert out == list(range(n))
    ex.shutdown()
    if pids:
        rmprocs(pids)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(child(args.child[0], int(args.child[1]), args.n))
        return
    path = os.pathsep.join([SRC, HERE, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    samples: dict[int, list[float]] = {i: [] for i in range(len(CONTENDERS))}
    for _ in range(args.reps):
        for i, (kind, chunksize, _label) in enumerate(CONTENDERS):
            out = subprocess.run(
                [sys.executable, __file__, "--n", str(args.n), "--child", kind, str(chunksize)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if out.returncode != 0:
                print(f"ERROR {kind} {chunksize}: {out.stderr.strip().splitlines()[-1:]}")
                continue
            samples[i].append(float(out.stdout.strip().splitlines()[-1]))
    rows = []
    print(f"Executor.map over {args.n} tiny tasks, 2 workers, median of {args.reps} runs")
    for i, (_kind, _chunksize, label) in enumerate(CONTENDERS):
        s = samples[i]
        if not s:
            continue
        med = statistics.median(s)
        rows.append({"label": label, "median_s": med, "samples": s})
        print(
            f"  {label:45s} {med * 1e3:8.1f} ms  {args.n / med:9.0f} tasks/s"
            f"  (spread {min(s) * 1e3:.0f}..{max(s) * 1e3:.0f} ms)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
