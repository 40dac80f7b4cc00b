"""Bad input: each gets a clear error, and the cluster keeps working."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import textwrap
import threading
import time

import pytest

from pydistributed import (
    RemoteException,
    addprocs,
    cluster_cookie,
    codec,
    handshake,
    myid,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    transport,
)
from pydistributed.errors import AuthenticationError, ProtocolError
from pydistributed.messages import Identify
from tests.conftest import end_workers, is_alive, wait_until, worker_table
from tests.integration import _helpers as h


def _address(pid: int) -> tuple[str, int]:
    info = worker_table()[pid]
    assert info.host and info.port
    return info.host, info.port


def _raw_connect(pid: int) -> socket.socket:
    s = socket.create_connection(_address(pid), timeout=10)
    return s


def _connection_closed(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        while True:
            if not s.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_random_bytes_are_refused(two_workers: list[int]) -> None:
    w = two_workers[0]
    s = _raw_connect(w)
    s.sendall(os.urandom(256))
    assert _connection_closed(s)
    s.close()
    assert remotecall_fetch(myid, w) == w


def test_wrong_cookie_is_refused(two_workers: list[int]) -> None:
    w = two_workers[0]
    s = _raw_connect(w)
    f = s.makefile("rb")
    with pytest.raises(AuthenticationError):
        handshake.client_handshake(lambda n: f.read(n), s.sendall, "not-the-cluster-cookie")
    s.close()
    # a client that answers the server's challenge with a made-up proof is told no
    s = _raw_connect(w)
    f = s.makefile("rb")
    s.sendall(handshake.MAGIC + b"c" * 32)
    assert f.read(8) == handshake.MAGIC
    f.read(32)  # the server's challenge (and nothing computed from the cookie)
    s.sendall(b"\x00" * 32 + b"\x00\x02{}")
    assert f.read(4) == b"DENY"
    s.close()
    assert remotecall_fetch(myid, w) == w


def test_silent_client_does_not_block_the_worker(two_workers: list[int]) -> None:
    w = two_workers[0]
    s = _raw_connect(w)  # connects and says nothing
    assert remotecall_fetch(myid, w) == w
    s2 = _raw_connect(w)
    s2.sendall(handshake.MAGIC[:3])  # half a greeting
    assert remotecall_fetch(myid, w) == w
    s.close()
    s2.close()


def test_oversized_message_is_refused(add_workers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # the guard is read when a connection opens: set it for the master and the worker
    monkeypatch.setenv("PYDIST_MAX_MESSAGE_BYTES", "100000")
    (w,) = add_workers(1)
    s = _raw_connect(w)
    f = s.makefile("rb")
    handshake.client_handshake(lambda n: f.read(n), s.sendall, cluster_cookie())
    frames, _ = codec.encode(Identify(77), w)
    transport.SocketWriter(s).write_frames(frames)
    # a frame that claims a terabyte: refused from its length, nothing allocated
    s.sendall(struct.pack("!I", 2) + struct.pack("!QQ", 25, 1 << 40))
    assert _connection_closed(s)
    s.close()
    rss_kb = remotecall_fetch(_rss_kb, w)
    assert rss_kb < 500_000
    assert remotecall_fetch(myid, w) == w
    # the same guard on the sending side: a clear error, nothing sent, connection fine
    with pytest.raises(ProtocolError, match="size guard"):
        remotecall_fetch(lambda ws: [len(x) for x in ws], w, [b"x" * 60_000, b"y" * 60_000])


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


_CALL_FORMS = {
    "remotecall": remotecall,
    "remotecall_fetch": remotecall_fetch,
    "remotecall_wait": remotecall_wait,
    "remote_do": remote_do,
}


@pytest.mark.parametrize("form", sorted(_CALL_FORMS))
def test_unpicklable_argument_fails_at_the_call_site(two_workers: list[int], form: str) -> None:
    w = two_workers[0]
    fn = _CALL_FORMS[form]
    with pytest.raises(pickle.PicklingError) as info:
        fn(h.identity, w, threading.Lock())
    text = str(info.value)
    assert "could not be pickled (serialized)" in text
    assert "lock" in text
    assert remotecall_fetch(h.add, w, 1, 2) == 3


@pytest.mark.parametrize("form", sorted(_CALL_FORMS))
def test_an_argument_whose_reduce_raises_any_error_is_unpicklable(
    two_workers: list[int], form: str
) -> None:
    # random.SystemRandom's __reduce__ raises NotImplementedError (not TypeError): found by the
    # port of Julia's issue #16451 test (a RandomDevice captured by @distributed)
    import random

    w = two_workers[0]
    fn = _CALL_FORMS[form]
    rng = random.SystemRandom()
    for args in ((h.identity, w, rng), (lambda: rng.random(), w)):
        with pytest.raises(pickle.PicklingError) as info:
            fn(*args)
        text = str(info.value)  # "... could not be" / "..., which cannot be pickled ..."
        assert "be pickled (serialized)" in text
        assert "SystemRandom" in text and "NotImplementedError" in text
    assert remotecall_fetch(h.add, w, 1, 2) == 3


def test_unpicklable_return_value(two_workers: list[int]) -> None:
    w = two_workers[0]
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(threading.Lock, w)
    assert "lock" in str(info.value) and "could not be pickled" in str(info.value)
    fut = remotecall(h.Unpicklable, w)
    with pytest.raises(RemoteException, match="Unpicklable"):
        fut.fetch(timeout=10)
    assert remotecall_fetch(h.add, w, 1, 2) == 3


def test_argument_the_worker_cannot_unpickle(two_workers: list[int]) -> None:
    w = two_workers[0]

    class LocalOnly:
        pass

    LocalOnly.__module__ = "module_that_does_not_exist"
    LocalOnly.__qualname__ = "LocalOnly"
    with pytest.raises(RemoteException, match="module_that_does_not_exist"):
        remotecall_fetch(h.identity, w, _ByReference())
    assert remotecall_fetch(h.add, w, 1, 2) == 3


class _ByReference:
    """Pickles as a reference to a module only this test pretends to have."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_import_missing, ())


def _import_missing() -> None:
    import importlib

    importlib.import_module("module_that_does_not_exist")


def test_exception_class_only_on_the_worker(add_workers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mod = tmp_path / "onlyworker_mod.py"
    mod.write_text(
        textwrap.dedent(
            """
            class WorkerOnlyError(Exception):
                pass

            def boom():
                raise WorkerOnlyError("only the worker knows this class")
            """
        )
    )
    (w,) = add_workers(1, env={"PYTHONPATH": str(tmp_path)})
    with pytest.raises(ImportError):
        __import__("onlyworker_mod")
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_call_boom, w)
    err = info.value
    assert err.captured.type_name == "onlyworker_mod.WorkerOnlyError"
    assert type(err.captured.exc).__name__ == "WorkerOnlyError"
    assert "only the worker knows this class" in str(err)
    assert "boom" in err.captured.traceback_text


def _call_boom() -> None:
    import onlyworker_mod  # type: ignore[import-not-found]

    onlyworker_mod.boom()


def test_worker_that_never_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "2")
    code = "import sys, time; print('stuck before the banner', file=sys.stderr); time.sleep(60)"
    before = set(worker_table())
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        addprocs(1, exeflags=["-c", code])
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert "PYDIST_WORKER_TIMEOUT" in text and "stuck before the banner" in text
    ospid = int(text.split("os pid ")[1].split(")")[0])
    wait_until(
        lambda: not is_alive(ospid), timeout=5, interval=0.05, what="the stuck worker to exit"
    )
    assert set(worker_table()) == before


def test_worker_that_dies_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import sys; print('no luck', file=sys.stderr); sys.exit(3)"
    with pytest.raises(RuntimeError) as info:
        addprocs(1, exeflags=["-c", code])
    assert "code 3" in str(info.value) and "no luck" in str(info.value)


def test_bad_exename_fails_cleanly() -> None:
    with pytest.raises(OSError):
        addprocs(1, exename="/nonexistent/python")


def test_failed_addprocs_leaves_no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(worker_table())
    with pytest.raises(RuntimeError):
        addprocs(2, exeflags=["-c", "raise SystemExit(1)"])
    assert set(worker_table()) == before
    pids = addprocs(1)
    try:
        assert remotecall_fetch(myid, pids[0]) == pids[0]
    finally:
        end_workers(pids)
