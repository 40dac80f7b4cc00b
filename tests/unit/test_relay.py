"""The output relay: lines of workers' pipes, and pipes whose numbers come back."""

from __future__ import annotations

import io
import os
import sys
import time

import pytest

from pydistributed import linestreams
from pydistributed.linestreams import LineStream
from pydistributed.relay import OutputRelay


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_pipe_closed_elsewhere_whose_number_comes_back_does_not_stop_the_relay() -> None:
    relay = OutputRelay()
    r1, w1 = os.pipe()
    first = relay.add(os.fdopen(r1, "rb", buffering=0), "stdout")
    os.write(w1, b"one\n")
    assert _wait_for(lambda: list(first.tail) == ["one"])
    first.file.close()  # closed elsewhere, before the relay read its end
    r2, w2 = os.pipe()  # the lowest free number: r1's again
    assert r2 == r1
    second = relay.add(os.fdopen(r2, "rb", buffering=0), "stdout")
    os.write(w2, b"two\n")
    assert _wait_for(lambda: list(second.tail) == ["two"])
    assert first.eof.is_set()
    r3, w3 = os.pipe()
    third = relay.add(os.fdopen(r3, "rb", buffering=0), "stdout")
    os.write(w3, b"three\n")
    assert _wait_for(lambda: list(third.tail) == ["three"])  # the relay still runs
    for fd in (w1, w2, w3):
        os.close(fd)
    assert _wait_for(lambda: second.eof.is_set() and third.eof.is_set())


# -- the master's streams: relayed text in whole lines, where the master's line has ended ----------


def _streams(shared: bool = False) -> tuple[LineStream, LineStream, io.StringIO, io.StringIO]:
    out_raw, err_raw = io.StringIO(), io.StringIO()
    group = linestreams._Group()
    out = LineStream(out_raw, group)
    err = LineStream(err_raw, group if shared else linestreams._Group())
    return out, err, out_raw, err_raw


def test_a_relayed_line_waits_for_the_end_of_the_master_s_line() -> None:
    out, _, raw, _ = _streams()
    print("master line", 1, file=out)
    out.write("part")
    assert out.put_relayed("From worker 2:\tw1\n") is True  # held: it starts a hold
    assert out.put_relayed("From worker 3:\tw2\n") is False  # held too, after it
    out.write("ial")
    assert raw.getvalue() == "master line 1\npartial"
    out.write(" 1\n")
    assert raw.getvalue() == "master line 1\npartial 1\nFrom worker 2:\tw1\nFrom worker 3:\tw2\n"
    assert out.put_relayed("From worker 2:\tw3\n") is False  # at a line start: at once
    assert raw.getvalue().endswith(
        "partial 1\nFrom worker 2:\tw1\nFrom worker 3:\tw2\nFrom worker 2:\tw3\n"
    )
    assert not linestreams._holding


def test_a_carriage_return_is_a_line_start() -> None:
    out, _, raw, _ = _streams()
    out.write("50%\r")
    assert out.put_relayed("From worker 2:\tw\n") is False
    assert raw.getvalue() == "50%\rFrom worker 2:\tw\n"


def test_a_held_line_waits_at_most_hold_seconds_then_the_master_s_line_is_ended() -> None:
    out, _, raw, _ = _streams()
    out.write("waiting for input: ")
    assert out.put_relayed("From worker 2:\tw\n")
    since = out.group.since
    assert linestreams.release_overdue(now=since) == linestreams.HOLD_SECONDS
    assert linestreams.release_overdue(now=since + linestreams.HOLD_SECONDS / 2) is not None
    assert raw.getvalue() == "waiting for input: "
    assert linestreams.release_overdue(now=since + linestreams.HOLD_SECONDS) is None
    assert raw.getvalue() == "waiting for input: \nFrom worker 2:\tw\n"
    out.write("yes\n")
    assert raw.getvalue() == "waiting for input: \nFrom worker 2:\tw\nyes\n"
    assert out.put_relayed("From worker 2:\tnext\n") is False


def test_stdout_and_stderr_on_one_file_are_one_group() -> None:
    out, err, _, err_raw = _streams(shared=True)
    out.write("on stdout, unfinished")
    assert err.put_relayed("From worker 2:\ton stderr\n")  # held: the line is unfinished
    assert err_raw.getvalue() == ""
    out.write("\n")
    assert err_raw.getvalue() == "From worker 2:\ton stderr\n"
    separate_out, separate_err, _, separate_err_raw = _streams(shared=False)
    separate_out.write("unfinished")
    assert separate_err.put_relayed("From worker 2:\tnot held\n") is False
    assert separate_err_raw.getvalue() == "From worker 2:\tnot held\n"


def test_the_streams_are_wrapped_once_and_unwrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    out_raw, err_raw = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out_raw)
    monkeypatch.setattr(sys, "stderr", err_raw)
    linestreams._install()
    out, err = sys.stdout, sys.stderr
    assert isinstance(out, LineStream) and out.raw is out_raw
    assert isinstance(err, LineStream) and err.raw is err_raw
    assert out.group is not err.group  # not one file
    linestreams._install()
    assert sys.stdout is out and sys.stderr is err
    assert out.getvalue() == ""  # anything else is the wrapped stream's
    linestreams.uninstall_if_idle(at_exit=True)
    assert sys.stdout is out_raw and sys.stderr is err_raw


def test_two_streams_on_one_pipe_are_one_file() -> None:
    r, w = os.pipe()
    w2 = os.dup(w)
    other_r, other_w = os.pipe()
    try:
        a, b, c = (open(fd, "w", closefd=False) for fd in (w, w2, other_w))
        assert linestreams._same_file(a, b)
        assert not linestreams._same_file(a, c)
        assert not linestreams._same_file(a, io.StringIO())
    finally:
        for fd in (r, w, w2, other_r, other_w):
            os.close(fd)


def test_while_a_bar_is_shown_relayed_lines_are_written_as_tqdm_write_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tqdm import tqdm

    out, err, _, raw = _streams()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    bar = tqdm(total=10, file=sys.stderr, desc="pmap", mininterval=0)
    try:
        bar.update(3)
        assert not err.at_line_start  # the bar's text
        assert linestreams.print_relayed("stderr", "From worker 2:\tw\n") is False
        text = raw.getvalue()
        before, _, after = text.partition("From worker 2:\tw\n")
        assert before.endswith("\r")  # the bar was cleared first
        assert "3/10" in after  # and drawn again below
    finally:
        bar.close()
    assert raw.getvalue().endswith("\n")
