"""``outputloss``'s guard of a worker's ``sys.stdout`` / ``sys.stderr``: ``GuardedStream`` (around a
stream of the program's own) as code that inspects a stream sees it; the interpreter's own
streams made again over a ``GuardedFileIO``, in a real process whose pipes have no reader (the
whole path, an ssh session that ends, runs against a real sshd in tests/ssh)."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pydistributed
from pydistributed.outputloss import GuardedStream, guard_streams, is_guarded, standard_stream

SRC = str(Path(pydistributed.__file__).resolve().parents[1])  # the tree under test


def test_a_guarded_stream_shows_and_copies_like_the_stream() -> None:
    inner = io.StringIO()
    g = GuardedStream(inner, 1)
    g.write("a")
    g.flush()
    assert inner.getvalue() == "a"
    assert "getvalue" in dir(g) and "write" in dir(g)  # the stream's attributes, and its own
    twin = copy.copy(g)  # (made without __init__: no endless __getattr__)
    twin.write("b")
    assert inner.getvalue() == "ab"


def test_a_stream_of_the_program_s_own_is_wrapped_once(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    guard_streams()
    assert isinstance(sys.stdout, GuardedStream) and sys.stdout._stream is out
    assert isinstance(sys.stderr, GuardedStream) and sys.stderr._stream is err
    guard_streams()
    assert sys.stdout._stream is out  # not wrapped twice
    assert is_guarded(sys.stdout) and not is_guarded(out)


def test_a_standard_stream_is_on_0_1_or_2() -> None:
    with pytest.raises(ValueError, match="on descriptor 0, 1 or 2, not 3"):
        standard_stream(3, "utf-8", "strict", True)


# A process whose descriptors 1 and 2 are pipes without a reader: everything it prints is
# dropped, through the text layer, its buffer, after a reconfigure, and at its exit's flush.
_BROKEN = r"""
import json, os, sys, traceback
result = {}
try:
    from pydistributed.outputloss import guard_streams
    for fd in (1, 2):
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        os.close(r)
    guard_streams()
    result["types"] = [type(sys.stdout).__name__, type(sys.stderr).__name__]
    result["same"] = sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__
    print("x" * 70000)
    sys.stdout.buffer.write(b"y" * 100)
    sys.stdout.reconfigure(encoding="latin-1", line_buffering=True)
    print("\xe9")
    print("to stderr", file=sys.stderr)
    sys.stdout.write("left for the exit's flush")
    result["fds"] = [os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)]
except BaseException:
    result["error"] = traceback.format_exc()
with open(sys.argv[1], "w") as f:
    json.dump(result, f)
"""


def _child_env(buffered: bool) -> dict[str, str]:
    """A child interpreter's environment: this tree on its path, buffered output or not."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.parametrize("buffered", [False, True])
def test_a_worker_s_stream_whose_pipe_has_no_reader_drops_its_output(
    tmp_path: Path, buffered: bool
) -> None:
    env = _child_env(buffered)
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN, str(result)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        timeout=60,
    )
    got = json.loads(result.read_text())
    assert "error" not in got, got["error"]
    assert proc.returncode == 0
    assert got["types"] == ["TextIOWrapper", "TextIOWrapper"] and got["same"]
    assert got["fds"] == ["/dev/null", "/dev/null"]


# The interpreter's streams before and after guard_streams: alike but for the raw file's class.
_ALIKE = r"""
import io, json, sys
from pydistributed.outputloss import guard_streams

def probe():
    result = {}
    for name in ("stdout", "stderr"):
        s = getattr(sys, name)
        buf = s.buffer
        raw = buf if isinstance(buf, io.RawIOBase) else buf.raw
        try:
            s.tell()
        except Exception as e:
            tell = f"{type(e).__module__}.{type(e).__name__}: {e}"
        result[name] = [
            type(s) is io.TextIOWrapper, repr(s), s.encoding, s.errors, s.line_buffering,
            s.write_through, s.seekable(), s.isatty(), tell, s is getattr(sys, f"__{name}__"),
            type(buf).__name__ if buf is not raw else "raw", isinstance(raw, io.FileIO),
            raw.closefd, raw.name, raw.mode,
        ]
    return result

before = probe()
guard_streams()
after = probe()
with open(sys.argv[1], "w") as f:
    json.dump([before, after, type(sys.stdout.buffer).__name__], f)
"""


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("stdout", ["pipe", "tty"])
def test_guarded_streams_are_the_interpreter_s_own_made_again(
    tmp_path: Path, buffered: bool, stdout: str
) -> None:
    env = _child_env(buffered)
    result = tmp_path / "result.json"
    ours, theirs = os.openpty() if stdout == "tty" else os.pipe()
    try:
        subprocess.run(
            [sys.executable, "-c", _ALIKE, str(result)],
            stdin=subprocess.DEVNULL,
            stdout=theirs,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            check=True,
        )
    finally:
        os.close(theirs)
        os.close(ours)
    before, after, raw = json.loads(result.read_text())
    assert before == after
    assert raw == ("GuardedFileIO" if not buffered else "BufferedWriter")
    assert before["stdout"][4] == (buffered and stdout == "tty")  # line_buffering
    assert before["stderr"][4] == buffered
