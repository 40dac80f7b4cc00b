"""Local workers forked by the forkserver (``forkserver.py``, ``managers/forkspawn.py``): where
they come from, their death with the master, their exit codes, their options, and the ways
around the forkserver (``exename``, ``exeflags``, ``PYDIST_SPAWN=exec``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pydistributed import ProcessExitedException, addprocs, remotecall_fetch
from pydistributed.managers import local
from tests.conftest import is_alive, readline, wait_until, worker_ospid


def _forkserver_pid() -> int:
    fs = local._forkserver
    assert fs is not None and fs.alive
    return fs.pid


def _threads(ospid: int) -> int:
    return len(os.listdir(f"/proc/{ospid}/task"))


def test_workers_are_forked_by_the_forkserver(add_workers: Callable[..., list[int]]) -> None:
    ws = add_workers(2)
    server = _forkserver_pid()
    assert server != os.getpid()
    for w in ws:
        assert remotecall_fetch(os.getppid, w) == server
        assert worker_ospid(w) == remotecall_fetch(os.getpid, w)
    # one thread, always: it forks
    assert _threads(server) == 1
    # a second addprocs uses the same forkserver
    (w,) = add_workers(1)
    assert remotecall_fetch(os.getppid, w) == server == _forkserver_pid()


def test_forked_workers_run_in_their_own_session(add_workers: Callable[..., list[int]]) -> None:
    (w,) = add_workers(1)
    ospid = worker_ospid(w)
    assert remotecall_fetch(os.getsid, w, 0) == ospid  # start_new_session: Ctrl-C is relayed
    assert remotecall_fetch(lambda: __import__("__main__").__dict__.get("main"), w) is None


def test_exit_code_reaches_process_exited_exception(add_workers: Callable[..., list[int]]) -> None:
    (w,) = add_workers(1)
    with pytest.raises(ProcessExitedException) as info:
        remotecall_fetch(os._exit, w, 7)
    assert str(info.value) == f"worker {w} has exited with code 7"


def test_env_dir_and_thread_limits_apply_in_the_fork(
    add_workers: Callable[..., list[int]], tmp_path: Path
) -> None:
    (w,) = add_workers(1, dir=str(tmp_path), env={"PYDIST_TEST_VAR": "fork"})
    getenv = lambda k: os.environ.get(k)  # noqa: E731  (os.environ.get would ship our environ)
    assert remotecall_fetch(os.getppid, w) == _forkserver_pid()
    assert remotecall_fetch(os.getcwd, w) == str(tmp_path)
    assert remotecall_fetch(getenv, w, "PYDIST_TEST_VAR") == "fork"
    assert remotecall_fetch(getenv, w, "OMP_NUM_THREADS") == "1"
    # the environment the C library sees too (libraries read getenv, not os.environ)
    import ctypes

    def c_getenv(k: str) -> str | None:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        v = libc.getenv(k.encode())
        return v.decode() if v is not None else None

    assert remotecall_fetch(c_getenv, w, "PYDIST_TEST_VAR") == "fork"
    # the master's cookie is in no worker's environment
    assert remotecall_fetch(getenv, w, "PYDIST_COOKIE") is None


def test_a_missing_dir_is_refused_before_any_fork(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        addprocs(1, dir=str(tmp_path / "nowhere"))


def test_exename_and_exeflags_bypass_the_forkserver(
    add_workers: Callable[..., list[int]], tmp_path: Path
) -> None:
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    (a,) = add_workers(1, exename=str(python))
    (b,) = add_workers(1, exeflags=["-X", "utf8"])
    for w in (a, b):
        assert remotecall_fetch(os.getppid, w) == os.getpid()
    assert remotecall_fetch(lambda: sys.flags.utf8_mode, b) == 1


def test_pydist_spawn_exec_bypasses_the_forkserver(
    add_workers: Callable[..., list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYDIST_SPAWN", "exec")
    (w,) = add_workers(1)
    assert remotecall_fetch(os.getppid, w) == os.getpid()
    monkeypatch.setenv("PYDIST_SPAWN", "vfork")
    with pytest.raises(ValueError, match="PYDIST_SPAWN='vfork'"):
        addprocs(1)


def test_a_dead_forkserver_is_replaced(add_workers: Callable[..., list[int]]) -> None:
    (w,) = add_workers(1)
    ospid = worker_ospid(w)
    old = _forkserver_pid()
    os.kill(old, signal.SIGKILL)
    # its workers die with it (their death signal)
    wait_until(lambda: not is_alive(ospid), timeout=10, what="the worker to die")
    with pytest.raises(ProcessExitedException):
        remotecall_fetch(os.getpid, w)
    (v,) = add_workers(1)
    new = _forkserver_pid()
    assert new != old and remotecall_fetch(os.getppid, v) == new


MASTER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = {path!r}
    import os
    from pydistributed import addprocs, remotecall_fetch
    from pydistributed.managers import local
    pids = addprocs(3)
    ospids = [remotecall_fetch(os.getpid, p) for p in pids]
    print(local._forkserver.pid, *ospids, flush=True)
    time.sleep(60)
    """
)


def test_sigkill_of_the_master_ends_the_forkserver_and_every_worker() -> None:
    proc: subprocess.Popen[str] = subprocess.Popen(
        [sys.executable, "-c", MASTER.format(path=sys.path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ospids: list[int] = []
    try:
        assert proc.stdout is not None
        ospids = [int(x) for x in readline(proc.stdout, 60).split()]
        assert len(ospids) == 4
        assert all(is_alive(p) for p in ospids)
        proc.kill()
        proc.wait(10)
        wait_until(
            lambda: not any(is_alive(p) for p in ospids),
            timeout=5,
            interval=0.05,
            what=f"the forkserver and workers {ospids} to die",
        )
    finally:
        for p in ospids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _rss_pss(ospid: int) -> tuple[int, int]:
    fields: dict[str, int] = {}
    with open(f"/proc/{ospid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields["Rss"], fields["Pss"]


def test_idle_forked_worker_memory(add_workers: Callable[..., list[int]], capsys: Any) -> None:
    ws = add_workers(2)
    rss, pss = _rss_pss(worker_ospid(ws[0]))
    with capsys.disabled():
        print(f"\nidle forked worker: RSS {rss / 1024:.1f} MB, PSS {pss / 1024:.1f} MB")
    assert pss <= 25 * 1024, f"idle worker PSS {pss} kB"


def test_concurrent_addprocs_share_the_forkserver(add_workers: Callable[..., list[int]]) -> None:
    import threading

    results: list[list[int]] = []
    errors: list[BaseException] = []

    def add() -> None:
        try:
            results.append(add_workers(3))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=add) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    ws = sorted(w for r in results for w in r)
    assert len(ws) == 6
    server = _forkserver_pid()
    assert {remotecall_fetch(os.getppid, w) for w in ws} == {server}
    assert len({worker_ospid(w) for w in ws}) == 6


def test_a_forked_worker_that_fails_to_start_is_a_launch_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydistributed import LaunchError
    from pydistributed.managers.forkspawn import ForkServerClient

    spawn_many = ForkServerClient.spawn_many

    def bad_address(
        self: ForkServerClient, count: int, cwd: str, env: Any, bind_to: str, cookie: str
    ) -> Any:
        # the injected fault: an address no worker can listen at (addprocs cannot ask for one)
        return spawn_many(self, count, cwd, env, "256.0.0.1", cookie)

    monkeypatch.setattr(ForkServerClient, "spawn_many", bad_address)
    with pytest.raises(LaunchError) as info:
        addprocs(1)
    err = info.value
    assert "exited with code 1 before reporting its address" in str(err), str(err)
    assert "socket.gaierror" in err.output, err.output
    assert err.ospid is not None and not is_alive(err.ospid)
