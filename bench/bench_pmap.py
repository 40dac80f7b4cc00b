"""pmap benchmarks: W2a, W2b and W5 of DESIGN.md, against multiprocessing, in one command.

Run from the repository root::

    python bench/bench_pmap.py [--quick] [--json FILE]

What it measures, each contender in a fresh process of its own (``--child``), 2 workers:

- **W2a tiny tasks**: ``pmap(inc, range(20_000))`` with ``batch_size=1``, tasks per second;
  peer: ``multiprocessing.Pool(2).map(inc, ..., chunksize=1)``; reference: bare
  ``remotecall_fetch`` calls from one feeder thread per worker (pmap's pattern without pmap),
  measured in the same process as pmap, the two interleaved, so that their ratio shows pmap's
  own per-element overhead. Target: pmap >= the peer.
- **W2b tiny tasks, batched**: the same with ``batch_size="auto"``; peer: ``Pool(2).map`` with its
  default chunking. Target (issue 13): pmap >= the peer. The two run in turn, in ``ROUNDS``
  fresh processes each (pmap, Pool, pmap, Pool...), 5 maps in each after 5 untimed ones; the
  figure is the median of all of them.
- **W5 CPU scaling**: a pure-Python CPU-bound job of >= 1 s serially (``cpu_work`` tasks,
  calibrated in the child), run serially and with ``pmap`` over 2 workers in the same process;
  the figure is the speedup (serial time / pmap time). Peer: the same with ``Pool(2).map``.
  Target: pmap >= 1.9x.

Every figure is the median of its repetitions; ratios are between figures of this same run.
``run(quick)`` returns the rows as dicts (for ``bench/run.py``); ``__main__`` prints them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

N_TINY = 20_000
W5_TASKS = 24
W5_TASK_S = 0.06  # each cpu_work task takes about this long serially (1.4 s in all)
CHILD_TIMEOUT = {True: 90.0, False: 180.0}  # per contender process, quick / full
# W2b's map takes 2 ms, at the mercy of the machine's state, which changes from one process to
# the next (a contender's median moved by 20 % between runs): its contenders run in turn, in
# this many fresh processes each (not with --quick), and all their samples make the figure
ROUNDS = {"W2b": 3}
# maps run before the timed ones, by each contender alike: a fresh process's first few 2 ms
# maps run slower than the rest, pmap's and Pool's (their first 5: up to 1.6x, measured)
WARM_MAPS = {"W2a": 1, "W2b": 5}

# (workload, contender key, label, role)
CONTENDERS: list[tuple[str, str, str, str]] = [
    ("W2a", "pydist", "pydistributed pmap(batch_size=1)", "pydist"),
    ("W2a", "bare", "bare remotecall_fetch, 1 feeder thread per worker", "ref"),
    ("W2a", "mp", "multiprocessing Pool(2).map(chunksize=1)", "peer"),
    ("W2b", "pydist", 'pydistributed pmap(batch_size="auto")', "pydist"),
    ("W2b", "mp", "multiprocessing Pool(2).map (default chunks)", "peer"),
    ("W5", "pydist", "pydistributed pmap over 2 workers", "pydist"),
    ("W5", "mp", "multiprocessing Pool(2).map(chunksize=1)", "peer"),
]
TITLES = {
    "W2a": f"tiny tasks: x + 1 over {N_TINY} ints, batch_size=1, 2 workers",
    "W2b": f'tiny tasks, batched: x + 1 over {N_TINY} ints, batch_size="auto", 2 workers',
    "W5": f"CPU scaling: {W5_TASKS} pure-Python tasks, >= 1 s serially, 2 workers",
}
UNITS = {"W2a": "tasks/s", "W2b": "tasks/s", "W5": "x speedup"}
TARGETS = {
    "W2a": ("pmap >= multiprocessing map(chunksize=1)", 1.0),
    "W2b": ("pmap >= multiprocessing default chunking", 1.0),
    "W5": ("pmap speedup >= 1.9x", None),
}


# -- in the child: one contender measures itself ------------------------------------------------


def _reps(quick: bool, workload: str) -> int:
    if workload == "W2b":
        return 5  # (in each of ROUNDS processes)
    return 1 if quick else 3


def _timed(call: Callable[[], Any], reps: int) -> list[float]:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def _calibrate() -> int:
    """Steps of ``cpu_work`` that take about W5_TASK_S seconds here."""
    from _pmap_funcs import cpu_work

    n = 100_000
    while True:
        t0 = time.perf_counter()
        cpu_work(n)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            return max(1, int(n * W5_TASK_S / dt))
        n *= 2


def _child_pydist(workload: str, contender: str, quick: bool) -> dict[str, Any]:
    from _pmap_funcs import cpu_work, inc

    from pydistributed import addprocs, remotecall_fetch, rmprocs
    from pydistributed.pmap import pmap

    reps = _reps(quick, workload)
    work = list(range(N_TINY))
    want = [x + 1 for x in work]
    steps = _calibrate() if workload == "W5" else 0
    ws = addprocs(2)
    try:
        if workload == "W5":
            tasks = [steps] * W5_TASKS
            pmap(cpu_work, [steps // 10] * 4)  # warm up
            serial = _timed(lambda: [cpu_work(n) for n in tasks], reps)
            parallel = _timed(lambda: pmap(cpu_work, tasks), reps)
            return {
                "samples": [s / p for s, p in zip(serial, parallel, strict=True)],
                "serial_s": statistics.median(serial),
                "parallel_s": statistics.median(parallel),
            }
        if contender == "bare":
            # for reading pmap's per-element overhead: calls alone, one feeder thread per
            # worker, each call waiting for its answer (pmap's pattern without pmap)
            lock = threading.Lock()

            def bare() -> None:
                it = iter(work)

                def feed(w: int) -> None:
                    while True:
                        with lock:
                            x = next(it, None)
                        if x is None:
                            return
                        remotecall_fetch(inc, w, x)

                threads = [threading.Thread(target=feed, args=(w,)) for w in ws]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            def tiny() -> None:
                pmap(inc, work)

            bare()  # warm up
            tiny()
            # interleaved, so that a slow spell of the machine hits both alike
            pairs = [(_timed(tiny, 1)[0], _timed(bare, 1)[0]) for _ in range(reps)]
            return {
                "samples": [N_TINY / b for _, b in pairs],
                "pmap_over_bare": [b / p for p, b in pairs],
            }
        size: int | str = 1 if workload == "W2a" else "auto"
        assert pmap(inc, work, batch_size=size) == want  # warm up, and check
        for _ in range(WARM_MAPS[workload] - 1):
            pmap(inc, work, batch_size=size)
        samples = _timed(lambda: pmap(inc, work, batch_size=size), reps)
        return {"samples": [N_TINY / s for s in samples]}
    finally:
        rmprocs(ws, waitfor=20)


def _child_mp(workload: str, quick: bool) -> dict[str, Any]:
    from _pmap_funcs import cpu_work, inc

    reps = _reps(quick, workload)
    work = list(range(N_TINY))
    steps = _calibrate() if workload == "W5" else 0
    with multiprocessing.Pool(2) as pool:
        if workload == "W5":
            tasks = [steps] * W5_TASKS
            pool.map(cpu_work, [steps // 10] * 4, chunksize=1)
            serial = _timed(lambda: [cpu_work(n) for n in tasks], reps)
            parallel = _timed(lambda: pool.map(cpu_work, tasks, chunksize=1), reps)
            return {
                "samples": [s / p for s, p in zip(serial, parallel, strict=True)],
                "serial_s": statistics.median(serial),
                "parallel_s": statistics.median(parallel),
            }
        if workload == "W2a":
            pool.map(inc, work, chunksize=1)
            samples = _timed(lambda: pool.map(inc, work, chunksize=1), reps)
        else:
            for _ in range(WARM_MAPS[workload]):
                pool.map(inc, work)
            samples = _timed(lambda: pool.map(inc, work), reps)
        return {"samples": [N_TINY / s for s in samples]}


def _child(workload: str, contender: str, quick: bool) -> None:
    if contender == "mp":
        result = _child_mp(workload, quick)
    else:
        result = _child_pydist(workload, contender, quick)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# -- in the parent: run the children, compare ---------------------------------------------------


def _measure(workload: str, contender: str, quick: bool) -> dict[str, Any]:
    import run as harness  # bench/run.py: fresh processes, leftovers reported and killed

    argv = [sys.executable, os.path.abspath(__file__), "--child", workload, contender]
    if quick:
        argv.append("--quick")
    timeout = CHILD_TIMEOUT[quick]
    child = harness.run_child(argv, timeout, harness.Tags())
    lines = [ln for ln in child.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if child.returncode == 0 and lines:
        out: dict[str, Any] = json.loads(lines[-1][len("BENCH_RESULT ") :])
    else:
        out = {"samples": [], "error": harness.failure_text(child, timeout)}
    if child.leftovers:
        out["leftovers"] = child.leftovers
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure W2a, W2b and W5; one dict per contender, with its figure and ratios.

    Keys: ``workload``, ``contender``, ``label``, ``role``, ``unit``, ``figure`` (median; None
    on error), ``samples``, ``x_peer`` (figure / the peer's figure of this run, for pydist and
    the reference), ``target`` and ``verdict`` (pydist rows: ``PASS``, ``MISS`` or ``n/a``),
    and ``error``, ``serial_s``, ``parallel_s``, ``leftovers`` when there are any.
    """
    measured: dict[tuple[str, str], dict[str, Any]] = {}
    for workload in TITLES:
        keys = [key for w, key, _, _ in CONTENDERS if w == workload]
        for _ in range(1 if quick else ROUNDS.get(workload, 1)):
            for key in keys:  # in turn: pydist, the peer, pydist, the peer...
                m = _measure(workload, key, quick)
                got = measured.setdefault((workload, key), {"samples": []})
                got["samples"] += m.pop("samples", [])
                for extra, value in m.items():  # (an error or leftovers of any round stay)
                    got[extra] = got.get(extra, []) + value if isinstance(value, list) else value
    rows: list[dict[str, Any]] = []
    for workload, key, label, role in CONTENDERS:
        m = measured[(workload, key)]
        samples = m["samples"]
        row: dict[str, Any] = {
            "workload": workload,
            "contender": key,
            "label": label,
            "role": role,
            "unit": UNITS[workload],
            "figure": statistics.median(samples) if samples else None,
            "samples": samples,
        }
        for extra in ("error", "serial_s", "parallel_s", "leftovers", "pmap_over_bare"):
            if extra in m:
                row[extra] = m[extra]
        rows.append(row)
    for workload in TITLES:
        mine = [r for r in rows if r["workload"] == workload]
        peer = next((r for r in mine if r["role"] == "peer"), None)
        for r in mine:
            if r["role"] != "peer" and peer and peer["figure"] and r["figure"] is not None:
                r["x_peer"] = r["figure"] / peer["figure"]
            if r["role"] == "pydist":
                text, ratio = TARGETS[workload]
                r["target"] = text
                if r["figure"] is None:
                    r["verdict"] = "n/a"
                elif ratio is None:
                    r["verdict"] = "PASS" if r["figure"] >= 1.9 else "MISS"
                elif "x_peer" not in r:
                    r["verdict"] = "n/a"
                else:
                    r["verdict"] = "PASS" if r["x_peer"] >= ratio else "MISS"
    return rows


def _fmt(row: dict[str, Any]) -> str:
    v = row["figure"]
    if v is None:
        return "-"
    if row["unit"] == "tasks/s":
        return f"{v:,.0f} tasks/s"
    return f"{v:.2f}x"


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as a table, workload by workload."""
    out: list[str] = []
    for workload, title in TITLES.items():
        out.append(f"{workload}  {title}")
        for r in (r for r in rows if r["workload"] == workload):
            line = f"  {r['label']:<52} {_fmt(r):>18}"
            if "x_peer" in r:
                line += f"   {r['x_peer']:.2f} x peer"
            if r.get("samples") and len(r["samples"]) > 1:
                lo, hi = min(r["samples"]), max(r["samples"])
                line += f"   [{lo:,.2f}..{hi:,.2f}]" if hi < 100 else f"   [{lo:,.0f}..{hi:,.0f}]"
            if "pmap_over_bare" in r:
                ratio = statistics.median(r["pmap_over_bare"])
                line += f"   (pmap / bare, measured interleaved in one process: {ratio:.2f})"
            if "serial_s" in r:
                line += f"   (serial {r['serial_s']:.2f} s, parallel {r['parallel_s']:.2f} s)"
            if "error" in r:
                line += f"   ERROR {r['error']}"
            out.append(line)
            if "leftovers" in r:
                out.append(f"  note: {len(r['leftovers'])} leftover processes were killed")
        target = next((r for r in rows if r["workload"] == workload and "target" in r), None)
        if target:
            out.append(f"  target: {target['target']}: {target['verdict']}")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "CONTENDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.quick)
        return 0
    rows = run(args.quick)
    print(report(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
