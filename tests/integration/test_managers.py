"""The ClusterManager seam, driven by a manager written the way a user (or the SSH and
scheduler managers to come) would write one: only the public interface."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    ClusterManager,
    WorkerConfig,
    addprocs,
    cluster_cookie,
    interrupt,
    myid,
    remotecall,
    remotecall_fetch,
    rmprocs,
    workers,
)
from tests.conftest import end_workers, is_alive, wait_until
from tests.integration import _helpers as h


class RecordingManager(ClusterManager):
    """Starts workers itself, with `io` for the banner (like SSHManager will)."""

    extra_params = frozenset({"tag"})

    def __init__(self, n: int) -> None:
        self.n = n
        self.ops: list[tuple[int, str]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.params: dict[str, Any] = {}

    def launch(
        self, params: dict[str, Any], launched: list[WorkerConfig], launch_ntfy: threading.Condition
    ) -> None:
        self.params = dict(params)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        for i in range(self.n):
            proc = subprocess.Popen(
                [sys.executable, "-m", "pydistributed.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            assert proc.stdin is not None
            proc.stdin.write((cluster_cookie() + "\n").encode())
            proc.stdin.close()
            self.procs.append(proc)
            cfg = WorkerConfig(process=proc, io=proc.stdout, userdata={"index": i})
            with launch_ntfy:
                launched.append(cfg)
                launch_ntfy.notify_all()

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        self.ops.append((pid, op))
        super().manage(pid, config, op)


class HostPortManager(ClusterManager):
    """Announces workers it started by host and port (no io)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def launch(
        self, params: dict[str, Any], launched: list[WorkerConfig], launch_ntfy: threading.Condition
    ) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-m", "pydistributed.worker", "--cookie", cluster_cookie()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # pydist_worker:PORT#HOST
        port, _, host = line.split(":", 1)[1].partition("#")
        cfg = WorkerConfig(host=host, port=int(port), process=proc)
        with launch_ntfy:
            launched.append(cfg)
            launch_ntfy.notify_all()


def _kill(procs: list[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def test_custom_manager_life_cycle(tmp_path: Path) -> None:
    m = RecordingManager(2)
    pids = addprocs(m, tag="x", dir=None)
    try:
        assert pids == sorted(pids) and len(pids) == 2
        assert m.params["tag"] == "x" and m.params["topology"] == "all_to_all"
        assert [remotecall_fetch(myid, p) for p in pids] == pids
        assert sorted(p for p, op in m.ops if op == "register") == pids
        # interrupt goes through manage(...,"interrupt"), whose default reaches the worker
        running = str(tmp_path / "running")
        fut = remotecall(h.touch_then, pids[0], running, h.sleep_then, 30)
        wait_until(lambda: os.path.exists(running), what="the call to start")
        interrupt(pids[0])
        with pytest.raises(Exception, match="InterruptException"):
            fut.fetch(timeout=10)
        assert (pids[0], "interrupt") in m.ops
        rmprocs(pids, waitfor=10)
        assert all(p not in workers() for p in pids)
        wait_until(
            lambda: all((p, "finalize") in m.ops for p in pids),
            timeout=5,
            interval=0.05,
            what="the manager to finalize the workers",
        )
        for p in pids:
            assert (p, "deregister") in m.ops and (p, "finalize") in m.ops
        assert all(not is_alive(proc.pid) for proc in m.procs)
    finally:
        end_workers(pids)
        _kill(m.procs)


def test_manager_giving_host_and_port() -> None:
    m = HostPortManager()
    pids = addprocs(m)
    try:
        assert remotecall_fetch(myid, pids[0]) == pids[0]
    finally:
        end_workers(pids)
        _kill(m.procs)


def test_unknown_keyword_for_a_manager() -> None:
    with pytest.raises(TypeError, match="nope"):
        addprocs(RecordingManager(1), nope=1)


def test_a_failing_launch_is_raised() -> None:
    class Broken(ClusterManager):
        def launch(self, params: dict[str, Any], launched: list[WorkerConfig], ntfy: Any) -> None:
            raise OSError("no such cluster")

    with pytest.raises(OSError, match="no such cluster"):
        addprocs(Broken())


class StrayItemManager(RecordingManager):
    """Launches one real worker, then appends something that is not a WorkerConfig."""

    def launch(
        self, params: dict[str, Any], launched: list[Any], launch_ntfy: threading.Condition
    ) -> None:
        super().launch(params, launched, launch_ntfy)
        with launch_ntfy:
            launched.append({"host": "127.0.0.1", "port": 1})
            launch_ntfy.notify_all()


def test_a_launch_that_appends_something_else_than_a_worker_config_fails_clearly() -> None:
    """It returned [] without an error (the setup thread died of an AttributeError, printed as
    an unhandled thread exception): now addprocs raises a TypeError naming what came, and the
    worker launched beside it is removed, its process ended."""
    m = StrayItemManager(1)
    before = workers()
    try:
        with pytest.raises(TypeError, match=r"must append WorkerConfig objects .* not dict"):
            addprocs(m)
        assert workers() == before
        wait_until(
            lambda: all(not is_alive(p.pid) for p in m.procs), timeout=10, what="the worker to end"
        )
    finally:
        _kill(m.procs)


@pytest.mark.parametrize("flag", ["lazy", "enable_threaded_blas"])
def test_flags_of_addprocs_must_be_bools(flag: str) -> None:
    m = RecordingManager(1)
    with pytest.raises(TypeError, match=rf"{flag} must be True or False, not str \('no'\)"):
        addprocs(m, **{flag: "no"})
    assert not m.procs  # refused before anything was launched


def test_a_worker_address_nobody_listens_on_is_named_in_the_error() -> None:
    import socket

    with socket.socket() as s:  # a port the OS gave, closed again: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class NobodyThere(ClusterManager):
        def launch(self, params: dict[str, Any], launched: list[WorkerConfig], ntfy: Any) -> None:
            with ntfy:
                launched.append(WorkerConfig(host="127.0.0.1", port=port))
                ntfy.notify_all()

    before = workers()
    with pytest.raises(
        ConnectionRefusedError, match=rf"worker \d+: cannot connect to 127\.0\.0\.1:{port}: "
    ):
        addprocs(NobodyThere())
    assert workers() == before


CUSTOM_WORKER = """
import socket, sys, threading
from pydistributed import init_worker, process_messages
init_worker(sys.stdin.readline().strip())
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
process_messages(conn.makefile("rb"), conn.makefile("wb"), incoming=True)
threading.Event().wait()
"""


class CustomTransportManager(ClusterManager):
    """A transport of its own: connect() returns plain file objects (init_worker and
    process_messages on the worker side)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def launch(
        self, params: dict[str, Any], launched: list[WorkerConfig], launch_ntfy: threading.Condition
    ) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-c", CUSTOM_WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cluster_cookie() + "\n")
        proc.stdin.close()
        port = int(proc.stdout.readline())
        cfg = WorkerConfig(process=proc, userdata={"port": port})
        with launch_ntfy:
            launched.append(cfg)
            launch_ntfy.notify_all()

    def connect(self, pid: int, config: WorkerConfig) -> tuple[Any, Any]:
        import socket

        s = socket.create_connection(("127.0.0.1", config.userdata["port"]), timeout=10)
        s.settimeout(None)
        streams = s.makefile("rb"), s.makefile("wb")
        s.close()  # the socket closes when both streams are closed
        return streams


def test_custom_transport_with_init_worker_and_process_messages() -> None:
    m = CustomTransportManager()
    pids = addprocs(m, topology="master_worker")
    try:
        (w,) = pids
        assert remotecall_fetch(myid, w) == w
        assert remotecall_fetch(h.add, w, 2, 3) == 5
        big = bytes(range(256)) * 8192  # 2 MB: out-of-band frames over plain streams
        assert remotecall_fetch(h.identity, w, big) == big
        assert remotecall(h.add, w, 1, 1).fetch(timeout=10) == 2
    finally:
        end_workers(pids)
        _kill(m.procs)


class TupleParamsManager(RecordingManager):
    """Lists its keywords in a tuple, as Julia's managers may list them in any collection."""

    extra_params = ("tag", "niceness")  # type: ignore[assignment]


def test_extra_params_may_be_any_iterable_of_names() -> None:
    assert TupleParamsManager.extra_params == frozenset({"tag", "niceness"})
    m = TupleParamsManager(1)
    pids = addprocs(m, niceness=3)
    try:
        assert len(pids) == 1 and m.params["niceness"] == 3
        assert remotecall_fetch(myid, pids[0]) == pids[0]
    finally:
        end_workers(pids)
        _kill(m.procs)
    m = TupleParamsManager(1)
    m.extra_params = ["tag"]  # type: ignore[misc]  # an instance's own, converted when used
    with pytest.raises(TypeError, match="unexpected keyword argument 'niceness'"):
        addprocs(m, niceness=3)
    assert m.procs == []  # refused before anything was started


@pytest.mark.parametrize(
    ("names", "says"),
    [
        ("niceness", r"not one str \('niceness'\): write \('niceness',\)"),
        (5, r"not int \(5\)"),
        (("a", 1), r"1 \(int\) is not a str"),
    ],
)
def test_extra_params_that_are_not_names_are_refused_naming_them(names: Any, says: str) -> None:
    with pytest.raises(
        TypeError, match=r"^Bad\.extra_params must be an iterable of keyword names \(str\)"
    ):

        class Bad(RecordingManager):
            extra_params = names

    with pytest.raises(TypeError, match=says):

        class Bad(RecordingManager):  # type: ignore[no-redef]
            extra_params = names
