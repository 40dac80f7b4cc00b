"""Benchmark harness: pydistributed against its peers and the raw limits, in one command.

Run from the repository root (``bench/README.md`` says more)::

    python bench/run.py [--only W1,W2,W3,W4,CH] [--quick] [--json FILE] [--placement free]

What it measures (DESIGN.md, "Figures to reach"):

- **W1 latency**: ``remotecall_fetch(identity, w, 1)`` on one worker, in blocks of calls after a
  warm-up; the figure is the median of the block means, in microseconds per call. Raw limits: a
  Python ping-pong of 64-byte messages with a child process over loopback TCP (``TCP_NODELAY``)
  and over a Unix socket. Peers: ``multiprocessing.Pool(1).apply`` (fork and spawn),
  ``ProcessPoolExecutor(1).submit().result()``, loky when installed.
- **W3 bandwidth**: a 100 MB float64 array sent to a worker that returns its sum; the figure is
  1e8 bytes / median time, in GB/s. Raw limit: a child that ``recv_into``-s the 100 MB into a
  preallocated buffer over loopback TCP and acks. For reading only: the same with the child also
  summing, over a Unix socket, an in-process ``memcpy`` and an in-process ``sum``. Peers:
  ``multiprocessing.Pool(1).apply`` (fork), loky when installed. Skipped without numpy.
- **W4 cold start**: wall time of a fresh ``python -c`` that imports the library, starts 2
  workers, makes one call on each and shuts down (median of several runs, interleaved). Raw
  floor: ``python -c pass``. Peers: ``multiprocessing`` Pool(2) with ``fork`` and with
  ``spawn``, ``ProcessPoolExecutor(2)``, loky when installed.
- **W2 pmap** (``bench_pmap.py``, which says more): W2a tiny tasks with ``batch_size=1``
  against ``Pool.map(chunksize=1)``, W2b with ``batch_size="auto"`` against ``Pool.map``, and
  W5 CPU scaling over 2 workers against ``Pool(2).map``, in the same run.
- **CH channels** (``bench_streaming.py``, which says more): worker-to-master streaming through
  a ``RemoteChannel`` (plain ``put`` and ``rc.stream()``) against a ``multiprocessing.Queue``,
  and the manual's jobs/results pattern (2,000 jobs of 1 ms, 2 workers) against two
  ``multiprocessing.Queue`` objects, in the same run.

How to read it: every contender measures itself in fresh processes of its own
(``_contenders.py``); W1 and W3 take their samples in rounds, each round running every
contender once, so that a slow spell of the machine hits them all alike. Each row shows the
median figure, ``x raw`` (the figure divided by the raw limit's figure of this same run),
``x best peer`` (divided by the best peer's figure of this same run) and the spread (lowest to
highest sample). Lower is better for us and s, higher for GB/s: ``x raw`` 1.25 on W1 means
25 % slower than the raw ping-pong; 0.75 on W3 means 75 % of the raw bandwidth. The ``target``
line checks DESIGN.md's target against figures of this run only: PASS, MISS, or n/a when a
figure it needs is missing. A contender that fails or exceeds its time limit prints an ERROR
line and the run goes on; processes it leaves behind are reported and killed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SRC = os.path.join(REPO, "src")
CONTENDERS_SCRIPT = os.path.join(HERE, "_contenders.py")
TAG_VAR = "PYDIST_BENCH_TAG"  # marks every process a contender starts, to find leftovers
LEFTOVER_GRACE_S = 3.0
NBYTES = 100_000_000
PLACEMENTS = {
    "free": "free (processes run where the scheduler puts them)",
    "split": "split (the measuring process on one CPU, every process it starts on another)",
    "shared": "shared (every process on one CPU)",
}
# Where children keep bytecode when the environment forbids writing it beside the sources.
PYCACHE_PREFIX = os.path.join(tempfile.gettempdir(), "pydist-bench-pycache")


# -- what is measured ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One thing measured in a workload.

    ``role`` is ``"raw"`` (the limit that ``x raw`` divides by; one per workload), ``"ref"``
    (another raw figure, for reading), ``"peer"`` (another library) or ``"pydist"``.
    """

    key: str
    label: str
    role: str
    needs: tuple[str, ...] = ()
    code: str = ""  # W4 only: the program run by ``python -c``


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    unit: str  # "us", "GB/s" or "s"
    contenders: tuple[Contender, ...]
    target: str

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "GB/s"


@dataclass
class Outcome:
    contender: Contender
    samples: list[float] = field(default_factory=list)  # seconds
    error: str | None = None
    skipped: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    leftovers: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0


COLD_MP = """\
import multiprocessing as mp
from _funcs import identity
pool = mp.get_context({method!r}).Pool(2)
try:
    assert [pool.apply(identity, (i,)) for i in range(2)] == [0, 1]
finally:
    pool.close()
    pool.join()
"""
COLD_PPE = """\
from concurrent.futures import ProcessPoolExecutor
from _funcs import identity
with ProcessPoolExecutor(2) as ex:
    assert [ex.submit(identity, i).result() for i in range(2)] == [0, 1]
"""
COLD_LOKY = """\
from loky import get_reusable_executor
from _funcs import identity
ex = get_reusable_executor(max_workers=2)
assert [ex.submit(identity, i).result() for i in range(2)] == [0, 1]
ex.shutdown(wait=True, kill_workers=False)
"""
COLD_PYDIST = """\
from pydistributed import addprocs, remotecall_fetch, rmprocs
from _funcs import identity
ws = addprocs(2)
try:
    assert [remotecall_fetch(identity, w, w) for w in ws] == ws
finally:
    rmprocs(ws)
"""


def default_method() -> str:
    import multiprocessing

    return str(multiprocessing.get_start_method())


def workloads() -> dict[str, Workload]:
    dm = default_method()
    w1 = Workload(
        "W1",
        "latency: remotecall_fetch(identity, w, 1), 1 worker",
        "us",
        (
            Contender("raw_tcp", "raw TCP ping-pong, 64 B, TCP_NODELAY", "raw"),
            Contender("raw_unix", "raw Unix-socket ping-pong, 64 B", "ref"),
            Contender("mp_fork", "multiprocessing Pool(1).apply [fork]", "peer"),
            Contender("mp_spawn", "multiprocessing Pool(1).apply [spawn]", "peer"),
            Contender("ppe", f"ProcessPoolExecutor(1).submit().result() [{dm}]", "peer"),
            Contender("loky", "loky reusable executor(1).submit().result()", "peer", ("loky",)),
            Contender("pydist", "pydistributed remotecall_fetch", "pydist"),
        ),
        "pydistributed <= 1.25 x raw TCP ping-pong, and below every peer",
    )
    w3 = Workload(
        "W3",
        "bandwidth: 100 MB float64 array to 1 worker, which returns its sum",
        "GB/s",
        (
            Contender("raw_tcp", "raw TCP, recv_into a buffer, ack", "raw", ("numpy",)),
            Contender("raw_tcp_sum", "raw TCP, recv_into, sum in child, reply", "ref", ("numpy",)),
            Contender("raw_unix", "raw Unix socket, recv_into a buffer, ack", "ref", ("numpy",)),
            Contender("memcpy", "in-process memcpy (np.copyto)", "ref", ("numpy",)),
            Contender("numpy_sum", "in-process arr.sum() alone", "ref", ("numpy",)),
            Contender("mp_fork", "multiprocessing Pool(1).apply [fork]", "peer", ("numpy",)),
            Contender("loky", "loky reusable executor(1).submit()", "peer", ("numpy", "loky")),
            Contender(
                "pydist",
                "pydistributed remotecall_fetch (local: shared memory)",
                "pydist",
                ("numpy",),
            ),
            Contender(
                "pydist_socket", "pydistributed, Unix socket (PYDIST_SHM=0)", "ref", ("numpy",)
            ),
            Contender("pydist_tcp", "pydistributed over TCP (frame tags)", "ref", ("numpy",)),
        ),
        "pydistributed local >= 2 x raw TCP (shared memory); through a socket >= 0.75 x",
    )
    w4 = Workload(
        "W4",
        "cold start: fresh python -c, import, 2 workers, one call each, shut down",
        "s",
        (
            Contender("pass", "python -c pass", "raw", code="pass"),
            Contender(
                "mp_fork",
                "multiprocessing Pool(2) [fork]",
                "peer",
                code=COLD_MP.format(method="fork"),
            ),
            Contender(
                "mp_spawn",
                "multiprocessing Pool(2) [spawn]",
                "peer",
                code=COLD_MP.format(method="spawn"),
            ),
            Contender("ppe", f"ProcessPoolExecutor(2) [{dm}]", "peer", code=COLD_PPE),
            Contender("loky", "loky reusable executor(2)", "peer", ("loky",), code=COLD_LOKY),
            Contender(
                "pydist_exec",
                "pydistributed addprocs(2) [PYDIST_SPAWN=exec]",
                "ref",
                code="import os\nos.environ['PYDIST_SPAWN'] = 'exec'\n" + COLD_PYDIST,
            ),
            Contender("pydist", "pydistributed addprocs(2)", "pydist", code=COLD_PYDIST),
        ),
        "pydistributed <= multiprocessing Pool(2) [spawn]",
    )
    return {w.name: w for w in (w1, w3, w4)}


def params_for(name: str, quick: bool) -> dict[str, int]:
    """How many samples. W1 and W3 take theirs in ``rounds``: each round runs every contender
    once, in a fresh process, so that a slow spell of the machine hits them all alike."""
    if name == "W1":
        if quick:
            return {"rounds": 1, "warmup": 100, "blocks": 5, "per_block": 100}
        return {"rounds": 5, "warmup": 200, "blocks": 2, "per_block": 200}
    if name == "W3":
        if quick:
            return {"rounds": 1, "warmup": 1, "reps": 3, "nbytes": NBYTES}
        return {"rounds": 3, "warmup": 1, "reps": 2, "nbytes": NBYTES}
    return {"warmup": 1, "runs": 3 if quick else 7}


def timeout_for(name: str, quick: bool) -> float:
    """Wall-clock limit of one contender process (W4: of one run)."""
    limits = {"W1": (45.0, 30.0), "W3": (60.0, 45.0), "W4": (30.0, 20.0)}
    return limits[name][1 if quick else 0]


# -- child processes ----------------------------------------------------------------------------


class Tags:
    """Unique values of ``TAG_VAR``, one per process tree the harness starts."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:12]
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"{self.run_id}-{self.count}"


def child_env(tag: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [HERE]
    if os.path.isdir(SRC):
        paths.append(SRC)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[TAG_VAR] = tag
    env.setdefault("PYDIST_WORKER_TIMEOUT", "20")
    # Measure imports as a user sees them, from cached bytecode: with PYTHONDONTWRITEBYTECODE
    # set, every start (W4, and every worker) would compile the library from source again.
    if env.pop("PYTHONDONTWRITEBYTECODE", None) and not env.get("PYTHONPYCACHEPREFIX"):
        env["PYTHONPYCACHEPREFIX"] = PYCACHE_PREFIX
    return env


def _is_live(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rsplit(b")", 1)[-1].split()[0]
    return state not in (b"Z", b"X")


def _has_tag(pid: str, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def tagged_pids(tag: str) -> list[int]:
    """Live processes (not zombies) whose environment carries this tag (Linux only)."""
    if not os.path.isdir("/proc"):
        return []
    needle = f"{TAG_VAR}={tag}".encode()
    return [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and int(p) != os.getpid() and _has_tag(p, needle) and _is_live(p)
    ]


def end_leftovers(tag: str, grace: float = LEFTOVER_GRACE_S) -> list[int]:
    """Wait up to ``grace`` s for the tagged processes to go; kill the rest, one pid at a time.

    Returns the pids that were still running after the grace period.
    """
    deadline = time.monotonic() + grace
    pids = tagged_pids(tag)
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = tagged_pids(tag)
    needle = f"{TAG_VAR}={tag}".encode()
    for pid in pids:
        if _has_tag(str(pid), needle):  # checked again just before: never a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return pids


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit, at most ``timeout`` s; True if it did.

    ``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, which would quantise W4's figures;
    a pidfd (Linux >= 5.3), or else a plain blocking wait under a watchdog, wakes at once.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    fd = -1
    if pidfd_open is not None:
        try:
            fd = pidfd_open(proc.pid)
        except OSError:
            fd = -1
    if fd >= 0:
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            return False
        proc.wait()
        return True
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        proc.kill()

    watchdog = threading.Timer(timeout, expire)
    watchdog.start()
    try:
        proc.wait()
    finally:
        watchdog.cancel()
    return not fired.is_set()


@dataclass
class ChildRun:
    returncode: int | None
    stdout: str
    stderr: str
    elapsed_s: float
    timed_out: bool
    leftovers: list[int]


def run_child(argv: Sequence[str], timeout: float, tags: Tags) -> ChildRun:
    """Run one process to completion or ``timeout``, then end whatever it left behind.

    Output goes to temporary files, not pipes, so that a grandchild holding the stream open
    can neither block the harness nor lengthen the measured time, which ends when the process
    itself exits.
    """
    tag = tags.next()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=child_env(tag),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        timed_out = True  # also when interrupted: then leave nothing behind, at once
        try:
            timed_out = not wait_exit(proc, timeout)
        finally:
            elapsed = time.perf_counter() - t0
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            leftovers = end_leftovers(tag, grace=0.0 if timed_out else LEFTOVER_GRACE_S)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            None if timed_out else proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            elapsed,
            timed_out,
            leftovers,
        )


def failure_text(run: ChildRun, timeout: float) -> str:
    if run.timed_out:
        what = f"timed out after {timeout:.0f} s (killed)"
    else:
        what = f"exit status {run.returncode}"
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "(no output on stderr)"
    return f"{what}: {last}"


def missing_modules(c: Contender) -> list[str]:
    return [m for m in c.needs if importlib.util.find_spec(m) is None]


# -- running the workloads ----------------------------------------------------------------------


def progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"  ... {text}", file=sys.stderr, flush=True)


def measure_round(w: Workload, o: Outcome, params: dict[str, Any], quick: bool, tags: Tags) -> None:
    """W1 and W3: one round; the contender measures itself in a fresh process."""
    c = o.contender
    timeout = timeout_for(w.name, quick)
    progress(f"{w.name} {c.label}")
    run = run_child(
        [sys.executable, CONTENDERS_SCRIPT, w.name, c.key, json.dumps(params)], timeout, tags
    )
    o.elapsed_s += run.elapsed_s
    o.leftovers += run.leftovers
    result_lines = [ln for ln in run.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if run.returncode == 0 and result_lines:
        result = json.loads(result_lines[-1][len("BENCH_RESULT ") :])
        o.samples += result["samples"]
        for k, v in result.get("info", {}).items():
            o.info.setdefault(k, []).append(v)
    else:
        o.error = failure_text(run, timeout)


def measure_cold_starts(
    w: Workload, outcomes: list[Outcome], params: dict[str, Any], quick: bool, tags: Tags
) -> None:
    """W4: time whole processes, interleaving the contenders run by run."""
    timeout = timeout_for(w.name, quick)
    for i in range(params["warmup"] + params["runs"]):
        for o in outcomes:
            if o.error or o.skipped:
                continue
            progress(f"{w.name} {o.contender.label} run {i + 1}")
            run = run_child([sys.executable, "-c", o.contender.code], timeout, tags)
            o.leftovers += run.leftovers
            if run.returncode != 0:
                o.error = failure_text(run, timeout)
            elif i >= params["warmup"]:
                o.samples.append(run.elapsed_s)
                o.elapsed_s += run.elapsed_s


def run_workload(
    w: Workload, quick: bool, tags: Tags, pydist_error: str | None, placement: str
) -> tuple[list[Outcome], dict[str, Any]]:
    params: dict[str, Any] = dict(params_for(w.name, quick))
    if w.name != "W4":
        params["placement"] = placement
    outcomes = []
    for c in w.contenders:
        o = Outcome(c)
        missing = missing_modules(c)
        if c.role == "pydist" and pydist_error:
            o.error = f"not importable: {pydist_error}"
        elif missing:
            o.skipped = f"{', '.join(missing)} not installed"
        outcomes.append(o)
    if w.name == "W4":
        measure_cold_starts(w, outcomes, params, quick, tags)
        return outcomes, params
    for _ in range(params["rounds"]):
        for o in outcomes:
            if not (o.error or o.skipped):
                measure_round(w, o, params, quick, tags)
    return outcomes, params


# -- reading the figures ------------------------------------------------------------------------


def figure(w: Workload, o: Outcome, sample: float | None = None) -> float | None:
    """The figure in the workload's unit: of one sample, or the median of all."""
    if not o.samples or o.error:
        return None
    t = statistics.median(o.samples) if sample is None else sample
    if w.unit == "us":
        return t * 1e6
    if w.unit == "GB/s":
        return NBYTES / t / 1e9
    return t


def fmt(w: Workload, v: float | None) -> str:
    if v is None:
        return "-"
    if w.unit == "us":
        return f"{v:.1f} us"
    if w.unit == "GB/s":
        return f"{v:.2f} GB/s"
    return f"{v:.3f} s"


def best(w: Workload, pairs: list[tuple[Outcome, float]]) -> tuple[Outcome, float] | None:
    if not pairs:
        return None
    pick: Callable[..., tuple[Outcome, float]] = max if w.higher_is_better else min
    return pick(pairs, key=lambda p: p[1])


def judge(
    w: Workload,
    figs: dict[str, float],
    peer_best: tuple[Outcome, float] | None,
    outcomes: list[Outcome],
) -> tuple[str, str]:
    """The verdict on DESIGN.md's target, from this run's figures: (verdict, detail)."""
    pd = figs.get("pydist")
    raw = figs.get("raw_tcp")  # W1 and W3; W4 compares with spawn
    if pd is None:
        err = next((o.error for o in outcomes if o.contender.role == "pydist"), None)
        return "MISS", f"pydistributed gave no figure ({err or 'not run'})"
    if w.name == "W1":
        if raw is None or peer_best is None:
            return "n/a", "the raw TCP or peer figures are missing"
        ok = pd <= 1.25 * raw and pd < peer_best[1]
        return ("PASS" if ok else "MISS"), (
            f"{pd / raw:.2f} x raw TCP (needs <= 1.25); {pd / peer_best[1]:.2f} x the best peer, "
            f"{peer_best[0].contender.label} (needs < 1)"
        )
    if w.name == "W3":
        if raw is None:
            return "n/a", "the raw TCP figure is missing"
        # local: shared memory (the default); the socket: PYDIST_SHM=0
        sock = figs.get("pydist_socket") or 0.0
        ok = pd >= 2 * raw and sock >= 0.75 * raw
        detail = f"local {pd / raw:.2f} x raw TCP (needs >= 2); socket {sock / raw:.2f} x"
        if (v := figs.get("pydist_tcp")) is not None:
            ok = ok and v >= 0.75 * raw
            detail += f"; tcp {v / raw:.2f} x (needs >= 0.75)"
        return ("PASS" if ok else "MISS"), detail
    spawn = figs.get("mp_spawn")
    if spawn is None:
        return "n/a", "the multiprocessing spawn figure is missing"
    return ("PASS" if pd <= spawn else "MISS"), (
        f"{fmt(w, pd)} vs {fmt(w, spawn)}: {pd / spawn:.2f} x multiprocessing spawn (needs <= 1)"
    )


def describe_params(w: Workload, params: dict[str, Any]) -> str:
    rounds = params.get("rounds", 1)
    fresh = f"{rounds} round(s), each in a fresh process after"
    if w.name == "W1":
        return (
            f"{rounds * params['blocks']} blocks x {params['per_block']} calls ({fresh} "
            f"{params['warmup']} warm-up calls); median of block means; lower is better"
        )
    if w.name == "W3":
        return (
            f"{NBYTES / 1e6:.0f} MB; GB/s = 1e8 B / median time of {rounds * params['reps']} "
            f"transfers ({fresh} {params['warmup']} warm-up); higher is better"
        )
    return (
        f"median wall time of {params['runs']} runs per contender, interleaved, after "
        f"{params['warmup']} warm-up run; lower is better"
    )


def report(w: Workload, outcomes: list[Outcome], params: dict[str, Any]) -> dict[str, Any]:
    figs = {o.contender.key: v for o in outcomes if (v := figure(w, o)) is not None}
    raw_key = next(c.key for c in w.contenders if c.role == "raw")
    raw = figs.get(raw_key)
    peer_best = best(
        w,
        [
            (o, figs[o.contender.key])
            for o in outcomes
            if o.contender.role == "peer" and o.contender.key in figs
        ],
    )
    verdict, detail = judge(w, figs, peer_best, outcomes)

    names = []
    for o in outcomes:
        mark = " [raw limit]" if o.contender.role == "raw" else ""
        if peer_best is not None and o is peer_best[0]:
            mark = " [best peer]"
        names.append(o.contender.label + mark)
    width = max(len(n) for n in names)
    pad = " " * width

    print(f"\n{w.name} {w.title}")
    print(f"   {describe_params(w, params)}")
    print(f"   {'contender':<{width}} {'median':>11} {'x raw':>7} {'x best peer':>11}   spread")
    rows = []
    for o, name in zip(outcomes, names, strict=True):
        c = o.contender
        v = figs.get(c.key)
        if o.skipped:
            print(f"   {name:<{width}} skipped: {o.skipped}")
        elif v is None:
            print(f"   {name:<{width}} ERROR: {o.error}")
        else:
            lo, hi = sorted(
                [figure(w, o, min(o.samples)) or 0.0, figure(w, o, max(o.samples)) or 0.0]
            )
            x_raw = f"{v / raw:.2f}" if raw else "-"
            x_peer = f"{v / peer_best[1]:.2f}" if peer_best else "-"
            spread = fmt(w, lo).split()[0] + ".." + fmt(w, hi)
            print(f"   {name:<{width}} {fmt(w, v):>11} {x_raw:>7} {x_peer:>11}   {spread}")
        if o.leftovers:
            print(
                f"   {pad} note: left {len(o.leftovers)} process(es) running "
                f"{LEFTOVER_GRACE_S:.0f} s after it ended, killed: {o.leftovers}"
            )
        if c.role == "pydist" and o.info.get("addprocs_1_s"):
            took = ", ".join(f"{t:.3f}" for t in o.info["addprocs_1_s"])
            print(f"   {pad} note: addprocs(1) took {took} s")
        got = set(o.info.get("placement", [])) - {params.get("placement")}
        if got:
            print(f"   {pad} note: ran with placement {', '.join(sorted(got))} (too few CPUs)")
        rows.append(
            {
                "key": c.key,
                "label": c.label,
                "role": c.role,
                "figure": v,
                "unit": w.unit,
                "samples_s": o.samples,
                "error": o.error,
                "skipped": o.skipped,
                "info": o.info,
                "leftover_pids": o.leftovers,
                "elapsed_s": o.elapsed_s,
            }
        )
    print(f"   target: {w.target}: {verdict} - {detail}")
    return {
        "title": w.title,
        "unit": w.unit,
        "params": params,
        "contenders": rows,
        "target": {"text": w.target, "verdict": verdict, "detail": detail},
    }


# -- main ---------------------------------------------------------------------------------------


def check_pydistributed(tags: Tags) -> tuple[str | None, str]:
    """(error or None, where it was imported from), from a fresh process."""
    code = (
        "import pydistributed\n"
        "from pydistributed import addprocs, remotecall_fetch, rmprocs, workers\n"
        "print(pydistributed.__file__)"
    )
    run = run_child([sys.executable, "-c", code], 60.0, tags)
    if run.returncode == 0:
        return None, run.stdout.strip()
    return failure_text(run, 60.0), ""


def numpy_version() -> str:
    try:
        import numpy

        return str(numpy.__version__)
    except ImportError:
        return "not installed"


def parse_args(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--only",
        default=",".join(names),
        help=f"comma-separated workloads among {','.join(names)} (default: all)",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repetitions (about 10 s instead of 35)"
    )
    p.add_argument("--json", metavar="FILE", help="also write every figure and sample here")
    p.add_argument(
        "--placement",
        choices=("free", "split", "shared"),
        default="free",
        help="W1/W3 CPUs: free (the scheduler's choice, default), split (the contender on one "
        "CPU, every process it starts on another) or shared (all on one CPU)",
    )
    args = p.parse_args(argv)
    chosen = [n.strip().upper() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown or not chosen:
        p.error(f"--only: unknown workload(s) {unknown}; choose among {','.join(names)}")
    args.only = [n for n in names if n in chosen]
    return args


def channel_rows(quick: bool) -> dict[str, Any]:
    """CH: issue 13's channel rows (bench_streaming.py), each beside its multiprocessing peer."""
    import bench_streaming

    rows = bench_streaming.run(quick)
    print()
    print(bench_streaming.report(rows).rstrip())
    return bench_streaming.summary(rows)


def pmap_rows(quick: bool) -> dict[str, Any]:
    """W2: pmap's rows (bench_pmap.py: W2a, W2b and W5), each beside its multiprocessing peer."""
    import bench_pmap

    rows = bench_pmap.run(quick)
    print()
    print(bench_pmap.report(rows).rstrip())
    verdicts = [r["verdict"] for r in rows if "verdict" in r]
    verdict = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "MISS"
    if any(v == "n/a" for v in verdicts):
        verdict = "n/a"
    titles = "; ".join(bench_pmap.TITLES.values())
    return {"title": titles, "rows": rows, "target": {"verdict": verdict}}


# Workloads measured by a module of their own, after the table's: name -> run(quick).
EXTRA: dict[str, Callable[[bool], dict[str, Any]]] = {"W2": pmap_rows, "CH": channel_rows}


def main(argv: Sequence[str] | None = None) -> int:
    table = workloads()
    args = parse_args(argv, [*table, *EXTRA])
    # A terminated harness unwinds like an interrupted one: every `finally` ends its children.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t_start = time.perf_counter()
    tags = Tags()
    pydist_error, pydist_path = check_pydistributed(tags)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": numpy_version(),
        "mode": "quick" if args.quick else "default",
        "placement": args.placement,
        "multiprocessing_default_start_method": default_method(),
        "pydistributed": pydist_path or f"not importable: {pydist_error}",
    }
    print(f"pydistributed benchmarks ({meta['mode']} run), {meta['date']}")
    print(
        f"   Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs, "
        f"numpy {meta['numpy']}"
    )
    print(f"   pydistributed: {meta['pydistributed']}")
    print(f"   W1/W3 placement: {PLACEMENTS[args.placement]}")

    results: dict[str, Any] = {}
    for name in args.only:
        if name in EXTRA:
            results[name] = EXTRA[name](args.quick)
            continue
        w = table[name]
        if name == "W3" and importlib.util.find_spec("numpy") is None:
            print(f"\n{w.name} {w.title}\n   SKIPPED: numpy is not installed (pip install numpy)")
            results[name] = {"title": w.title, "skipped": "numpy is not installed"}
            continue
        outcomes, params = run_workload(w, args.quick, tags, pydist_error, args.placement)
        results[name] = report(w, outcomes, params)

    total = time.perf_counter() - t_start
    verdicts = ", ".join(
        f"{n} {r['target']['verdict']}" for n, r in results.items() if "target" in r
    )
    print(f"\nsummary: {verdicts or 'nothing measured'}; total {total:.1f} s")
    if args.json:
        meta["total_s"] = total
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "workloads": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
