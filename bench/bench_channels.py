"""RemoteChannel benchmarks (issue 3), each against a baseline measured in the same run.

Run from the repository root::

    python bench/bench_channels.py [--quick] [--json FILE]

What it measures, each contender in a fresh process of its own (``--child``):

- **C1 latency**: from the master, a ``put`` then a ``take`` on a ``RemoteChannel`` owned by
  a worker (the value goes there and back), against ``remotecall_fetch(identity, w, 1)``
  (the value goes there and back too), both interleaved in blocks in one process so that
  a slow spell of the machine hits both alike. Every channel operation is one round trip,
  so a pair is two; the row "per operation" halves it. Target: pair <= 1.3 x the call.
- **C2 streaming**: 100,000 small ints through ``RemoteChannel(lambda: Channel(1000), w)``,
  the producer on worker 2, the consumer on worker 3, the channel on the consumer (its
  takes are local, every put is a round trip from worker 2); items per second from the
  start of both loops to the last item taken. Peer: a ``multiprocessing.Queue(1000)``
  between two processes (spawned; timed from a start signal, start-up excluded). For
  reading: the channel on the producer and on the master, and the rate of bare
  ``remotecall_fetch`` calls from worker 2 to worker 3 (the ceiling of one round trip per
  item), and the same stream put as lists of 100 items (what batching gives with the
  semantics unchanged). Target: >= 1 x the peer.

Every figure is the median of its rounds; ratios are between figures of this same run.
``run(quick)`` returns the rows as dicts (for ``bench/run.py``); ``__main__`` prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

N_STREAM = 100_000
N_STREAM_QUICK = 20_000
N_PLACEMENT = 20_000  # the placements for reading
CHANNEL_SIZE = 1000
C1_BLOCK = 500  # calls (or put+take pairs) per block
BATCH = 100  # items per put in the batched row
CHILD_TIMEOUT = {True: 120.0, False: 400.0}


def _rounds(quick: bool) -> int:
    return 1 if quick else 3


# -- run on the workers (imported by reference: bench/ is on their path) -----------------------


def produce(rc: Any, n: int) -> int:
    """Put ``0 .. n-1`` into ``rc``."""
    for i in range(n):
        rc.put(i)
    return n


def consume(rc: Any, n: int) -> tuple[int, int]:
    """Take ``n`` values from ``rc``; return how many and their sum (to check them)."""
    total = 0
    for _ in range(n):
        total += rc.take()
    return n, total


def produce_batched(rc: Any, n: int, k: int) -> int:
    """Put ``0 .. n-1`` into ``rc`` as lists of ``k`` items."""
    for start in range(0, n, k):
        rc.put(list(range(start, min(start + k, n))))
    return n


def consume_batched(rc: Any, n: int) -> tuple[int, int]:
    """Take lists from ``rc`` until ``n`` items have come; return how many and their sum."""
    got = total = 0
    while got < n:
        batch = rc.take()
        got += len(batch)
        total += sum(batch)
    return got, total


def call_rate(to: int, n: int) -> float:
    """Bare ``remotecall_fetch`` calls to process ``to`` per second, from here."""
    from _funcs import identity

    from pydistributed import remotecall_fetch

    for i in range(min(200, n)):
        remotecall_fetch(identity, to, i)
    t0 = time.perf_counter()
    for i in range(n):
        remotecall_fetch(identity, to, i)
    return n / (time.perf_counter() - t0)


def _mp_produce(q: Any, n: int, go: Any) -> None:
    go.wait()
    for i in range(n):
        q.put(i)


def _mp_consume(q: Any, n: int, go: Any, done: Any, out: Any) -> None:
    go.wait()
    total = 0
    for _ in range(n):
        total += q.get()
    out.put(total)
    done.set()


# -- in the child: one contender measures itself ------------------------------------------------


def _child_latency(quick: bool) -> dict[str, Any]:
    from _funcs import identity

    from pydistributed import RemoteChannel, addprocs, remotecall_fetch, rmprocs

    (w,) = addprocs(1)
    try:
        rc = RemoteChannel(w)

        def calls() -> float:
            t0 = time.perf_counter()
            for _ in range(C1_BLOCK):
                remotecall_fetch(identity, w, 1)
            return (time.perf_counter() - t0) / C1_BLOCK * 1e6

        def pairs() -> float:
            t0 = time.perf_counter()
            for _ in range(C1_BLOCK):
                rc.put(1)
                rc.take()
            return (time.perf_counter() - t0) / C1_BLOCK * 1e6

        calls()  # warm up
        pairs()
        blocks = 4 if quick else 10
        call_us: list[float] = []
        pair_us: list[float] = []
        for _ in range(blocks):
            call_us.append(calls())
            pair_us.append(pairs())
        return {"call_us": call_us, "pair_us": pair_us}
    finally:
        rmprocs(w, waitfor=20)


def _child_stream(quick: bool) -> dict[str, Any]:
    import bench_channels as bc  # by reference, so that the workers import it too

    from pydistributed import Channel, RemoteChannel, addprocs, fetch, remotecall, rmprocs

    n = N_STREAM_QUICK if quick else N_STREAM
    producer, consumer = addprocs(2)
    try:

        def stream(owner: int, count: int) -> float:
            rc = RemoteChannel(lambda: Channel(CHANNEL_SIZE), owner)
            t0 = time.perf_counter()
            c = remotecall(bc.consume, consumer, rc, count)
            p = remotecall(bc.produce, producer, rc, count)
            got = fetch(c)
            dt = time.perf_counter() - t0
            assert fetch(p) == count and got == (count, count * (count - 1) // 2), got
            return count / dt

        def batched(count: int) -> float:
            rc = RemoteChannel(lambda: Channel(CHANNEL_SIZE), consumer)
            t0 = time.perf_counter()
            c = remotecall(bc.consume_batched, consumer, rc, count)
            p = remotecall(bc.produce_batched, producer, rc, count, BATCH)
            got = fetch(c)
            dt = time.perf_counter() - t0
            assert fetch(p) == count and got == (count, count * (count - 1) // 2), got
            return count / dt

        stream(consumer, 2000)  # warm up: connections between the workers, code paths
        batched(2000)
        out: dict[str, Any] = {"n": n}
        for key in ("on_consumer", "on_producer", "on_master", "batched", "calls"):
            out[key] = []
        for _ in range(_rounds(quick)):
            out["on_consumer"].append(stream(consumer, n))
            out["on_producer"].append(stream(producer, N_PLACEMENT))
            out["on_master"].append(stream(1, N_PLACEMENT))
            out["batched"].append(batched(n))
            out["calls"].append(fetch(remotecall(bc.call_rate, producer, consumer, 5000)))
        return out
    finally:
        rmprocs(producer, consumer, waitfor=20)


def _child_mp(quick: bool) -> dict[str, Any]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as pydistributed's workers
    n = N_STREAM_QUICK if quick else N_STREAM
    rates: list[float] = []
    for _ in range(_rounds(quick)):
        q = ctx.Queue(CHANNEL_SIZE)
        go, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_mp_produce, args=(q, n, go)),
            ctx.Process(target=_mp_consume, args=(q, n, go, done, out)),
        ]
        for p in procs:
            p.start()
        time.sleep(1.0)  # both started and waiting
        t0 = time.perf_counter()
        go.set()
        done.wait(120)
        dt = time.perf_counter() - t0
        assert out.get(timeout=10) == n * (n - 1) // 2
        for p in procs:
            p.join(10)
        rates.append(n / dt)
    return {"n": n, "rates": rates}


def _child(name: str, quick: bool) -> None:
    result = {"latency": _child_latency, "stream": _child_stream, "mp": _child_mp}[name](quick)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# -- in the parent: run the children, compare ---------------------------------------------------


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


def _row(
    workload: str, contender: str, label: str, role: str, unit: str, samples: list[float]
) -> dict[str, Any]:
    return {
        "workload": workload,
        "contender": contender,
        "label": label,
        "role": role,
        "unit": unit,
        "figure": statistics.median(samples) if samples else None,
        "samples": samples,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure C1 and C2; one dict per row, with its figure and its ratio to the baseline.

    Keys: ``workload``, ``contender``, ``label``, ``role`` (``pydist``, ``ref`` for reading,
    ``peer``/``baseline``), ``unit``, ``figure`` (median; None on error), ``samples``,
    ``x_base`` (figure / the baseline's figure of this run), ``target`` and ``verdict`` (the
    rows that have a target: ``PASS``, ``MISS`` or ``n/a``), and ``error``, ``leftovers``.
    """
    rows: list[dict[str, Any]] = []

    lat = _measure("latency", quick)
    calls = lat.get("call_us", [])
    pairs = lat.get("pair_us", [])
    rows.append(_row("C1", "call", "remotecall_fetch(identity, w, 1)", "baseline", "us", calls))
    pair_row = _row(
        "C1", "pair", "RemoteChannel(w): put + take, from the master", "pydist", "us", pairs
    )
    rows.append(pair_row)
    rows.append(
        _row(
            "C1", "op", "  the same, per operation (pair / 2)", "ref", "us", [p / 2 for p in pairs]
        )
    )
    pair_row["target"] = "put + take <= 1.3 x remotecall_fetch"
    pair_row["limit"] = 1.3

    stream = _measure("stream", quick)
    peer = _measure("mp", quick)
    n = stream.get("n", peer.get("n", N_STREAM))
    mp_row = _row(
        "C2",
        "mp",
        f"multiprocessing.Queue({CHANNEL_SIZE}), 2 processes",
        "baseline",
        "items/s",
        peer.get("rates", []),
    )
    stream_row = _row(
        "C2",
        "on_consumer",
        f"{n:,} items, producer on w2, channel on the consumer w3",
        "pydist",
        "items/s",
        stream.get("on_consumer", []),
    )
    stream_row["target"] = ">= 1 x multiprocessing.Queue"
    stream_row["limit"] = 1.0
    rows += [mp_row, stream_row]
    rows.append(
        _row(
            "C2",
            "on_producer",
            f"  {N_PLACEMENT:,} items, channel on the producer w2",
            "ref",
            "items/s",
            stream.get("on_producer", []),
        )
    )
    rows.append(
        _row(
            "C2",
            "on_master",
            f"  {N_PLACEMENT:,} items, channel on the master",
            "ref",
            "items/s",
            stream.get("on_master", []),
        )
    )
    rows.append(
        _row(
            "C2",
            "batched",
            f"  {n:,} items, {BATCH} per put (a list), channel on w3",
            "ref",
            "items/s",
            stream.get("batched", []),
        )
    )
    rows.append(
        _row(
            "C2",
            "calls",
            "  bare remotecall_fetch w2 -> w3 (1 round trip each)",
            "ref",
            "calls/s",
            stream.get("calls", []),
        )
    )
    for src, row in ((lat, pair_row), (stream, stream_row), (peer, mp_row)):
        for extra in ("error", "leftovers"):
            if extra in src:
                row[extra] = src[extra]

    for workload in ("C1", "C2"):
        mine = [r for r in rows if r["workload"] == workload]
        base = next(r for r in mine if r["role"] == "baseline")
        for r in mine:
            if r is not base and base["figure"] and r["figure"] is not None:
                r["x_base"] = r["figure"] / base["figure"]
            if "target" in r:
                if "x_base" not in r:
                    r["verdict"] = "n/a"
                elif r["unit"] == "us":
                    r["verdict"] = "PASS" if r["x_base"] <= r["limit"] else "MISS"
                else:
                    r["verdict"] = "PASS" if r["x_base"] >= r["limit"] else "MISS"
    return rows


TITLES = {
    "C1": "latency: put + take on a RemoteChannel owned by a worker, from the master",
    "C2": "streaming: small ints from worker 2 to worker 3 through RemoteChannel(Channel(1000))",
}


def _fmt(row: dict[str, Any]) -> str:
    v = row["figure"]
    if v is None:
        return "-"
    if row["unit"] == "us":
        return f"{v:,.1f} us"
    return f"{v:,.0f} {row['unit']}"


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as a table, workload by workload."""
    out: list[str] = []
    for workload, title in TITLES.items():
        out.append(f"{workload}  {title}")
        for r in (r for r in rows if r["workload"] == workload):
            line = f"  {r['label']:<58} {_fmt(r):>18}"
            if "x_base" in r:
                line += f"   {r['x_base']:.2f} x baseline"
            if r.get("samples") and len(r["samples"]) > 1:
                lo, hi = min(r["samples"]), max(r["samples"])
                line += f"   [{lo:,.1f}..{hi:,.1f}]" if hi < 1000 else f"   [{lo:,.0f}..{hi:,.0f}]"
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
