"""pmap and asyncmap against real workers: order, iterables, batches, errors, retries, dead
workers, progress, Ctrl-C."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pydistributed import (
    Channel,
    ProcessExitedException,
    RemoteChannel,
    RemoteException,
    Task,
    myid,
    remotecall_fetch,
)
from pydistributed.asyncmap import asyncmap
from pydistributed.backoff import ExponentialBackOff
from pydistributed.cluster import current_cluster
from pydistributed.pmap import INTERRUPT_GRACE, imap, pmap
from pydistributed.workerpool import CachingPool, WorkerPool
from tests.conftest import in_thread, wait_until, worker_table

pytestmark = pytest.mark.timeout(120)

T = 30.0  # the timeout of blocking calls expected to succeed


def _iseven_error(x: int) -> int:
    if x % 2 == 0:
        raise ValueError("foo")
    return x


def _interval(seconds: float) -> tuple[int, float, float]:
    t0 = time.time()
    time.sleep(seconds)
    return myid(), t0, time.time()


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """How many of the intervals run at once, at most."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    n = best = 0
    for _, d in events:
        n += d
        best = max(best, n)
    return best


def _attempts(directory: Path) -> Callable[[int, int], int]:
    """``f(x, fails)``: fails the first ``fails`` times it is called for ``x`` (counted in
    files, which every worker sees), then returns ``x``."""
    d = str(directory)

    def f(x: int, fails: int) -> int:
        path = os.path.join(d, str(x))
        with open(path, "a") as fh:
            fh.write(f"{myid()}\n")
        with open(path) as fh:
            n = len(fh.read().split())
        if n <= fails:
            raise OSError(f"attempt {n} of {x} fails")
        return x

    return f


def _count(directory: Path, x: int) -> int:
    p = directory / str(x)
    return len(p.read_text().split()) if p.exists() else 0


# -- asyncmap (local threads) --------------------------------------------------------------------


def test_asyncmap_order_zip_and_lazy_input() -> None:
    assert asyncmap(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
    assert asyncmap(lambda a, b: a + b, range(5), range(10, 100)) == [10, 12, 14, 16, 18]
    assert asyncmap(str, (i for i in range(3))) == ["0", "1", "2"]
    assert asyncmap(lambda x: x, []) == []
    big = asyncmap(lambda x: x + 1, range(100_000))
    assert big == list(range(1, 100_001))
    with pytest.raises(TypeError):
        asyncmap(lambda x: x)


def test_asyncmap_runs_waiting_items_concurrently() -> None:
    spans = asyncmap(lambda x: _interval(0.2)[1:], range(20))
    assert _max_overlap(spans) >= 10  # not one after the other
    limited = asyncmap(lambda x: _interval(0.05)[1:], range(12), ntasks=3)
    assert 2 <= _max_overlap(limited) <= 3
    serial = asyncmap(lambda x: _interval(0.01)[1:], range(5), ntasks=1)
    assert _max_overlap(serial) == 1
    dynamic = asyncmap(lambda x: _interval(0.05)[1:], range(8), ntasks=lambda: 2)
    assert _max_overlap(dynamic) <= 2


def test_asyncmap_rendezvous_needs_two_tasks() -> None:
    from pydistributed import Channel

    ch: Channel = Channel(0)
    # element 0 waits for element 1: only concurrent tasks finish this
    out = asyncmap(lambda x: ch.take(timeout=T) if x == 0 else ch.put("hi", timeout=T), [0, 1])
    assert out == ["hi", "hi"]  # (a Channel's put returns the value, as Julia's put!)


def test_asyncmap_errors() -> None:
    with pytest.raises(ValueError, match="foo"):
        asyncmap(_iseven_error, range(1, 10))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            asyncmap(lambda x: x, range(3), ntasks=bad)  # type: ignore[arg-type]

    def broken() -> Iterator[int]:
        yield 1
        raise KeyError("input")

    with pytest.raises(KeyError):
        asyncmap(lambda x: x, broken())


# -- pmap without workers: the master works ----------------------------------------------------


def test_pmap_without_workers_runs_here() -> None:
    if worker_table():
        pytest.skip("workers left over by another module")  # never expected: fixtures clean up
    assert pmap(lambda x: (x, myid()), range(4)) == [(x, 1) for x in range(4)]
    assert pmap(lambda x: x + 1, range(4), batch_size=2) == [1, 2, 3, 4]
    assert pmap(_iseven_error, range(1, 5), on_error=lambda e: e)[1].args == ("foo",)
    with pytest.raises(ValueError):  # local: the error itself
        pmap(_iseven_error, range(1, 5))


# -- pmap: results -----------------------------------------------------------------------------


def test_pmap_results_in_order_over_all_workers(shared: list[int]) -> None:
    out = pmap(lambda x: (x * x, myid()), range(40))
    assert [v for v, _ in out] == [x * x for x in range(40)]
    assert {w for _, w in out} == set(shared)
    # results in input order even when later elements finish first
    rng = np.random.default_rng(1)
    waits = list(rng.uniform(0, 0.02, 30))
    assert pmap(lambda w: (time.sleep(w), w)[1], waits) == waits
    assert pmap(lambda x: x, []) == []


@pytest.mark.parametrize(
    ("kw", "error", "says"),
    [
        (
            {"retry_delays": 5},
            TypeError,
            r"^pmap\(\): retry_delays must be an iterable .* not int \(5\)$",
        ),
        (
            {"retry_delays": [0.1, -1]},
            ValueError,
            r"^pmap\(\): a delay of retry_delays .* >= 0, not -1$",
        ),
        ({"retry_delays": ["x"]}, TypeError, r"^pmap\(\): a delay of retry_delays .* not str"),
        (
            {"distributed": "no"},
            TypeError,
            r"^pmap\(\): distributed must be True or False, not str",
        ),
    ],
)
def test_bad_arguments_are_refused_before_the_map_runs(
    shared: list[int], tmp_path: Path, kw: dict[str, Any], error: type[Exception], says: str
) -> None:
    ran = tmp_path / "ran"
    with pytest.raises(error, match=says):
        pmap(lambda x: ran.touch(), WorkerPool(shared), range(4), **kw)
    with pytest.raises(TypeError, match=r"^imap\(\): ordered must be True or False, not str"):
        imap(lambda x: ran.touch(), range(4), ordered="no")  # type: ignore[arg-type]
    assert not ran.exists()
    assert pmap(abs, WorkerPool(shared), [-1, -2], retry_delays=ExponentialBackOff(n=2)) == [1, 2]


def test_pmap_pool_positionally_or_by_keyword(shared: list[int]) -> None:
    a, b = shared
    assert set(pmap(lambda x: myid(), WorkerPool([b]), range(6))) == {b}
    assert set(pmap(lambda x: myid(), range(6), pool=WorkerPool([a]))) == {a}
    with pytest.raises(TypeError):
        pmap(lambda x: x, WorkerPool([a]), range(3), pool=WorkerPool([b]))
    with pytest.raises(TypeError):
        pmap(lambda x: x, range(3), pool=[a])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pmap(lambda x: x)
    # an empty pool maps here, as Julia does (and as with no workers at all)
    assert pmap(lambda x: myid(), WorkerPool([]), range(3)) == [1, 1, 1]


def test_pmap_zips_several_iterables(shared: list[int]) -> None:
    assert pmap(lambda a, b: a * b, range(5), [10, 20, 30]) == [0, 20, 60]
    assert pmap(lambda a, b, c: a + b + c, "abc", "xyz", "123") == ["ax1", "by2", "cz3"]
    assert pmap(lambda a, b: a - b, range(10), range(10), batch_size=3) == [0] * 10
    assert pmap(lambda a, b: (a, b), range(7), iter("abcdefg"), batch_size="auto") == list(
        zip(range(7), "abcdefg", strict=True)
    )


def test_pmap_reads_a_generator_lazily(shared: list[int]) -> None:
    consumed: list[int] = []
    done = RemoteChannel(lambda: Channel(100))

    def gen() -> Iterator[int]:
        for i in range(20):
            consumed.append(i)
            yield i

    def slow(x: int) -> int:
        time.sleep(0.1)
        done.put(x)
        return x

    task = Task(pmap, slow, gen()).start()
    for _ in range(6):  # about 3 elements done per worker, of 20
        done.take(timeout=T)
    seen = len(consumed)
    assert task.fetch(timeout=T) == list(range(20))
    assert seen <= 12, seen  # a few per worker read ahead, not the whole input
    # batches too: an unknown length is read a bounded amount ahead
    consumed.clear()
    while done.isready():
        done.take(timeout=T)
    task = Task(pmap, slow, gen(), batch_size=2).start()
    for _ in range(6):
        done.take(timeout=T)
    seen = len(consumed)
    assert task.fetch(timeout=T) == list(range(20))
    assert seen <= 16, seen


def test_pmap_ships_the_function_once_per_worker(shared: list[int]) -> None:
    c = current_cluster()
    big = np.ones(10_000_000 // 8)  # 10 MB, captured by the closure
    before = sum(c.connections.get(p).writer.bytes_sent for p in shared)
    assert pmap(lambda i: float(big[i]) * i, range(50)) == [float(i) for i in range(50)]
    sent = sum(c.connections.get(p).writer.bytes_sent for p in shared) - before
    assert 20e6 <= sent < 30e6, sent  # twice 10 MB, not 50 times
    # and only for the time of the map: nothing stays cached on the workers
    from pydistributed.funccache import _STORED

    assert remotecall_fetch(lambda: len(_STORED.get(current_cluster())), shared[0]) == 0


def test_pmap_with_a_caching_pool_keeps_the_function(shared: list[int]) -> None:
    c = current_cluster()
    big = np.ones(10_000_000 // 8)

    def f(i: int) -> float:
        return float(big[i]) + i

    with CachingPool(shared) as pool:
        assert pmap(f, pool, range(10)) == [1.0 + i for i in range(10)]
        before = sum(c.connections.get(p).writer.bytes_sent for p in shared)
        assert pmap(f, pool, range(10), batch_size=1) == [1.0 + i for i in range(10)]
        assert sum(c.connections.get(p).writer.bytes_sent for p in shared) - before < 1e6


def test_pmap_distributed_false_runs_here_concurrently(shared: list[int]) -> None:
    out = pmap(lambda x: (myid(), *_interval(0.2)[1:]), range(4), distributed=False)
    assert {w for w, _, _ in out} == {1}
    assert _max_overlap([(a, b) for _, a, b in out]) == 2  # as many tasks as workers
    assert pmap(lambda a, b: a + b, [1, 2], [3, 4], distributed=False) == [4, 6]


def test_pmap_progress_bar(shared: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    assert pmap(lambda x: x, range(30), progress=True) == list(range(30))
    err = capsys.readouterr().err
    assert "30/30" in err and "100%" in err
    assert pmap(lambda x: x, range(30), batch_size=7, progress=True) == list(range(30))
    assert "30/30" in capsys.readouterr().err
    assert pmap(lambda x: x, iter(range(5)), progress=True) == list(range(5))
    assert "5it" in capsys.readouterr().err
    pmap(lambda x: x, range(3))
    assert capsys.readouterr().err == ""


# -- batches -----------------------------------------------------------------------------------


def test_pmap_batches(shared: list[int]) -> None:
    for size in (1, 2, 3, 7, 100, "auto"):
        assert pmap(lambda x: x * 10, range(23), batch_size=size) == [x * 10 for x in range(23)]
    assert pmap(lambda x: x + 1, range(5000), batch_size="auto") == list(range(1, 5001))
    assert pmap(lambda x: x + 1, iter(range(5000)), batch_size="auto") == list(range(1, 5001))
    assert pmap(lambda x: -x, (i for i in range(7)), batch_size="auto") == [-i for i in range(7)]
    for bad in (0, -3, 1.5, "big", None, True):
        with pytest.raises(ValueError):
            pmap(lambda x: x, range(3), batch_size=bad)  # type: ignore[arg-type]


def test_a_batch_runs_as_a_local_asyncmap_on_a_worker(shared: list[int]) -> None:
    out = pmap(_interval, [0.3] * 8, batch_size=4)
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for w, a, b in out:
        by_worker.setdefault(w, []).append((a, b))
    assert set(by_worker) == set(shared)  # one batch each
    for spans in by_worker.values():
        assert _max_overlap(spans) >= 2  # its elements ran concurrently there


def test_auto_batch_sizes() -> None:
    from pydistributed.mapping import auto_size as _auto_size
    from pydistributed.mapping import auto_sizes as _auto_sizes

    assert _auto_size(20_000, 2) == 2500  # about 4 batches per worker
    assert _auto_size(10, 2) == 2
    assert _auto_size(1, 8) == 1
    assert _auto_size(10**9, 2) == 10_000  # capped
    head, sizes = _auto_sizes(iter(range(50)), None, 2)  # short, unknown length: measured
    assert head == list(range(50)) and next(sizes) == 7
    head, sizes = _auto_sizes(iter(range(10**6)), None, 2)  # long: starts small, grows
    assert len(head) == 800
    growing = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
    assert [next(sizes) for _ in range(9)] == growing


# -- errors ----------------------------------------------------------------------------------


def test_manual_on_error_examples(shared: list[int]) -> None:
    out = pmap(_iseven_error, range(1, 5), on_error=lambda e: e)
    assert out[0] == 1 and out[2] == 3
    assert all(isinstance(e, ValueError) and e.args == ("foo",) for e in (out[1], out[3]))
    assert pmap(_iseven_error, range(1, 5), on_error=lambda e: 0) == [1, 0, 3, 0]
    for size in (2, "auto"):
        assert pmap(_iseven_error, range(1, 5), on_error=lambda e: 0, batch_size=size) == [
            1,
            0,
            3,
            0,
        ]


def test_the_first_error_stops_the_map(shared: list[int]) -> None:
    consumed: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(1000):
            consumed.append(i)
            yield i

    def f(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        time.sleep(0.02)
        return x

    with pytest.raises(RemoteException) as info:
        pmap(f, gen())
    assert isinstance(info.value.captured.exc, ValueError)
    assert str(info.value).startswith(f"On worker {info.value.pid}:")
    assert len(consumed) < 100
    consumed.clear()
    with pytest.raises(RemoteException):
        pmap(f, gen(), batch_size=5)
    assert len(consumed) < 200
    # on_error that raises stops it too, with its own error
    with pytest.raises(KeyError):
        pmap(f, range(10), on_error=lambda e: (_ for _ in ()).throw(KeyError(str(e))))


def test_retry_delays(shared: list[int], tmp_path: Path) -> None:
    f = _attempts(tmp_path / "a")
    (tmp_path / "a").mkdir()
    # each element fails twice, then works: three attempts of four allowed
    assert pmap(f, range(6), [2] * 6, retry_delays=[0, 0, 0]) == list(range(6))
    assert [_count(tmp_path / "a", x) for x in range(6)] == [3] * 6
    # more failures than retries: the last error is raised
    (tmp_path / "b").mkdir()
    g = _attempts(tmp_path / "b")
    with pytest.raises(RemoteException) as info:
        pmap(g, [0], [10], retry_delays=[0, 0, 0])
    assert isinstance(info.value.captured.exc, OSError)
    assert _count(tmp_path / "b", 0) == 4
    # an ExponentialBackOff, and a generator of delays (read once, used for every element)
    (tmp_path / "c").mkdir()
    h = _attempts(tmp_path / "c")
    delays = ExponentialBackOff(n=2, first_delay=0.01, factor=2.0)
    assert pmap(h, range(4), [1] * 4, retry_delays=delays) == list(range(4))
    assert pmap(h, range(4, 8), [1] * 4, retry_delays=(0.0 for _ in range(2))) == list(range(4, 8))
    assert [_count(tmp_path / "c", x) for x in range(8)] == [2] * 8


def test_retry_check(shared: list[int], tmp_path: Path) -> None:
    f = _attempts(tmp_path)
    seen: list[tuple[Any, BaseException]] = []

    def no(state: Any, e: BaseException) -> bool:
        seen.append((state, e))
        return False

    with pytest.raises(RemoteException):
        pmap(f, [0], [5], retry_delays=[0, 0, 0], retry_check=no)
    assert _count(tmp_path, 0) == 1
    assert len(seen) == 1 and isinstance(seen[0][1], OSError)  # the original exception
    assert list(seen[0][0]) == [0, 0]  # the state: the delays still to come

    def stop_early(state: Any, e: BaseException) -> tuple[Any, bool]:
        return iter([]), True  # retry once more, then no delays are left

    with pytest.raises(RemoteException):
        pmap(f, [1], [5], retry_delays=[0, 0, 0], retry_check=stop_early)
    assert _count(tmp_path, 1) == 2

    def only_oserror(state: Any, e: BaseException) -> bool:
        return isinstance(e, OSError)

    assert pmap(f, [2], [2], retry_delays=[0, 0], retry_check=only_oserror) == [2]
    assert _count(tmp_path, 2) == 3


def test_on_error_runs_before_retries(shared: list[int], tmp_path: Path) -> None:
    f = _attempts(tmp_path)
    # on_error returns: the element is not retried
    assert pmap(f, [0, 1], [9, 0], on_error=lambda e: -1, retry_delays=[0, 0, 0]) == [-1, 1]
    assert _count(tmp_path, 0) == 1
    # the manual's example: NaN for one kind of error, a retry for the others
    calls: list[str] = []

    def handler(e: BaseException) -> float:
        calls.append(type(e).__name__)
        if isinstance(e, ZeroDivisionError):
            return math.nan
        raise e

    out = pmap(
        lambda x, fails: 1 / 0 if x == 9 else f(x, fails),
        [9, 2],
        [0, 1],
        on_error=handler,
        retry_delays=ExponentialBackOff(n=3, first_delay=0.01),
    )
    assert math.isnan(out[0]) and out[1] == 2
    assert _count(tmp_path, 2) == 2
    assert sorted(calls) == ["OSError", "ZeroDivisionError"]
    # in batches too
    assert pmap(f, [3, 4, 5], [1, 0, 1], retry_delays=[0], batch_size=3) == [3, 4, 5]
    assert [_count(tmp_path, x) for x in (3, 4, 5)] == [2, 1, 2]
    out = pmap(f, [6, 7], [1, 0], on_error=lambda e: -1, retry_delays=[0], batch_size=2)
    assert out == [-1, 7]
    assert [_count(tmp_path, x) for x in (6, 7)] == [1, 1]


# -- dead workers --------------------------------------------------------------------------------


def _die_on(victim: int) -> Callable[[int], int]:
    def f(x: int) -> int:
        if myid() == victim:
            os._exit(1)
        time.sleep(0.01)
        return x * 2

    return f


def test_a_worker_dying_during_the_map_with_retries(add_workers: Callable[..., list[int]]) -> None:
    pids = add_workers(3)
    victim = pids[0]  # the first worker handed out: it dies at its first element
    out = pmap(_die_on(victim), range(30), retry_delays=[0, 0])
    assert out == [x * 2 for x in range(30)]
    assert current_cluster().registry.is_dead(victim)


def test_a_worker_dying_during_a_batched_map_with_retries(
    add_workers: Callable[..., list[int]],
) -> None:
    pids = add_workers(3)
    out = pmap(_die_on(pids[0]), range(40), batch_size=4, retry_delays=[0.01])
    assert out == [x * 2 for x in range(40)]


def test_a_worker_dying_during_the_map_without_retries(
    add_workers: Callable[..., list[int]],
) -> None:
    pids = add_workers(3)
    with pytest.raises(ProcessExitedException):
        pmap(_die_on(pids[0]), range(30))
    # with on_error instead: the dead worker's element gets its value, the others are done
    out = pmap(_die_on(pids[1]), range(30), on_error=lambda e: type(e).__name__)
    assert out.count("ProcessExitedException") == 1
    assert [v for v in out if isinstance(v, int)] == [x * 2 for x in range(30) if x * 2 in out]
    assert pmap(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]  # the survivor carries on


# -- a pool used on a worker -------------------------------------------------------------------


def test_pmap_on_a_worker_with_a_pool_from_home(shared: list[int]) -> None:
    a, b = shared
    pool = WorkerPool([b])
    out = remotecall_fetch(
        lambda p: pmap(lambda x: (x, myid()), p, range(5)),
        a,
        pool,
    )
    assert out == [(x, b) for x in range(5)]
    # the worker's default pool is the master's
    got = remotecall_fetch(lambda: sorted(set(pmap(lambda x: myid(), range(20)))), a)
    assert set(got) <= {a, b}


# -- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_interrupts_the_remote_calls(shared: list[int], tmp_path: Path) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    running = str(tmp_path)

    def element(x: int) -> None:
        open(os.path.join(running, str(x)), "w").close()  # a sign that sends no message
        time.sleep(60)

    sent: list[float] = []

    def ctrl_c_once_every_worker_runs_one() -> None:
        try:
            wait_until(
                lambda: len(os.listdir(running)) >= len(shared),
                timeout=T,
                what="every worker to run an element",
            )
        finally:  # whatever happened: the map must not go on for minutes
            sent.append(time.monotonic())
            signal.pthread_kill(main.ident, signal.SIGINT)

    # Ctrl-C must raise KeyboardInterrupt here, however pytest was started (a background job
    # of a non-interactive shell inherits SIGINT ignored)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c, outcome = in_thread(ctrl_c_once_every_worker_runs_one)
    try:
        with pytest.raises(KeyboardInterrupt):
            pmap(element, range(6))
    finally:
        ctrl_c.join(T)
        if handler is not None:  # None: not set from Python, nothing to put back
            signal.signal(signal.SIGINT, handler)
    elapsed = time.monotonic() - sent[0]
    assert outcome == [None], outcome  # Ctrl-C came with every worker busy
    # the interrupted calls came back (pmap waits for them at most INTERRUPT_GRACE)
    assert elapsed < INTERRUPT_GRACE - 0.5, elapsed
    # the cluster still answers, and the workers are free again
    assert [remotecall_fetch(myid, w) for w in shared] == shared
    assert pmap(lambda x: (x, myid()), range(4))[0][0] == 0
    assert len(pmap(lambda x: myid(), range(8))) == 8


# -- the examples ----------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pydistributed", "-p", "2", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def test_example_pmap_basics() -> None:
    out = _run_example("pmap_basics.py")
    assert "squares: [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]" in out
    assert "workers used: [2, 3] of [2, 3]" in out
    assert "sums: [11, 22, 33]" in out
    assert "batched: 100000 results, last 100000" in out
    assert "inline: [1, ValueError('2 is even'), 3, ValueError('4 is even')]" in out
    assert "zeros: [1, 0, 3, 0]" in out
    assert "retried: [0, 10, 20, 30, 40, 50, 60, 70]" in out
    assert "asyncmap: 3 sizes, all equal: True" in out


def test_example_pmap_caching_pool() -> None:
    out = _run_example("pmap_caching_pool.py")
    assert "results: [1, 3, 5] ... 199" in out
    m = re.search(r"sent (\d+) MB for 100 elements on 2 workers", out)
    assert m and 100 <= int(m.group(1)) < 110, out
    assert re.search(r"again: same results True, sent 0\.\d MB", out), out
