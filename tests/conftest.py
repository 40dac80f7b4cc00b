"""Shared fixtures. Integration tests start real workers; every test ends them, by pid."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

faulthandler.enable()


def worker_table() -> dict[int, Any]:
    """pid -> WorkerInfo of every worker the current cluster knows about."""
    from pydistributed.cluster import current_cluster

    return {info.pid: info for info in current_cluster().registry.infos()}


def _worker_processes() -> dict[int, object]:
    """pid -> Popen of every worker the current cluster knows about (process 1 only)."""
    return {pid: info.process for pid, info in worker_table().items() if info.process}


def end_workers(pids: list[int]) -> None:
    """Remove ``pids`` if still there; kill by OS pid whatever did not go."""
    from pydistributed import rmprocs

    procs = {p: proc for p, proc in _worker_processes().items() if p in pids}
    table = worker_table()
    live = [p for p in pids if p in table]
    if live:
        try:
            with warnings.catch_warnings():  # a worker that exited meanwhile: nothing to say
                warnings.simplefilter("ignore")
                rmprocs(live, waitfor=10)
        except Exception as e:  # still kill below
            print(f"cleanup: rmprocs failed: {e!r}", file=sys.stderr)
    for proc in procs.values():
        try:
            if proc.poll() is None:  # type: ignore[attr-defined]
                proc.kill()  # type: ignore[attr-defined]
            proc.wait(timeout=10)  # type: ignore[attr-defined]
        except Exception:
            pass


@pytest.fixture
def add_workers() -> Iterator[Callable[..., list[int]]]:
    """``add_workers(n, **kw)`` adds workers that are removed (and killed) after the test."""
    added: list[int] = []

    def add(n: int = 2, **kw: object) -> list[int]:
        from pydistributed import addprocs

        pids = addprocs(n, **kw)
        added.extend(pids)
        return pids

    yield add
    end_workers(added)


@pytest.fixture(scope="module")
def shared() -> Iterator[list[int]]:
    """Two workers shared by the tests of a module that neither kill nor remove them."""
    from pydistributed import addprocs

    pids = addprocs(2)
    yield pids
    end_workers(pids)


@pytest.fixture
def two_workers(add_workers: Callable[..., list[int]]) -> list[int]:
    """Two fresh local workers."""
    return add_workers(2)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing survives the run: end every worker still known, by its OS pid, and the
    forkserver that forked the local ones (it would die with this process anyway)."""
    try:
        from pydistributed.managers import local

        if local._forkserver is not None:
            local._forkserver.close()
    except Exception:
        pass
    try:
        leftovers = _worker_processes()
    except Exception:
        return
    for proc in leftovers.values():
        try:
            if proc.poll() is None:  # type: ignore[attr-defined]
                os.kill(proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            proc.wait(timeout=5)  # type: ignore[attr-defined]
        except Exception:
            pass


@pytest.fixture
def master_scripts(tmp_path: Any) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``start(source, *args, stderr=False)``: run ``source`` as a master script (a real
    process, with this tree on its path; stdout piped, and stderr when asked), in a session of
    its own, so that its workers go with it: whatever is still running at teardown is killed
    by process group."""
    started: list[subprocess.Popen[str]] = []

    def start(source: str, *args: str, stderr: bool = False) -> subprocess.Popen[str]:
        script = tmp_path / f"master{len(started)}.py"
        script.write_text(source)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr else None,
            text=True,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def process_state(ospid: int) -> str | None:
    """The state letter of an OS process from /proc (None if gone; 'Z' is a zombie)."""
    try:
        with open(f"/proc/{ospid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def is_alive(ospid: int) -> bool:
    state = process_state(ospid)
    return state is not None and state not in ("Z", "X")


def worker_ospid(pid: int) -> int:
    """The OS process id of worker ``pid`` of the current cluster."""
    value = worker_table()[pid].ospid
    assert value is not None
    return value


def python_stdout(code: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    """The standard output of ``python -c code`` run by this interpreter in a fresh process
    (``env``: its environment), which must exit with 0 within ``timeout`` seconds (else the
    assertion shows its stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "the condition",
) -> Any:
    """Poll ``predicate()`` until it returns something true, and return that.

    Raises:
        AssertionError: ``timed out waiting for {what}``, after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what} ({timeout} s)")
        time.sleep(interval)


def requests_awaiting(pid: int) -> int:
    """How many requests this process has sent to ``pid`` and still awaits the answer of.

    A request is counted from just before it is sent: a thread blocked in ``fetch``, ``take``,
    ``wait`` or ``remotecall_fetch`` towards ``pid`` is one (runs on any process).
    """
    from pydistributed.cluster import current_cluster

    try:
        peer = current_cluster().connections.get(pid)
    except Exception:
        return 0
    return len(peer.pending)


def readline(stream: Any, timeout: float = 30.0) -> str:
    """``stream.readline()``, bounded: AssertionError if no line (or EOF) comes in time."""
    t, out = in_thread(stream.readline)
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"timed out waiting for a line from {stream!r} ({timeout} s)")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]  # type: ignore[return-value]


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` on a daemon thread; the list gets its result or its exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def open_sockets() -> list[Any]:
    """This process's open sockets, each a duplicate to inspect (closed by the caller; use
    ``with``). Runs on workers too (tests is importable there)."""
    import socket

    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                out.append(socket.socket(fileno=os.dup(int(fd))))
        except OSError:
            continue
    return out


def cpu_seconds(ospid: int) -> float:
    """The CPU time (user + system) process ``ospid`` has used so far."""
    with open(f"/proc/{ospid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_spinning(ospid: int, timeout: float = 30.0) -> None:
    """Wait until process ``ospid`` has spent 0.1 s of CPU from now: a worker that created a
    marker file and then entered a GIL-holding C call is inside that call (a loaded machine
    may pause it in between, and a message read there would change the test)."""
    spent = cpu_seconds(ospid)
    wait_until(lambda: cpu_seconds(ospid) > spent + 0.1, timeout, what=f"process {ospid} to spin")
