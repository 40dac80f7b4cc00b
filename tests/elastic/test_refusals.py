"""What is refused, and how: a wrong cookie, other versions, garbage on the port, a cookie on
the command line, an unreachable or vanished master. The master goes on serving after each."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from pydistributed import addprocs, cluster_cookie, rmprocs, wait_for_workers, workers
from pydistributed.handshake import MAGIC
from pydistributed.managers import ElasticManager
from tests.conftest import readline, wait_until
from tests.elastic.conftest import Joiner, address, stderr_of, worker_env

pytestmark = pytest.mark.timeout(120)


def _good_worker_joins(em: ElasticManager, joiner: Joiner) -> None:
    joiner.start(address(em))
    assert len(wait_for_workers(1, 60)) == 1


def test_wrong_cookie(
    elastic: ElasticManager, joiner: Joiner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pydistributed")
    bad = joiner.start(address(elastic), cookie="not-the-cluster-cookie")
    assert bad.wait(timeout=30) == 1
    err = stderr_of(bad)
    assert "refused this worker" in err and "authentication failed" in err, err
    assert workers() == [1] and elastic.refused == 1
    assert any("failed authentication" in r.getMessage() for r in caplog.records)
    _good_worker_joins(elastic, joiner)  # the listener goes on


def test_other_versions_are_refused(elastic: ElasticManager, joiner: Joiner) -> None:
    # a fault injected: this worker claims another pydistributed version
    code = (
        "import sys, pydistributed; pydistributed.__version__ = '0.0.0+other'; "
        "from pydistributed.worker import main; main(sys.argv[1:])"
    )
    argv = [sys.executable, "-c", code, "--join", address(elastic)]
    bad = joiner.start(address(elastic), argv=argv)
    assert bad.wait(timeout=30) == 1
    err = stderr_of(bad)
    assert "version mismatch" in err and "0.0.0+other" in err, err
    assert workers() == [1]
    _good_worker_joins(elastic, joiner)


def test_garbage_on_the_port(elastic: ElasticManager, joiner: Joiner) -> None:
    target = (elastic.host, elastic.port)
    idle = socket.create_connection(target, timeout=10)  # says nothing: held open
    try:
        payloads = [
            os.urandom(4096),
            MAGIC + os.urandom(32) + os.urandom(32) + b"\x00\x10" + b"{" * 16,
            b"\x16\x03\x01" + os.urandom(200),  # looks like TLS, is not
            b"GET / HTTP/1.0\r\n\r\n",
            b"",
        ]
        for data in payloads:
            with socket.create_connection(target, timeout=10) as s:
                try:
                    s.sendall(data)
                    s.settimeout(10)
                    s.recv(4096)
                except OSError:
                    pass  # reset: fine
        _good_worker_joins(elastic, joiner)
        wait_until(lambda: elastic.refused >= len(payloads), 30, what="the refusals")
    finally:
        idle.close()


def test_cookie_on_the_command_line_is_refused(elastic: ElasticManager, joiner: Joiner) -> None:
    bad = joiner.start(address(elastic), how="none", args=("--cookie", cluster_cookie()))
    assert bad.wait(timeout=30) == 2
    assert "--cookie is refused with --join" in stderr_of(bad)
    assert workers() == [1] and elastic.refused == 0  # it did not even dial


@pytest.mark.parametrize(
    "target, cookie, message",
    [
        ("nonsense", None, "--join takes HOST:PORT"),
        ("127.0.0.1:0", None, "--join takes HOST:PORT"),
        ("127.0.0.1:1", "short", "at least 12 characters"),
    ],
)
def test_bad_input(joiner: Joiner, target: str, cookie: str | None, message: str) -> None:
    bad = joiner.start(target, cookie=cookie)
    assert bad.wait(timeout=30) == 2
    assert message in stderr_of(bad)


def test_no_cookie(joiner: Joiner, tmp_path: object) -> None:
    bad = joiner.start("127.0.0.1:1", how="none")  # no PYDIST_COOKIE, stdin empty
    assert bad.wait(timeout=30) == 2
    assert "no cookie" in stderr_of(bad) and "standard input is empty" in stderr_of(bad)
    missing = joiner.start("127.0.0.1:1", how="none", args=("--cookie-file", "/nonexistent/c"))
    assert missing.wait(timeout=30) == 2
    assert "cannot read the cookie" in stderr_of(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_master(joiner: Joiner) -> None:
    port = _free_port()  # nobody listens there
    bad = joiner.start(f"127.0.0.1:{port}", env={"PYDIST_WORKER_TIMEOUT": "2"})
    assert bad.wait(timeout=30) == 1
    err = stderr_of(bad)
    assert f"could not reach the master at 127.0.0.1:{port} within 2 s" in err, err


def test_not_admitted_when_the_topology_differs(
    elastic: ElasticManager, joiner: Joiner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pydistributed")
    em = ElasticManager("127.0.0.1", 0, topology="all_to_all")
    local = addprocs(1, topology="master_worker")
    try:
        bad = joiner.start(address(em))
        assert bad.wait(timeout=30) == 1
        assert "did not admit this worker" in stderr_of(bad)
        assert workers() == local
        assert any("was not admitted" in r.getMessage() for r in caplog.records)
    finally:
        em.close()
        rmprocs(local, waitfor=20)
    # the default follows the workers there are
    follows = ElasticManager("127.0.0.1", 0)
    try:
        _good_worker_joins(follows, joiner)
    finally:
        follows.close()


_MASTER = """
import os, sys
from pydistributed import cluster_cookie, wait_for_workers
from pydistributed.managers import ElasticManager
cluster_cookie(os.environ.pop("TEST_COOKIE"))
em = ElasticManager("127.0.0.1", 0)
print(em.port, flush=True)
wait_for_workers(1, 60)
print("joined", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def master() -> object:
    cookie = "elastic-test-cookie-0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-c", _MASTER],
        env=worker_env(TEST_COOKIE=cookie),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, cookie
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def test_master_gone_after_joining(master: object, joiner: Joiner) -> None:
    proc, cookie = master  # type: ignore[misc]
    port = int(readline(proc.stdout, 60))
    worker = joiner.start(f"127.0.0.1:{port}", cookie=cookie)
    assert readline(proc.stdout, 60).strip() == "joined"
    os.kill(proc.pid, signal.SIGKILL)
    # its master connection closed: it exits (bounded), as every worker does when its master
    # ends: code 0 (the end of the cluster, not a failure of the worker)
    assert worker.wait(timeout=30) == 0


def test_master_that_does_not_answer(master: object, joiner: Joiner) -> None:
    proc, cookie = master  # type: ignore[misc]
    port = int(readline(proc.stdout, 60))
    os.kill(proc.pid, signal.SIGSTOP)  # the kernel still accepts; nobody answers
    worker = joiner.start(f"127.0.0.1:{port}", cookie=cookie, env={"PYDIST_WORKER_TIMEOUT": "3"})
    assert worker.wait(timeout=60) == 1
    err = stderr_of(worker)
    assert f"the master at 127.0.0.1:{port} did not answer the handshake within" in err, err
