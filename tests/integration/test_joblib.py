"""The "pydistributed" joblib backend against real workers: joblib.Parallel, scikit-learn."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable

import pytest

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

from joblib import Parallel, delayed, parallel_backend  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import pydistributed.joblib as pjl  # noqa: E402
from pydistributed import (  # noqa: E402
    ProcessExitedException,
    RemoteException,
    WorkerPool,
    myid,
    nworkers,
)

pytestmark = pytest.mark.timeout(180)

T = 60.0  # Parallel(timeout=T): a batch expected to finish does within it


class TaskError(Exception):
    """An exception type of the tests' own (importable on the workers)."""


def _square_where(x: int) -> tuple[int, int]:
    return x * x, myid()


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise TaskError(f"bad input {x}")
    return x


def _sleep_then(seconds: float, x: int) -> int:
    time.sleep(seconds)
    return x


# -- registration and n_jobs -------------------------------------------------------------------


def test_importing_the_module_registers_the_backend() -> None:
    from joblib.parallel import BACKENDS

    assert BACKENDS[pjl.NAME] is pjl.PydistributedBackend
    assert pjl.NAME == "pydistributed"
    pjl.register()  # again: harmless
    assert BACKENDS["pydistributed"] is pjl.PydistributedBackend


def test_no_workers_runs_in_this_process() -> None:
    assert nworkers() == 1  # no workers: the master works (and joblib runs n_jobs=1 inline)
    with parallel_backend("pydistributed"):
        assert joblib.effective_n_jobs(-1) == 1
        out = Parallel(timeout=T)(delayed(_square_where)(i) for i in range(5))
    assert out == [(i * i, 1) for i in range(5)]


def test_effective_n_jobs_follows_the_worker_count(shared: list[int]) -> None:
    backend = pjl.PydistributedBackend()
    assert [backend.effective_n_jobs(n) for n in (-1, None, -2, -3, 1, 2, 3, 64)] == [
        2,
        2,
        1,
        1,
        1,
        2,
        2,  # more than the workers: capped
        2,
    ]
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)
    with parallel_backend("pydistributed"):
        assert joblib.effective_n_jobs() == 2
    with parallel_backend("pydistributed", n_jobs=5):
        assert joblib.effective_n_jobs(None) == 2
    # a pool of its own: its size
    pool = WorkerPool(shared[:1])
    assert pjl.PydistributedBackend(pool=pool).effective_n_jobs(-1) == 1


# -- joblib.Parallel ---------------------------------------------------------------------------


def test_parallel_runs_lambdas_and_closures_on_the_workers(shared: list[int]) -> None:
    offset = 100

    def closure(x: int) -> tuple[int, int, int]:
        return x + offset, myid(), os.getpid()

    with parallel_backend("pydistributed"):
        out = Parallel(n_jobs=-1, timeout=T)(delayed(closure)(i) for i in range(20))
        squares = Parallel(timeout=T)(delayed(lambda x: x * x)(i) for i in range(20))
    assert [v for v, _, _ in out] == [i + 100 for i in range(20)]
    assert {p for _, p, _ in out} <= set(shared)
    assert os.getpid() not in {ospid for _, _, ospid in out}
    assert squares == [i * i for i in range(20)]


def test_backend_given_by_name_to_parallel(shared: list[int]) -> None:
    out = Parallel(n_jobs=2, backend="pydistributed", timeout=T)(
        delayed(_square_where)(i) for i in range(10)
    )
    assert [v for v, _ in out] == [i * i for i in range(10)]
    assert {p for _, p in out} <= set(shared)


def test_both_workers_work_at_once(shared: list[int]) -> None:
    with parallel_backend("pydistributed"):
        out = Parallel(n_jobs=2, batch_size=1, timeout=T)(
            delayed(lambda s: (time.sleep(s), myid())[1])(0.3) for _ in range(8)
        )
    assert set(out) == set(shared)


def test_generator_output(shared: list[int]) -> None:
    with parallel_backend("pydistributed"):
        gen = Parallel(n_jobs=2, return_as="generator", timeout=T)(
            delayed(_square_where)(i) for i in range(10)
        )
        assert [v for v, _ in gen] == [i * i for i in range(10)]


class _CountingPool(WorkerPool):
    """A WorkerPool that counts the workers taken from it: one per batch sent."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(pids)
        self.taken = 0

    def take(self, timeout: float | None = None) -> int:
        self.taken += 1
        return super().take(timeout)


def test_many_tiny_tasks_are_batched_by_joblib(shared: list[int]) -> None:
    pool = _CountingPool(shared)
    with parallel_backend("pydistributed", pool=pool):
        out = Parallel(n_jobs=2, timeout=T)(delayed(abs)(-i) for i in range(3000))
    assert out == list(range(3000))
    assert 0 < pool.taken < 1000  # auto-batching grew the batches: far fewer sends than tasks


def test_a_pool_of_its_own(shared: list[int]) -> None:
    pool = WorkerPool(shared)
    with parallel_backend("pydistributed", pool=pool):
        out = Parallel(timeout=T)(delayed(_square_where)(i) for i in range(10))
    assert {p for _, p in out} <= set(shared)
    assert sorted(pool.workers) == sorted(shared)  # every worker given back
    assert pool.isready()


# -- errors ------------------------------------------------------------------------------------


def test_a_task_error_is_raised_with_its_own_type(shared: list[int]) -> None:
    with parallel_backend("pydistributed"):
        with pytest.raises(TaskError, match="bad input 3") as info:
            Parallel(n_jobs=2, timeout=T)(delayed(_fail_on)(i, 3) for i in range(10))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteException)
        assert cause.pid in shared
        assert "_fail_on" in cause.captured.traceback_text
        # a lambda's error too, and the backend keeps working afterwards
        with pytest.raises(ZeroDivisionError):
            Parallel(n_jobs=2, timeout=T)(delayed(lambda x: 1 / x)(i) for i in (1, 0, 2))
        assert Parallel(n_jobs=2, timeout=T)(delayed(abs)(-i) for i in range(5)) == [
            0,
            1,
            2,
            3,
            4,
        ]


def test_an_error_stops_the_batches_not_yet_sent(shared: list[int]) -> None:
    # 60 tasks of 0.2 s on 2 workers would take 6 s; the first one fails at once
    tasks = [delayed(_fail_on)(0, 0)] + [delayed(_sleep_then)(0.2, i) for i in range(60)]
    start = time.monotonic()
    with parallel_backend("pydistributed"):
        with pytest.raises(TaskError):
            Parallel(n_jobs=2, batch_size=1, timeout=T)(tasks)
    assert time.monotonic() - start < 4.0
    # the workers are free again: a new call is not queued behind the dropped batches
    with parallel_backend("pydistributed"):
        assert Parallel(n_jobs=2, timeout=T)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_parallel_timeout(shared: list[int]) -> None:
    start = time.monotonic()
    with parallel_backend("pydistributed"):
        with pytest.raises(multiprocessing.TimeoutError):
            Parallel(n_jobs=2, batch_size=1, timeout=0.5)(
                delayed(_sleep_then)(3.0, i) for i in range(4)
            )
    assert time.monotonic() - start < 2.5


def test_a_worker_that_exits_gives_process_exited(add_workers: Callable[..., list[int]]) -> None:
    pids = add_workers(2)  # not the shared ones: a pool of these two
    with parallel_backend("pydistributed", pool=WorkerPool(pids)):
        with pytest.raises(ProcessExitedException) as info:
            Parallel(n_jobs=2, batch_size=1, timeout=T)(
                delayed(os._exit)(3) if i == 0 else delayed(_sleep_then)(0.1, i) for i in range(6)
            )
    assert info.value.worker_id in pids


# -- nested use --------------------------------------------------------------------------------


def _inner_default(n: int) -> tuple[int, list[int]]:
    # joblib's default for a nested call: threads on this worker
    out = Parallel(n_jobs=2)(delayed(_square_where)(i) for i in range(n))
    return myid(), [v for v, _ in out]


def _inner_on_the_cluster(n: int) -> tuple[int, list[tuple[int, int]]]:
    import pydistributed.joblib  # noqa: F401  (registers the backend on this worker)

    with parallel_backend("pydistributed"):
        out = Parallel(n_jobs=-1, timeout=T)(delayed(_square_where)(i) for i in range(n))
    return myid(), out


def test_nested_parallel_runs_on_the_worker(shared: list[int]) -> None:
    with parallel_backend("pydistributed"):
        out = Parallel(n_jobs=2, timeout=T)(delayed(_inner_default)(n) for n in range(1, 5))
    for n, (where, values) in zip(range(1, 5), out, strict=True):
        assert where in shared
        assert values == [i * i for i in range(n)]


def test_nested_parallel_on_the_pydistributed_backend(shared: list[int]) -> None:
    # every outer task holds a worker while its inner call uses the workers: no deadlock
    with parallel_backend("pydistributed"):
        out = Parallel(n_jobs=2, batch_size=1, timeout=T)(
            delayed(_inner_on_the_cluster)(6) for _ in range(4)
        )
    for where, inner in out:
        assert where in shared
        assert [v for v, _ in inner] == [i * i for i in range(6)]
        assert {p for _, p in inner} <= set(shared)


# -- scikit-learn ------------------------------------------------------------------------------


def _where(estimator: object, X: object, y: object) -> float:
    """A scorer that reports the process that scored (and so fitted) the candidate."""
    return float(myid())


def test_scikit_learn_grid_search_on_the_workers(shared: list[int]) -> None:
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    grid = {"C": [1.0, 10.0], "gamma": [0.01, 0.05]}
    scoring = {"accuracy": "accuracy", "where": _where}

    def search(n_jobs: int | None) -> GridSearchCV:
        gs = GridSearchCV(SVC(), grid, cv=3, scoring=scoring, refit="accuracy", n_jobs=n_jobs)
        return gs.fit(X, y)

    local = search(1)  # n_jobs=1: joblib runs it in this process
    with parallel_backend("pydistributed"):
        remote = search(2)
        default = search(None)  # scikit-learn's n_jobs=None: the backend's default, all workers
    assert remote.best_params_ == local.best_params_
    assert list(remote.cv_results_["mean_test_accuracy"]) == list(
        local.cv_results_["mean_test_accuracy"]
    )
    for gs in (remote, default):
        where = {int(gs.cv_results_[f"split{k}_test_where"][c]) for k in range(3) for c in range(4)}
        assert where <= set(shared), where
    assert {int(v) for v in local.cv_results_["split0_test_where"]} == {1}
