"""Slurm benchmark: workers from ``SlurmManager`` vs local workers, in one run.

Run from the repository root::

    python bench/bench_slurm.py [--rounds N] [--sizes 2,8] [--json FILE]

With ``SLURM_CONF`` set (and its controller answering) it submits to that Slurm; otherwise it
starts a one-node Slurm of its own for the run (munged + slurmctld + slurmd on free ports,
``tests/slurm/slurmd.py``; root, and the Debian packages ``slurmctld slurmd slurm-client
munge``) and stops it at the end.

For each size ``n`` (default 2, and 8: more tasks than the node's CPUs, with ``--overcommit``)
and each kind, a fresh process (``--child``) measures:

- **add**: the wall time of ``addprocs(n)`` (local) or ``addprocs(SlurmManager(n,
  overcommit=True))`` (slurm), from the call until it returns with ``n`` workers joined;
  ``slurm-lo`` is the same with ``bind_to="127.0.0.1"``: the workers listen on loopback, so
  the master reaches them through their Unix-socket twins, as it reaches local workers
  (``slurm`` workers report the node's address and are reached over TCP, as on a real
  cluster, where they run on other nodes);
- **pmap**: ``pmap(inc, range(1000))`` on those ``n`` workers (``inc`` is ``x + 1``, sent by
  reference from ``bench/_pmap_funcs.py``), after one warm-up ``pmap`` of 100.

The children run in rounds, each round running every (kind, size) once, so that a slow spell
of the machine hits them all alike; the figures are medians over rounds, with ``slurm/local``
ratios. On one node a Slurm worker is a local process started by slurmd, so the ratios show
what Slurm adds (submission, scheduling, srun's I/O), not a network.
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
BENCH = os.path.join(ROOT, "bench")
KINDS = ("local", "slurm", "slurm-lo")
CHILD_TIMEOUT = 300.0
TASKS = 1000


def child(kind: str, n: int) -> dict[str, Any]:
    sys.path[:0] = [SRC, BENCH]
    from _pmap_funcs import inc

    from pydistributed import addprocs, pmap, rmprocs
    from pydistributed.managers import SlurmManager

    t = time.perf_counter()
    if kind == "local":
        pids = addprocs(n)
    else:
        bind = "127.0.0.1" if kind == "slurm-lo" else "0.0.0.0"
        manager = SlurmManager(n, overcommit=True, timeout=120, progress=False, bind_to=bind)
        pids = addprocs(manager)
    add = time.perf_counter() - t
    assert len(pids) == n
    pmap(inc, range(100))
    t = time.perf_counter()
    out = pmap(inc, range(TASKS))
    took = time.perf_counter() - t
    assert out == [x + 1 for x in range(TASKS)]
    rmprocs(pids, waitfor=30)
    return {"add": add, "pmap": took}


def _slurm_up() -> bool:
    if not os.environ.get("SLURM_CONF"):
        return False
    try:
        r = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def run_child(kind: str, n: int) -> dict[str, Any] | None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, BENCH, ROOT]))
    try:
        r = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(n)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        print(f"  {kind} n={n}: ERROR timed out after {CHILD_TIMEOUT:g} s", file=sys.stderr)
        return None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {kind} n={n}: ERROR {last}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="2,8", help="worker counts, comma-separated")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every sample")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    own = None
    if not _slurm_up():
        sys.path.insert(0, ROOT)
        from tests.slurm.slurmd import SlurmCluster, why_no_slurm

        why = why_no_slurm()
        if why:
            sys.exit(f"bench_slurm: no Slurm to submit to (SLURM_CONF unset) and {why}")
        own = SlurmCluster()
        own.start()
        os.environ["SLURM_CONF"] = str(own.conf)
        print(f"(a one-node Slurm of its own: {own.conf})")
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for n in sizes:
                for kind in KINDS:
                    result = run_child(kind, n)
                    if result is not None:
                        samples.setdefault((kind, n), []).append(result)
    finally:
        if own is not None:
            own.stop()
    print(f"\n{'n':>3} {'kind':>8} {'addprocs s':>11} {'pmap 1000 s':>12}  (medians)")
    med: dict[tuple[str, int], dict[str, float]] = {}
    for n in sizes:
        for kind in KINDS:
            got = samples.get((kind, n))
            if not got:
                print(f"{n:>3} {kind:>8} {'ERROR':>11}")
                continue
            m = {k: statistics.median(s[k] for s in got) for k in ("add", "pmap")}
            med[(kind, n)] = m
            print(f"{n:>3} {kind:>8} {m['add']:>11.3f} {m['pmap']:>12.3f}")
        for kind in KINDS[1:]:
            if ("local", n) in med and (kind, n) in med:
                a, b = med[("local", n)], med[(kind, n)]
                print(
                    f"{n:>3} {'ratio':>8} {b['add'] / a['add']:>10.2f}x "
                    f"{b['pmap'] / a['pmap']:>11.2f}x  ({kind} / local)"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k}-{n}": v for (k, n), v in samples.items()}, f, indent=1)


if __name__ == "__main__":
    main()
