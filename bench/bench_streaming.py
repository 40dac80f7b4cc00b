"""Issue 13's channel rows: worker-to-master streaming and the manual's jobs/results pattern,
each beside its ``multiprocessing`` peer measured in the same run.

Run from the repository root (``python bench/run.py`` runs it too, as workload ``CH``)::

    python bench/bench_streaming.py [--quick] [--json FILE]

What it measures, each side in a fresh process of its own (``--child``), in rounds:

- **CH1 streaming, worker to master**: small ints put on worker 2 into
  ``RemoteChannel(() -> Channel(1000))`` owned by the master, which takes them locally; items
  per second from the call that starts the producer to the last item taken. With the plain
  ``put`` (a round trip per item; fewer items, it is slow) and with ``rc.stream()``. Peer: a
  ``multiprocessing.Queue(1000)`` from a spawned child to its parent, timed from a start signal
  (start-up excluded). Target: the stream >= 0.5 x the peer.
- **CH2 jobs/results**: the Julia manual's pattern (``examples/jobs_results.py``): two
  ``RemoteChannel(() -> Channel(32))`` on the master, a feeder thread there putting 2,000 job
  ids then closing ``jobs``, 2 workers each looping ``for job in jobs: sleep(1 ms);
  put(results, ...)``, the master taking the 2,000 results; seconds from the first job to the
  last result (the workers' loops started and waiting already, as the peer's processes are).
  With the plain ``take``/``put``, and with the jobs taken ahead
  (``jobs.consume()``: up to 8 leased to each worker, fetched in one request) and the
  results streamed (``results.stream(linger=0.005)``: a result waits up to 5 ms for others
  to share its message).
  Peer: the same with two ``multiprocessing.Queue(32)`` and 2 spawned processes (a ``None``
  per worker ends them). Target: the streamed version <= 1.0 x the peer.

Every figure is the median of its rounds; ratios are between figures of this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

N_STREAM = {False: 100_000, True: 20_000}
N_PLAIN = {False: 10_000, True: 3_000}  # the plain put: a round trip per item
N_JOBS = 2000
JOB_S = 0.001
LINGER = 0.005  # the results stream's linger in CH2 (5 jobs' time)
CHANNEL_SIZE = 1000
JOBS_SIZE = 32
WORKERS = 2
CHILD_TIMEOUT = {True: 240.0, False: 600.0}


def _rounds(quick: bool) -> int:
    return 1 if quick else 3


# -- run on the workers (by reference: bench/ is on their path) ---------------------------------


def produce_plain(rc: Any, n: int) -> int:
    for i in range(n):
        rc.put(i)
    return n


def produce_stream(rc: Any, n: int) -> int:
    with rc.stream() as s:
        for i in range(n):
            s.put(i)
    return n


def do_work(jobs: Any, results: Any, stream: bool) -> int:
    """The manual's ``do_work``: take jobs until ``jobs`` is closed, put one result each.
    ``stream``: take jobs ahead (``jobs.consume()``) and stream the results."""
    from pydistributed import myid

    me, done = myid(), 0
    if stream:
        with jobs.consume() as c, results.stream(linger=LINGER) as s:
            for job in c:
                time.sleep(JOB_S)
                s.put((job, me))
                done += 1
    else:
        for job in jobs:
            time.sleep(JOB_S)
            results.put((job, me))
            done += 1
    return done


def _mp_produce(q: Any, n: int, go: Any) -> None:
    go.wait()
    for i in range(n):
        q.put(i)


def _mp_feed(jobs: Any, workers: int) -> None:
    for i in range(1, N_JOBS + 1):
        jobs.put(i)
    for _ in range(workers):
        jobs.put(None)  # one end mark per worker


def _mp_work(jobs: Any, results: Any) -> None:
    me = os.getpid()
    while True:
        job = jobs.get()
        if job is None:
            return
        time.sleep(JOB_S)
        results.put((job, me))


# -- in the children -----------------------------------------------------------------------------


def _child_pydist(quick: bool) -> dict[str, Any]:
    import bench_streaming as bs  # by reference, so that the workers import it too

    from pydistributed import Channel, RemoteChannel, addprocs, fetch, remotecall, rmprocs

    ws = addprocs(WORKERS)
    try:

        def stream(f: Any, n: int) -> float:
            rc = RemoteChannel(lambda: Channel(CHANNEL_SIZE))  # on the master
            t0 = time.perf_counter()
            p = remotecall(f, ws[0], rc, n)
            total = 0
            for _ in range(n):
                total += rc.take(timeout=120)
            dt = time.perf_counter() - t0
            assert fetch(p) == n and total == n * (n - 1) // 2
            return n / dt

        def jobs_results(stream: bool, n: int) -> float:
            jobs = RemoteChannel(lambda: Channel(JOBS_SIZE))
            results = RemoteChannel(lambda: Channel(JOBS_SIZE))

            def make_jobs() -> None:
                for i in range(1, n + 1):
                    jobs.put(i)
                jobs.close()

            # the workers' loops start and wait for jobs first, as multiprocessing's processes
            # do (started 1 s before the clock starts): both clocks time the jobs alone
            loops = [remotecall(bs.do_work, w, jobs, results, stream) for w in ws]
            time.sleep(0.2)
            t0 = time.perf_counter()
            feeder = threading.Thread(target=make_jobs, daemon=True)
            feeder.start()
            got = sorted(results.take(timeout=120)[0] for _ in range(n))
            dt = time.perf_counter() - t0
            feeder.join(30)
            assert sum(fetch(f) for f in loops) == n and got == list(range(1, n + 1))
            return dt

        stream(bs.produce_plain, 500)  # warm up
        stream(bs.produce_stream, 5000)
        jobs_results(False, 100)
        jobs_results(True, 100)
        out: dict[str, Any] = {"plain": [], "stream": [], "jobs_plain": [], "jobs_stream": []}
        for _ in range(_rounds(quick)):
            out["plain"].append(stream(bs.produce_plain, N_PLAIN[quick]))
            out["stream"].append(stream(bs.produce_stream, N_STREAM[quick]))
            out["jobs_plain"].append(jobs_results(False, N_JOBS))
            out["jobs_stream"].append(jobs_results(True, N_JOBS))
        return out
    finally:
        rmprocs(ws, waitfor=20)


def _child_mp(quick: bool) -> dict[str, Any]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as pydistributed's workers
    n = N_STREAM[quick]
    out: dict[str, Any] = {"stream": [], "jobs": []}
    for _ in range(_rounds(quick)):
        q, go = ctx.Queue(CHANNEL_SIZE), ctx.Event()
        p = ctx.Process(target=_mp_produce, args=(q, n, go))
        p.start()
        time.sleep(1.0)  # started and waiting
        t0 = time.perf_counter()
        go.set()
        total = 0
        for _ in range(n):
            total += q.get()  # (no timeout: its slower path; the child has a time limit)
        out["stream"].append(n / (time.perf_counter() - t0))
        assert total == n * (n - 1) // 2
        p.join(30)

        jobs, results = ctx.Queue(JOBS_SIZE), ctx.Queue(JOBS_SIZE)
        procs = [ctx.Process(target=_mp_work, args=(jobs, results)) for _ in range(WORKERS)]
        for p in procs:
            p.start()
        time.sleep(1.0)

        t0 = time.perf_counter()
        feeder = threading.Thread(target=_mp_feed, args=(jobs, len(procs)), daemon=True)
        feeder.start()
        got = sorted(results.get()[0] for _ in range(N_JOBS))
        out["jobs"].append(time.perf_counter() - t0)
        feeder.join(30)
        assert got == list(range(1, N_JOBS + 1))
        for p in procs:
            p.join(30)
    return out


def _child(name: str, quick: bool) -> None:
    result = {"pydist": _child_pydist, "mp": _child_mp}[name](quick)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# -- in the parent -------------------------------------------------------------------------------


def _measure(name: str, quick: bool) -> dict[str, Any]:
    import run as harness  # bench/run.py: fresh processes, leftovers reported and killed

    argv = [sys.executable, os.path.abspath(__file__), "--child", name]
    if quick:
        argv.append("--quick")
    timeout = CHILD_TIMEOUT[quick]
    child = harness.run_child(argv, timeout, harness.Tags())
    lines = [ln for ln in child.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if child.returncode == 0 and lines:
        out: dict[str, Any] = json.loads(lines[-1][len("BENCH_RESULT ") :])
    else:
        out = {"error": harness.failure_text(child, timeout)}
    if child.leftovers:
        out["leftovers"] = child.leftovers
    return out


def _row(workload: str, label: str, role: str, unit: str, samples: list[float]) -> dict[str, Any]:
    return {
        "workload": workload,
        "label": label,
        "role": role,
        "unit": unit,
        "figure": statistics.median(samples) if samples else None,
        "samples": samples,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure CH1 and CH2; one dict per row (keys as in ``bench_channels.run``)."""
    mine = _measure("pydist", quick)
    peer = _measure("mp", quick)
    ns, npl = N_STREAM[quick], N_PLAIN[quick]
    rows = [
        _row(
            "CH1",
            f"multiprocessing.Queue({CHANNEL_SIZE}), child -> parent, {ns:,} items",
            "baseline",
            "items/s",
            peer.get("stream", []),
        ),
        _row(
            "CH1",
            f"RemoteChannel on the master, rc.put from w2, {npl:,} items",
            "pydist",
            "items/s",
            mine.get("plain", []),
        ),
        _row(
            "CH1",
            f"the same, rc.stream() from w2, {ns:,} items",
            "pydist",
            "items/s",
            mine.get("stream", []),
        ),
        _row(
            "CH2",
            f"two multiprocessing.Queue({JOBS_SIZE}), {WORKERS} processes",
            "baseline",
            "s",
            peer.get("jobs", []),
        ),
        _row(
            "CH2",
            f"two RemoteChannels, {WORKERS} workers, put (the manual's pattern)",
            "pydist",
            "s",
            mine.get("jobs_plain", []),
        ),
        _row(
            "CH2",
            f"the same, jobs.consume(), results.stream(linger={LINGER:g})",
            "pydist",
            "s",
            mine.get("jobs_stream", []),
        ),
    ]
    rows[2].update(target="rc.stream() >= 0.5 x multiprocessing.Queue", limit=0.5)
    rows[5].update(target="consume + stream <= 1.0 x multiprocessing.Queue", limit=1.0)
    for src, idx in ((peer, (0, 3)), (mine, (1, 2, 4, 5))):
        for extra in ("error", "leftovers"):
            if extra in src:
                for i in idx:
                    rows[i][extra] = src[extra]
    for workload in ("CH1", "CH2"):
        group = [r for r in rows if r["workload"] == workload]
        base = group[0]
        for r in group[1:]:
            if base["figure"] and r["figure"] is not None:
                r["x_base"] = r["figure"] / base["figure"]
            if "target" in r:
                if "x_base" not in r:
                    r["verdict"] = "n/a"
                elif r["unit"] == "s":
                    r["verdict"] = "PASS" if r["x_base"] <= r["limit"] else "MISS"
                else:
                    r["verdict"] = "PASS" if r["x_base"] >= r["limit"] else "MISS"
    return rows


TITLES = {
    "CH1": "worker-to-master channel streaming (small ints, items/s)",
    "CH2": f"jobs/results: {N_JOBS:,} jobs of {JOB_S * 1e3:g} ms over two channels, "
    f"{WORKERS} workers (s)",
}


def _fmt(row: dict[str, Any]) -> str:
    v = row["figure"]
    if v is None:
        return "-"
    return f"{v:.3f} s" if row["unit"] == "s" else f"{v:,.0f} {row['unit']}"


def report(rows: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for workload, title in TITLES.items():
        out.append(f"{workload}  {title}")
        for r in (r for r in rows if r["workload"] == workload):
            line = f"  {r['label']:<62} {_fmt(r):>16}"
            if "x_base" in r:
                line += f"   {r['x_base']:.2f} x baseline"
            if len(r["samples"]) > 1:
                lo, hi = min(r["samples"]), max(r["samples"])
                line += (
                    f"   [{lo:.3f}..{hi:.3f}]" if r["unit"] == "s" else f"   [{lo:,.0f}..{hi:,.0f}]"
                )
            if "error" in r:
                line += f"   ERROR {r['error']}"
            out.append(line)
            if "leftovers" in r:
                out.append(f"  note: {len(r['leftovers'])} leftover processes were killed")
        for r in rows:
            if r["workload"] == workload and "target" in r:
                out.append(f"  target: {r['target']}: {r['verdict']}")
        out.append("")
    return "\n".join(out)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows as ``bench/run.py`` keeps a workload's results (with one target verdict)."""
    verdicts = [r["verdict"] for r in rows if "verdict" in r]
    verdict = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "MISS"
    if any(v == "n/a" for v in verdicts):
        verdict = "n/a"
    return {"title": "; ".join(TITLES.values()), "rows": rows, "target": {"verdict": verdict}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer items and rounds")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.quick)
        return 0
    rows = run(args.quick)
    print(report(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
