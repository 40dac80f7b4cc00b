"""Faults a peer or a worker can cause, and what the cluster does about them: an exception of
any kind while unpickling, a worker that stops answering, a master killed while its worker is
stuck in C code, and the cookie's rules."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    ProcessExitedException,
    RemoteException,
    cluster_cookie,
    myid,
    remotecall,
    remotecall_fetch,
)
from tests.conftest import is_alive, worker_ospid
from tests.integration import _helpers as h
from tests.security import _remote
from tests.security.conftest import WAIT, wait_until

REPO = Path(__file__).resolve().parents[2]


class ExitsWhenUnpickled:
    """Unpickling it calls ``sys.exit(3)``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (3,))


class InterruptsWhenUnpickled:
    """Unpickling it raises ``KeyboardInterrupt``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_remote.raise_keyboard_interrupt, ())


@pytest.mark.parametrize("bad", [ExitsWhenUnpickled(), InterruptsWhenUnpickled()])
def test_an_argument_that_exits_while_unpickled_fails_only_its_call(
    add_workers: Any, bad: Any
) -> None:
    (w,) = add_workers(1)
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(h.identity, w, bad)
    assert "cannot decode" in str(info.value)
    assert remotecall_fetch(myid, w) == w  # the link and the worker are fine


def _exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def test_a_result_that_exits_while_unpickled_fails_only_its_call(add_workers: Any) -> None:
    (w,) = add_workers(1)
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_exits_when_unpickled, w)
    text = str(info.value)
    assert f"ran on process {w}, but its answer cannot be received on process 1" in text
    assert "SystemExit" in text and info.value.pid == 1
    assert remotecall_fetch(myid, w) == w  # this process and the link are fine


# -- the heartbeat -----------------------------------------------------------------------------


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("PYDIST_HEARTBEAT", "0.2")
    monkeypatch.setenv("PYDIST_UNRESPONSIVE_AFTER", "1.5")
    return monkeypatch


def test_a_stopped_worker_is_reported_with_what_waits_on_it(
    add_workers: Any, fast_heartbeat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (w,) = add_workers(1)
    ospid = worker_ospid(w)
    fut = remotecall(h.sleep_then, w, 0.5, "done")
    os.kill(ospid, signal.SIGSTOP)
    try:
        waiting = threading.Thread(target=lambda: fut.wait(), daemon=True)
        waiting.start()
        with caplog.at_level(logging.WARNING, logger="pydistributed"):
            wait_until(
                lambda: f"worker {w} has not answered" in caplog.text, "the heartbeat's warning"
            )
        assert "1 calls waiting on it" in caplog.text
        assert is_alive(ospid)  # warned, not killed: it may be in a long C call
    finally:
        os.kill(ospid, signal.SIGCONT)
    assert fut.fetch(timeout=WAIT) == "done"  # and it goes on when it resumes
    # the waiting thread's own answer may come a moment later: it must not be cut by the
    # worker's removal after the test (its exception would land in the next test)
    waiting.join(WAIT)
    assert not waiting.is_alive()


def test_the_remove_policy_frees_the_callers_of_a_stopped_worker(
    add_workers: Any, fast_heartbeat: pytest.MonkeyPatch
) -> None:
    fast_heartbeat.setenv("PYDIST_UNRESPONSIVE", "remove")
    (w,) = add_workers(1)
    ospid = worker_ospid(w)
    os.kill(ospid, signal.SIGSTOP)
    try:
        with pytest.raises(ProcessExitedException) as info:
            remotecall_fetch(h.identity, w, 1)
        assert "unresponsive" in str(info.value)
        wait_until(lambda: not is_alive(ospid), "the stopped worker's process to be killed")
    finally:
        try:
            os.kill(ospid, signal.SIGCONT)
        except ProcessLookupError:
            pass


# -- a worker dies with its master, whatever it runs -------------------------------------------

_MASTER = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    from pydistributed import ClusterManager, WorkerConfig, addprocs, remote_do
    from tests.integration import _helpers as h

    class ByHand(ClusterManager):
        # starts the worker itself, as an ssh or scheduler manager would: no death signal
        def launch(self, params, launched, launch_ntfy):
            proc = subprocess.Popen(
                [sys.executable, "-m", "pydistributed.worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
            )
            proc.stdin.write((params["cookie"] + "\\n").encode())
            proc.stdin.close()
            with launch_ntfy:
                launched.append(WorkerConfig(io=proc.stdout, process=proc))
                launch_ntfy.notify_all()

    (w,) = addprocs(ByHand())
    from pydistributed.cluster import current_cluster
    print(current_cluster().registry.get(w).ospid, flush=True)
    remote_do(h.hold_gil, w, 10**11)  # one C call that keeps the GIL for minutes
    time.sleep(1)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_worker_stuck_in_c_code_dies_with_its_master() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    master = subprocess.Popen(
        [sys.executable, "-c", _MASTER],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    worker = 0
    try:
        assert master.stdout is not None
        worker = int(master.stdout.readline())
        assert master.stdout.readline().strip() == "ready"
        assert is_alive(worker)
        master.kill()  # no goodbye: the kernel closes its sockets
        master.wait(WAIT)
        wait_until(lambda: not is_alive(worker), "the worker to die with its master", WAIT)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(WAIT)
        if master.stdout is not None:
            master.stdout.close()
        if worker and is_alive(worker):
            os.kill(worker, signal.SIGKILL)


# -- the cookie ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "hunter2", "short-cook"])
def test_trivially_short_cookies_are_refused(bad: str) -> None:
    before = cluster_cookie()
    with pytest.raises(ValueError, match="at least 12"):
        cluster_cookie(bad)
    assert cluster_cookie() == before


def _start_worker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Start a worker by hand and stop it once it has printed its banner."""
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **env)
    environ["PYDIST_WORKER_TIMEOUT"] = "1"  # nobody joins: it exits by itself
    return subprocess.run(
        [sys.executable, "-m", "pydistributed.worker", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environ,
        timeout=WAIT,
    )


def test_a_worker_takes_its_cookie_from_the_environment_or_a_file(tmp_path: Path) -> None:
    cookie = "a-cookie-from-elsewhere-42"
    by_env = _start_worker(PYDIST_COOKIE=cookie)
    assert by_env.stdout.startswith("pydist_worker:"), by_env.stderr
    path = tmp_path / "cookie"
    path.write_text(cookie + "\n")
    by_file = _start_worker("--cookie-file", str(path))
    assert by_file.stdout.startswith("pydist_worker:"), by_file.stderr
    assert "warning" not in by_env.stderr + by_file.stderr


def test_a_cookie_on_the_command_line_is_warned_about() -> None:
    run = _start_worker("--cookie", "a-cookie-on-the-command-line")
    assert run.stdout.startswith("pydist_worker:")
    assert "every user of this host can read it" in run.stderr


def test_a_worker_refuses_a_short_cookie() -> None:
    run = _start_worker(PYDIST_COOKIE="hunter2")
    assert run.returncode == 2 and "at least 12" in run.stderr and not run.stdout


# -- memory --------------------------------------------------------------------------------


def _peak_mib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def _peak_after(data: bytes) -> int:
    return _peak_mib()


def test_a_large_bytes_argument_is_received_without_a_second_copy(add_workers: Any) -> None:
    (w,) = add_workers(1)
    before = remotecall_fetch(_peak_mib, w)
    size = 256
    peak = remotecall_fetch(_peak_after, w, b"\x01" * (size << 20))
    assert peak - before < 1.5 * size, f"the worker peaked {peak - before} MiB over {size} MiB"
