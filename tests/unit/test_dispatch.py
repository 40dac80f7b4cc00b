"""Incoming messages (``dispatch.Dispatcher``) over a real connection, with real parts.

The dispatching side is "worker 2": a ``Registry``, a ``RefStore``, an ``Executor`` and a
``Dispatcher`` behind one end of a ``socket.socketpair()``. The other end is "the master",
process 1: a ``Peer`` whose reader collects the ``Result`` messages that come back
(:class:`Answers`). Messages travel as bytes, so everything is pickled and unpickled.
"""

from __future__ import annotations

import logging
import operator
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pydistributed import codec, scope, sockets
from pydistributed.dispatch import LATER, Dispatcher, is_internal
from pydistributed.errors import CapturedException, RemoteException
from pydistributed.execution import Executor
from pydistributed.ids import RRID
from pydistributed.messages import (
    Call,
    CallFetch,
    CallWait,
    Identify,
    Message,
    PeerUpdate,
    Ping,
    Pong,
    RefCount,
    RemoteDo,
    Result,
)
from pydistributed.peer import Peer, ResponseSlot
from pydistributed.refstore import Failure, FutureSlot, RefStore
from pydistributed.registry import Registry

WAIT = 10.0
ME = 2  # the dispatching process
CALLER = 1  # the process at the other end


class Answers:
    """The caller's side: every ``Result`` that arrives, by response id."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: dict[int, Result] = {}
        self.pongs: list[int] = []

    def on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Pong):
            self.pongs.append(msg.nonce)
        if isinstance(msg, Result):
            with self._cond:
                self._results[msg.response_id] = msg
                self._cond.notify_all()

    def take(self, rid: int, timeout: float = WAIT) -> Result:
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._results, timeout):
                raise AssertionError(f"no answer to request {rid} within {timeout} s")
            return self._results.pop(rid)

    def take_all(self) -> dict[int, Result]:
        with self._cond:
            got, self._results = self._results, {}
            return got


def _ignore(*args: Any) -> None:
    pass


class Link:
    """Both ends of the connection. Also the owner bound to the executor's threads (see
    ``scope``), so a function run there can find the executor it runs on."""

    def __init__(self) -> None:
        a, b = socket.socketpair()
        self.registry = Registry(ME, "worker")
        self.refs = RefStore()
        self.executor = Executor(use_main_thread=False, owner=self)
        self.dispatcher = Dispatcher(self.registry, self.refs, self.executor)
        # the dispatching side's connection to CALLER, and CALLER's to the dispatching side
        self.server = Peer(*sockets.socket_streams(a), pid=CALLER, sock=a, owner=self)
        self.client = Peer(*sockets.socket_streams(b), pid=ME, sock=b)
        self.answers = Answers()
        self.rid = 1000
        self.server.start(self.dispatcher.on_message, self.dispatcher.on_decode_error, _ignore)
        self.client.start(self.answers.on_message, _ignore, _ignore)

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def fetch(self, f: Any, *args: Any, **kwargs: Any) -> Result:
        """Send ``CallFetch(f, args)`` and wait for its ``Result``."""
        rid = self.next_rid()
        self.client.send(CallFetch(rid, f, args, kwargs))
        return self.answers.take(rid)

    def barrier(self) -> None:
        """Return once every message sent before has been handled by the reader: it handles
        messages in order, and this one's answer comes only after it handled this one."""
        assert self.fetch(operator.add, 0, 0) == Result(self.rid, True, 0)

    def close(self) -> None:
        for peer in (self.client, self.server):
            peer.close("test over")
            assert peer.thread is not None
            peer.thread.join(WAIT)
            assert not peer.thread.is_alive()


@pytest.fixture
def link() -> Iterator[Link]:
    lk = Link()
    yield lk
    lk.close()


def wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


# -- functions the "worker" runs (importable: they travel by reference) ------------------


def fail(x: Any = None) -> Any:
    raise ZeroDivisionError(f"failed on {x!r}")


def _owner_in_call() -> bool:
    """Whether the running call counts as interruptible on the executor of its thread."""
    return bool(scope.owner().executor.in_call())


def internal_owner_in_call() -> bool:
    return _owner_in_call()


internal_owner_in_call._pydist_internal = True  # type: ignore[attr-defined]


def user_owner_in_call() -> bool:
    return _owner_in_call()


def _refuse_to_load() -> Any:
    raise RuntimeError("not loadable here")


class Unloadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, ())


_RAN_ON: list[str] = []


def _op_now(x: int) -> Any:
    _RAN_ON.append("now:" + threading.current_thread().name)
    if x < 0:
        raise ValueError("now refuses")
    return LATER if x == 0 else ("now", x)


def at_once_op(x: int) -> Any:
    _RAN_ON.append("full:" + threading.current_thread().name)
    if x < 0:
        raise ValueError(f"full refuses {x}")
    return ("full", x)


at_once_op._pydist_internal = True  # type: ignore[attr-defined]
at_once_op._pydist_now = _op_now  # type: ignore[attr-defined]


# -- CallFetch -----------------------------------------------------------------------------


def test_call_fetch_is_run_and_answered(link: Link) -> None:
    rid = link.next_rid()
    link.client.send(CallFetch(rid, operator.add, (1, 2), {}))
    assert link.answers.take(rid) == Result(rid, True, 3)
    got = link.fetch(lambda a, *, b: {"sum": a + b}, 40, b=2)  # by value, with a keyword
    assert got.ok and got.value == {"sum": 42}


def test_a_failing_call_fetch_is_answered_with_the_captured_error(link: Link) -> None:
    got = link.fetch(fail, "x")
    assert got.ok is False
    captured = got.value
    assert isinstance(captured, CapturedException)
    assert isinstance(captured.exc, ZeroDivisionError)
    assert str(captured.exc) == "failed on 'x'"
    assert "Traceback" in captured.traceback_text and "in fail" in captured.traceback_text
    link.barrier()  # the connection is fine


def test_a_return_value_that_cannot_be_pickled_is_answered_with_why(link: Link) -> None:
    got = link.fetch(threading.Lock)
    assert got.ok is False
    assert isinstance(got.value, CapturedException)
    assert got.value.type_name.endswith("PicklingError")
    assert "the return value" in str(got.value.exc)
    link.barrier()


def test_an_undecodable_call_fetch_is_answered_with_the_decode_error(link: Link) -> None:
    rid = link.next_rid()
    link.client.send(CallFetch(rid, operator.add, (Unloadable(), 1), {}))
    got = link.answers.take(rid)
    assert got.ok is False and isinstance(got.value, CapturedException)
    assert got.value.type_name.endswith("DecodeError")
    assert "cannot decode a CallFetch message" in str(got.value)
    assert "not loadable here" in str(got.value)
    link.barrier()


# -- Call and CallWait ---------------------------------------------------------------------


def test_call_stores_the_result_under_the_rrid(link: Link) -> None:
    link.client.send(Call(CALLER, 5, operator.mul, (6, 7), {}))
    link.barrier()  # the Call was handled: its storage exists (the run may still be going)
    slot = link.refs.lookup(RRID(CALLER, 5))
    assert isinstance(slot, FutureSlot)
    assert slot.fetch(WAIT) == 42
    assert link.refs.clients(RRID(CALLER, 5)) == {CALLER: 1}  # counted for the caller


def test_a_failing_call_stores_a_failure(link: Link) -> None:
    link.client.send(Call(CALLER, 6, fail, (3,), {}))
    link.barrier()
    slot = link.refs.lookup(RRID(CALLER, 6))
    assert isinstance(slot, FutureSlot)
    value = slot.fetch(WAIT)
    assert isinstance(value, Failure)
    assert value.pid == ME
    assert isinstance(value.captured.exc, ZeroDivisionError)
    err = value.error()
    assert isinstance(err, RemoteException) and err.pid == ME and value.error() is err


def test_an_undecodable_call_stores_the_decode_error(link: Link) -> None:
    link.client.send(Call(CALLER, 8, operator.add, (Unloadable(), 1), {}))
    link.barrier()
    slot = link.refs.lookup(RRID(CALLER, 8))
    assert isinstance(slot, FutureSlot) and slot.isready()
    value = slot.fetch(0)
    assert isinstance(value, Failure) and value.pid == ME
    assert value.captured.type_name.endswith("DecodeError")


def test_call_wait_stores_then_answers(link: Link) -> None:
    rid = link.next_rid()
    link.client.send(CallWait(rid, CALLER, 7, operator.mul, (6, 7), {}))
    assert link.answers.take(rid) == Result(rid, True, None)
    slot = link.refs.lookup(RRID(CALLER, 7))
    assert isinstance(slot, FutureSlot)
    assert slot.isready()  # stored before the answer went out
    assert slot.fetch(0) == 42


def test_a_failing_call_wait_stores_the_failure_and_still_answers(link: Link) -> None:
    rid = link.next_rid()
    link.client.send(CallWait(rid, CALLER, 9, fail, (), {}))
    answer = link.answers.take(rid)  # stored, and the caller told of the failure
    assert answer.response_id == rid and not answer.ok
    assert "ZeroDivisionError" in str(answer.value)
    value = link.refs.lookup(RRID(CALLER, 9)).fetch(0)
    assert isinstance(value, Failure) and isinstance(value.captured.exc, ZeroDivisionError)


# -- execute and internal functions --------------------------------------------------------


def test_execute_counts_only_user_functions_as_interruptible(link: Link) -> None:
    ex = link.executor
    seen: dict[str, bool] = {}

    def user() -> int:
        seen["user"] = ex.in_call()
        return 1

    def internal() -> int:
        seen["internal"] = ex.in_call()
        return 2

    internal._pydist_internal = True  # type: ignore[attr-defined]
    assert is_internal(internal) and not is_internal(user)
    assert link.dispatcher.execute(user, (), {}) == (True, 1)
    assert link.dispatcher.execute(internal, (), {}) == (True, 2)
    assert seen == {"user": True, "internal": False}
    assert not ex.in_call()  # nothing left marked


def test_execute_captures_errors_of_both_kinds(link: Link) -> None:
    def internal_fail() -> None:
        raise KeyError("k")

    internal_fail._pydist_internal = True  # type: ignore[attr-defined]
    for f in (fail, internal_fail):
        ok, value = link.dispatcher.execute(f, (), {})
        assert ok is False and isinstance(value, CapturedException)
    assert not link.executor.in_call()


def test_execute_captures_system_exit_on_the_master() -> None:
    # on a master SystemExit is an error like any other (on a worker it ends the process,
    # which is why it is not tried here)
    executor = Executor(use_main_thread=False)
    d = Dispatcher(Registry(1, "master"), RefStore(), executor)
    ok, value = d.execute(exit, (3,), {})
    assert ok is False and isinstance(value, CapturedException)
    assert isinstance(value.exc, SystemExit) and value.exc.code == 3
    assert not executor.in_call()


def test_an_internal_call_from_the_wire_is_not_interruptible(link: Link) -> None:
    assert link.fetch(user_owner_in_call) == Result(link.rid, True, True)
    assert link.fetch(internal_owner_in_call) == Result(link.rid, True, False)


# -- the handler table ---------------------------------------------------------------------


def test_register_adds_a_handler(link: Link) -> None:
    got: list[tuple[Peer, Message, threading.Thread]] = []

    def on_identify(peer: Peer, msg: Identify) -> None:
        got.append((peer, msg, threading.current_thread()))

    link.dispatcher.register(Identify, on_identify)
    link.client.send(Identify(9))
    link.barrier()
    assert len(got) == 1
    peer, msg, thread = got[0]
    assert peer is link.server and msg == Identify(9)
    assert thread is link.server.thread  # on the reading thread


def test_an_unknown_message_type_is_ignored_with_a_warning(
    link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pydistributed")
    link.client.send(PeerUpdate(added=((3, "localhost", 9003),)))
    link.barrier()  # the connection is still up, and the reader still serves
    warnings = [
        r for r in caplog.records if r.name == "pydistributed" and r.levelno == logging.WARNING
    ]
    assert [r.getMessage() for r in warnings] == [
        f"unexpected PeerUpdate from process {CALLER}; ignored"
    ]
    assert not link.server.closed
    assert link.registry.worker_ids() == [1]  # and nothing was learnt from it


def test_refcount_adjusts_the_counts(link: Link) -> None:
    rrid = RRID(CALLER, 10)
    link.client.send(RefCount(adds=((CALLER, 10, CALLER), (CALLER, 10, 3))))
    link.barrier()
    slot = link.refs.lookup(rrid)
    assert isinstance(slot, FutureSlot)  # an add for a new reference makes its storage
    assert link.refs.clients(rrid) == {CALLER: 1, 3: 1}
    link.client.send(RefCount(adds=((CALLER, 10, 3),), dels=((CALLER, 10, CALLER),)))
    link.barrier()
    assert link.refs.clients(rrid) == {CALLER: 0, 3: 2}
    link.client.send(RefCount(dels=((CALLER, 10, 3), (CALLER, 10, 3))))
    link.barrier()
    assert link.refs.lookup(rrid) is None and rrid not in link.refs  # freed


def test_a_result_fills_the_callers_slot(link: Link) -> None:
    # the dispatching side as a caller: its request's answer arrives as a Result
    ok_slot, err_slot, late = ResponseSlot(), ResponseSlot(), 99
    link.server.pending[1] = ok_slot
    link.server.pending[2] = err_slot
    link.client.send(Result(1, True, "value"))
    link.client.send(Result(2, False, CapturedException(ValueError("bad"), "tb")))
    link.client.send(Result(late, True, "nobody waits"))  # its caller gave up: dropped
    assert ok_slot.wait(WAIT) and ok_slot.ok and ok_slot.value == "value"
    assert err_slot.wait(WAIT) and not err_slot.ok
    err = err_slot.value
    assert isinstance(err, RemoteException) and err.pid == CALLER
    assert isinstance(err.captured.exc, ValueError)
    link.barrier()
    assert link.server.pending == {}


# -- remote_do -----------------------------------------------------------------------------


def _logged_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pydistributed"
        and r.levelno == logging.ERROR
        and "remote_do from process" in r.getMessage()
    ]


def test_start_remote_do_logs_a_failure(
    link: Link, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.ERROR, logger="pydistributed")
    link.dispatcher.start_remote_do(fail, ("quietly",), {}, CALLER, main_ok=False)
    wait_for(lambda: bool(_logged_failures(caplog)))
    (record,) = _logged_failures(caplog)
    text = record.getMessage()
    assert text.startswith(f"remote_do from process {CALLER} failed:")
    assert "ZeroDivisionError" in text and "failed on 'quietly'" in text
    out, err = capsys.readouterr()
    assert "ZeroDivisionError" not in out + err  # logged, not printed


_REMOTE_DO_RAN = threading.Event()


def mark_ran() -> None:
    _REMOTE_DO_RAN.set()


def test_a_remote_do_message_runs_and_answers_nobody(
    link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pydistributed")
    _REMOTE_DO_RAN.clear()
    link.client.send(RemoteDo(mark_ran, (), {}))
    assert _REMOTE_DO_RAN.wait(WAIT)
    link.client.send(RemoteDo(fail, ("by message",), {}))
    wait_for(lambda: bool(_logged_failures(caplog)))
    assert "failed on 'by message'" in _logged_failures(caplog)[0].getMessage()
    link.barrier()
    assert link.answers.take_all() == {}  # nobody was answered but the barrier


def test_an_operation_that_can_finish_at_once_is_answered_by_the_reader(link: Link) -> None:
    _RAN_ON.clear()
    assert link.fetch(at_once_op, 5) == Result(link.rid, True, ("now", 5))
    assert _RAN_ON == [f"now:pydist-reader-{CALLER}"]  # the reading thread, no hand-off


def test_an_operation_that_cannot_finish_at_once_runs_the_usual_way(link: Link) -> None:
    _RAN_ON.clear()
    assert link.fetch(at_once_op, 0) == Result(link.rid, True, ("full", 0))  # LATER
    got = link.fetch(at_once_op, -1)  # the at-once form raised: the usual way reports
    assert not got.ok and "full refuses -1" in str(got.value)
    assert [r.split(":")[0] for r in _RAN_ON] == ["now", "full", "now", "full"]
    assert all(r == f"now:pydist-reader-{CALLER}" for r in _RAN_ON[::2])
    assert all(r == "full:pydist-call" for r in _RAN_ON[1::2])  # a pool thread


def test_the_reading_thread_never_waits_for_a_writer(link: Link) -> None:
    """An answer the reading thread would send itself (a Pong here) goes from a pool thread
    when another thread is writing to that peer: the reader goes on reading (a reader that
    waited for a writer that waits for the other side to read could wait for ever)."""
    rrid = RRID(CALLER, 11)
    with link.server._send_lock:  # another thread of the server is writing now
        link.client.send(Ping(7))
        link.client.send(RefCount(adds=((CALLER, 11, CALLER),)))
        wait_for(lambda: link.refs.lookup(rrid) is not None)  # read past the Ping
        time.sleep(0.05)
        assert link.answers.pongs == []  # nothing written while the lock is held
    wait_for(lambda: link.answers.pongs == [7])  # then the pool thread's Pong went out
    assert link.server.send_frames(codec.encode(Pong(8))[0], wait=False) is True
    wait_for(lambda: link.answers.pongs == [7, 8])
    with link.server._send_lock:
        assert link.server.send_frames(codec.encode(Pong(9))[0], wait=False) is False
