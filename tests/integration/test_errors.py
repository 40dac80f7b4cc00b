"""Errors a user can tell apart: a worker removed by ``rmprocs`` vs one that died, launch
failures as ``LaunchError`` with the worker's output, ``remote_do`` failures through logging,
and the manager hooks that the cluster calls (or stands in for)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pydistributed
from pydistributed import (
    ChannelClosedError,
    ClusterManager,
    LaunchError,
    LaunchTimeoutError,
    LocalManager,
    ProcessExitedException,
    RemoteChannel,
    WorkerConfig,
    addprocs,
    remote_do,
    remotecall,
    remotecall_fetch,
    rmprocs,
)
from pydistributed.cluster import current_cluster
from tests.conftest import end_workers, is_alive, python_stdout, worker_ospid
from tests.integration import _helpers as h

T = 30.0
REPO = Path(__file__).resolve().parents[2]


def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- removed vs died -------------------------------------------------------------------------


def test_a_call_to_a_removed_worker_says_it_was_removed(add_workers: Any) -> None:
    (w,) = add_workers(1)
    rmprocs(w, waitfor=T)
    with pytest.raises(ProcessExitedException) as info:
        remotecall_fetch(h.identity, w, 1)
    assert info.value.removed and info.value.worker_id == w
    assert "removed by rmprocs" in str(info.value)


def test_a_call_in_flight_when_rmprocs_runs_says_removed(add_workers: Any) -> None:
    (w,) = add_workers(1)
    fut = remotecall(h.sleep_then, w, 60)
    _wait_for(lambda: current_cluster().connections.lookup(w) is not None, "the connection")
    waiting = threading.Thread(target=lambda: rmprocs(w, waitfor=T), daemon=True)
    waiting.start()
    with pytest.raises(ProcessExitedException) as info:
        fut.fetch(timeout=T)
    waiting.join(T)
    assert info.value.removed


def test_a_worker_that_dies_is_not_called_removed(add_workers: Any) -> None:
    (w,) = add_workers(1)
    fut = remotecall(h.sleep_then, w, 60)
    os.kill(worker_ospid(w), signal.SIGKILL)
    with pytest.raises(ProcessExitedException) as info:
        fut.fetch(timeout=T)
    assert not info.value.removed
    with pytest.raises(ProcessExitedException) as later:
        remotecall_fetch(h.identity, w, 1)
    assert not later.value.removed and "removed" not in str(later.value)


# -- launch failures ---------------------------------------------------------------------------


def test_a_worker_that_exits_at_once_is_a_launch_error_with_its_stderr() -> None:
    code = "import sys; print('cannot start: no GPU', file=sys.stderr); sys.exit(4)"
    with pytest.raises(LaunchError) as info:
        addprocs(1, exeflags=["-c", code])
    err = info.value
    assert isinstance(err, RuntimeError) and not isinstance(err, TimeoutError)
    assert "cannot start: no GPU" in err.output and "code 4" in str(err)
    assert err.ospid is not None and not is_alive(err.ospid)


def test_a_worker_that_never_reports_is_a_launch_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "1.5")
    code = "import sys, time; print('stuck', file=sys.stderr, flush=True); time.sleep(60)"
    with pytest.raises(LaunchTimeoutError) as info:
        addprocs(1, exeflags=["-c", code])
    err = info.value
    assert isinstance(err, LaunchError) and isinstance(err, TimeoutError)
    assert "stuck" in err.output
    assert err.ospid is not None
    _wait_for(lambda: not is_alive(err.ospid or 0), "the stuck worker to be killed")


# -- remote_do failures are logged where they happen ------------------------------------------


def test_a_local_remote_do_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()

    def boom() -> None:
        done.set()
        raise ValueError("remote_do went wrong")

    with caplog.at_level(logging.ERROR, logger="pydistributed"):
        remote_do(boom, 1)
        assert done.wait(T)
        _wait_for(lambda: "remote_do went wrong" in caplog.text, "the log record")
    assert "remote_do from process 1 failed" in caplog.text


def test_a_worker_remote_do_failure_reaches_the_master_stderr(tmp_path: Path) -> None:
    script = tmp_path / "rdo.py"
    script.write_text(
        "import time\n"
        "from pydistributed import remote_do, remotecall_fetch, workers\n"
        "def boom():\n"
        "    raise ValueError('worker-side failure')\n"
        "w = workers()[0]\n"
        "remote_do(boom, w)\n"
        "remotecall_fetch(time.sleep, w, 0.5)  # lets the log line out before the end\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pydistributed", "-p", "1", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "From worker 2:" in proc.stderr
    assert "remote_do from process 1 failed" in proc.stderr
    assert "worker-side failure" in proc.stderr


# -- the manager's hooks ---------------------------------------------------------------------------


class KillingManager(LocalManager):
    """A LocalManager whose kill stops the process itself (a scheduler would cancel a job)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.killed: list[int] = []

    def kill(self, pid: int, config: WorkerConfig) -> None:
        self.killed.append(pid)
        config.process.terminate()


def test_rmprocs_calls_an_overridden_kill() -> None:
    m = KillingManager()
    pids = addprocs(m)
    try:
        rmprocs(pids, waitfor=T)
        assert m.killed == pids
    finally:
        end_workers(pids)


def test_the_default_manage_and_kill_do_nothing() -> None:
    class Bare(ClusterManager):
        def launch(self, params: Any, launched: Any, launch_ntfy: Any) -> None:
            pass

    m = Bare()
    assert m.manage(2, WorkerConfig(), "interrupt") is None
    assert m.kill(2, WorkerConfig()) is None


def test_launch_gets_the_cookie_in_its_params() -> None:
    seen: dict[str, Any] = {}

    class Peek(LocalManager):
        def launch(self, params: Any, launched: Any, launch_ntfy: Any) -> None:
            seen.update(params)
            super().launch(params, launched, launch_ntfy)

    pids = addprocs(Peek(1))
    try:
        assert seen["cookie"] == pydistributed.cluster_cookie()
    finally:
        end_workers(pids)


def test_init_worker_uses_its_manager_for_worker_to_worker_connections() -> None:
    code = (
        "from pydistributed import DefaultClusterManager, init_worker\n"
        "from pydistributed.cluster import current_cluster\n"
        "class M(DefaultClusterManager):\n"
        "    pass\n"
        "m = M()\n"
        "init_worker('a-cookie-of-some-length', m)\n"
        "c = current_cluster()\n"
        "print(c.connections.manager is m, c.registry.role)\n"
    )
    assert python_stdout(code).split() == ["True", "worker"]


# -- names and the command line -----------------------------------------------------------


def test_channel_closed_error_is_exported_and_raised() -> None:
    rc = RemoteChannel()
    rc.close()
    with pytest.raises(ChannelClosedError):
        rc.put(1)
    assert issubclass(ChannelClosedError, RuntimeError)


def test_pydist_refuses_a_bad_machine_file_before_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "s.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "hosts").write_text("# hosts\n2*h1\nh2:notaport\n")
    for hosts, says in (
        ("missing", "can't open machine file 'missing'"),
        ("hosts", "line 3: 'h2:notaport'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pydistributed", "--machine-file", hosts, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not marker.exists()
