"""MPI benchmark: workers started by ``MPIManager(n)`` (ranks of one mpiexec job) vs
``addprocs(n)`` (local workers), on the same machine, in one run.

Run from the repository root (needs Open MPI's mpiexec and mpi4py)::

    python bench/bench_mpi.py [--rounds N] [--sizes 2,4] [--json FILE]

What it measures, for each worker count ``n`` (default 2 and 4; 4 is more ranks than this
machine's 2 cores, so mpiexec runs oversubscribed):

- **join**: the wall time of ``addprocs(MPIManager(n))`` (mpiexec's start, the ranks' start,
  mpi4py's import and ``MPI_Init``, the cookie's broadcast, each rank's address, the joins) vs
  ``addprocs(n)``, until it returns with the ``n`` workers joined;
- **pmap**: ``pmap(f, range(1000))`` of a small task (``x + 1``) over those ``n`` workers: the
  median of 5 maps after one warm-up map;
- **remove**: the wall time of ``rmprocs`` of all of them (for MPI: until mpiexec has exited).

Each contender runs in a fresh process of its own (``--child``), in rounds (each round runs
every contender once, so that a slow spell of this shared machine hits them all alike); the
figures are medians over rounds, and the ratio column is MPI / local.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
CHILD_TIMEOUT = 300.0
TASKS = 1000
# Open MPI refuses to run as root without these; more ranks than cores need oversubscription
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


def _small(x: int) -> int:
    return x + 1


def child(kind: str, n: int) -> dict[str, Any]:
    from pydistributed import addprocs, pmap, rmprocs

    t0 = time.perf_counter()
    if kind == "mpi":
        from pydistributed.managers import MPIManager

        manager = MPIManager(n)
        pids = addprocs(manager, env=MPI_ENV)
    else:
        pids = addprocs(n)
    join = time.perf_counter() - t0
    assert len(pids) == n
    data = list(range(TASKS))
    expected = [x + 1 for x in data]
    assert pmap(_small, data) == expected  # warm-up: the function reaches every worker
    maps = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = pmap(_small, data)
        maps.append(time.perf_counter() - t0)
        assert out == expected
    t0 = time.perf_counter()
    rmprocs(pids, waitfor=60)
    if kind == "mpi":
        for job in manager.jobs:
            job.proc.wait(timeout=30)
    remove = time.perf_counter() - t0
    return {"join": join, "pmap": statistics.median(maps), "remove": remove}


def run_child(kind: str, n: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, "--n", str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{kind} n={n}: exited with {proc.returncode}: {last}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="2,4")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=("mpi", "local"), default=None)
    parser.add_argument("--n", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.n)), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for n in sizes:
            for kind in ("local", "mpi"):
                result = run_child(kind, n)
                samples.setdefault((kind, n), []).append(result)
                print(
                    f"round {r + 1}: {kind:5} n={n}: join {result['join']:.3f} s, "
                    f"pmap {result['pmap'] * 1000:.1f} ms, remove {result['remove']:.3f} s",
                    file=sys.stderr,
                )
    print(f"\nmedians over {args.rounds} rounds, {os.cpu_count()} CPUs; pmap of {TASKS} tasks")
    print(f"{'n':>2}  {'figure':8} {'local':>10} {'MPI':>10} {'MPI/local':>10}")
    for n in sizes:
        for key, unit, scale in (("join", "s", 1.0), ("pmap", "ms", 1000.0), ("remove", "s", 1.0)):
            local = statistics.median(s[key] for s in samples[("local", n)]) * scale
            mpi = statistics.median(s[key] for s in samples[("mpi", n)]) * scale
            print(
                f"{n:>2}  {key:8} {local:>8.3f} {unit:2} {mpi:>7.3f} {unit:2} {mpi / local:>9.2f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k}/{n}": v for (k, n), v in samples.items()}, f, indent=1)


if __name__ == "__main__":
    main()
