"""A local worker's ``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` are what a fresh ``python``
whose descriptors 0-2 are pipes has (``TextIOWrapper`` streams: encoding, errors, buffering,
``tell()``, ``reconfigure()``), whether the worker was forked by the forkserver or started as a
new interpreter (``PYDIST_SPAWN=exec``); and what it prints after a ``reconfigure`` still
reaches the master, in the encoding it chose. The reference is a fresh ``python -c`` that the
worker itself starts with pipes and its own environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import addprocs, remotecall_fetch, rmprocs
from pydistributed.managers import local
from tests.conftest import end_workers, wait_until

# what a process's standard streams look like, run the same on a worker (exec) and in a fresh
# interpreter (python -c); a reconfigure of stdout and stderr is undone at the end
PROBE = r"""
import io, json, sys

def _error(call):
    try:
        call()
    except Exception as e:
        return f"{type(e).__module__}.{type(e).__qualname__}: {e}"
    return None

def _stream(name):
    s = getattr(sys, name)
    buf = s.buffer
    raw = buf if isinstance(buf, io.RawIOBase) else buf.raw
    return {
        "exactly TextIOWrapper": type(s) is io.TextIOWrapper,
        "TextIOWrapper": isinstance(s, io.TextIOWrapper),
        "repr": repr(s),
        "encoding": s.encoding,
        "errors": s.errors,
        "newlines": s.newlines,
        "line_buffering": s.line_buffering,
        "write_through": s.write_through,
        "seekable": s.seekable(),
        "readable": s.readable(),
        "writable": s.writable(),
        "isatty": s.isatty(),
        "fileno": s.fileno(),
        "tell": _error(s.tell),
        "seek": _error(lambda: s.seek(0)),
        "buffered": isinstance(buf, io.BufferedIOBase),
        "buffer tell": _error(buf.tell),
        "raw is a FileIO": isinstance(raw, io.FileIO),
        "raw closefd": raw.closefd,
        "raw name": raw.name,
        "is sys.__std*__": s is getattr(sys, f"__{name}__"),
    }

result = {name: _stream(name) for name in ("stdin", "stdout", "stderr")}
for name in ("stdout", "stderr"):
    s = getattr(sys, name)
    before = (s.encoding, s.errors, s.line_buffering)
    s.reconfigure(encoding="latin-1", errors="replace", line_buffering=True)
    result[name + " reconfigured"] = [s.encoding, s.errors, s.line_buffering]
    s.reconfigure(encoding=before[0], errors=before[1], line_buffering=before[2])
    result[name + " restored"] = [s.encoding, s.errors, s.line_buffering]
"""


def _probe() -> dict[str, Any]:
    """The probe, run in this worker."""
    ns: dict[str, Any] = {}
    exec(PROBE, ns)
    return dict(ns["result"])


def _fresh_probe() -> dict[str, Any]:
    """The probe in a fresh interpreter started here with pipes on 0-2 and this environment."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", PROBE + "\nsys.__stderr__.write(json.dumps(result))"],
        stdin=subprocess.PIPE,
        capture_output=True,  # pipes on 0-2, as a worker has
        env=dict(os.environ),
        timeout=60,
        check=True,
    )
    return dict(json.loads(proc.stderr))


def _interpreter_flags() -> str:
    return f"{sys.flags.utf8_mode} {sys.getfilesystemencoding()}"


def _run_fresh(w: int, code: str) -> str:
    """What ``python -c code`` prints when worker ``w`` runs it with its own environment."""

    def run(code: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return out.stdout.strip()

    return str(remotecall_fetch(run, w, code))


def _spawned_by(w: int, mode: str) -> None:
    """Worker ``w`` came the way ``mode`` says: forked by the forkserver, or exec'd by us."""
    parent = remotecall_fetch(os.getppid, w)
    if mode == "forkserver":
        assert local._forkserver is not None and parent == local._forkserver.pid
    else:
        assert parent == os.getpid()


@pytest.fixture(params=["forkserver", "exec"])
def worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A local worker started the way the parameter says (``PYDIST_SPAWN``)."""
    monkeypatch.setenv("PYDIST_SPAWN", request.param)
    ws = addprocs(1)
    try:
        _spawned_by(ws[0], request.param)
        yield ws[0]
    finally:
        end_workers(ws)


def test_a_worker_s_streams_are_those_of_a_fresh_python_with_pipes(worker: int) -> None:
    mine, fresh = remotecall_fetch(_probe, worker), remotecall_fetch(_fresh_probe, worker)
    assert mine == fresh
    for name in ("stdin", "stdout", "stderr"):
        s = mine[name]
        assert s["exactly TextIOWrapper"] and s["TextIOWrapper"], s
        assert s["tell"] == "io.UnsupportedOperation: underlying stream is not seekable", s
        assert s["seek"] == "io.UnsupportedOperation: underlying stream is not seekable", s
        assert not s["seekable"] and not s["isatty"] and not s["raw closefd"], s
        assert s["is sys.__std*__"], s
        assert s["fileno"] == ("stdin", "stdout", "stderr").index(name), s
    # local workers are unbuffered (PYTHONUNBUFFERED=1, as LocalManager sets it)
    assert mine["stdout"]["write_through"] and not mine["stdout"]["buffered"]
    assert mine["stderr"]["errors"] == "backslashreplace"
    for name in ("stdout", "stderr"):
        assert mine[name + " reconfigured"] == ["latin-1", "replace", True]
        assert mine[name + " restored"] == [mine[name]["encoding"], mine[name]["errors"], False]


def _print_reconfigured(tag: str) -> None:
    out, err = sys.stdout, sys.stderr
    before = (out.encoding, out.errors, out.line_buffering)
    try:
        out.reconfigure(encoding="ascii", errors="backslashreplace")
        print(f"{tag} ascii \u00e9")  # the worker writes the 4 characters \xe9
        out.reconfigure(encoding="utf-8", errors="strict", line_buffering=True)
        print(f"{tag} utf-8 \u00e9 \u2713")
        err.reconfigure(encoding="utf-8", line_buffering=True)
        print(f"{tag} stderr \u2713", file=err)
        out.buffer.write(f"{tag} buffer \u00e9\n".encode())
        out.buffer.flush()
    finally:
        out.reconfigure(encoding=before[0], errors=before[1], line_buffering=before[2])


def test_what_a_worker_prints_after_reconfigure_reaches_the_master(
    worker: int, capfd: pytest.CaptureFixture[str]
) -> None:
    remotecall_fetch(_print_reconfigured, worker, "rc")
    out = err = ""
    head = f"From worker {worker}:\t"
    lines = [f"{head}rc ascii \\xe9", f"{head}rc utf-8 \u00e9 \u2713", f"{head}rc buffer \u00e9"]

    def relayed() -> bool:
        nonlocal out, err
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        return all(x in out.splitlines() for x in lines) and f"{head}rc stderr \u2713" in err

    wait_until(relayed, timeout=10, interval=0.05, what="the worker's lines to be relayed")
    assert all(x in out.splitlines() for x in lines), out
    assert f"{head}rc stderr \u2713" in err.splitlines(), err


def _close_forkserver() -> None:
    """End this master's forkserver, and wait until the master knows (its reader thread): a
    launch meanwhile would take it for the running one."""
    server = local._forkserver
    if server is not None:
        server.close()
        wait_until(lambda: not server.alive, timeout=10, what="the forkserver to end")
        server.proc.wait(timeout=10)


# (the master's environment, the worker's env=, its streams' encodings, their errors)
_SETTINGS = {
    # a locale of the worker's own (the forkserver's is the master's), not in UTF-8 mode
    # (PYTHONUTF8=0, in the forkserver's environment too): the POSIX locale's is ASCII. An
    # interpreter reads its locale as it starts (UTF-8 mode, the file system encoding), so
    # such a worker is started by exec even when forking is asked for
    "locale": ({"PYTHONUTF8": "0"}, {"LC_ALL": "POSIX"}, ["ascii"] * 3, ["surrogateescape"] * 2),
    # the master's PYTHONIOENCODING (the forkserver's too)
    "PYTHONIOENCODING": (
        {"PYTHONIOENCODING": "latin-1:replace"},
        {},
        ["iso8859-1"] * 3,
        ["replace"] * 2,
    ),
}


@pytest.mark.parametrize("mode", ["forkserver", "exec"])
@pytest.mark.parametrize("case", sorted(_SETTINGS))
def test_a_worker_s_environment_chooses_its_streams_settings(
    mode: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    master_env, env, encodings, errors = _SETTINGS[case]
    monkeypatch.setenv("PYDIST_SPAWN", mode)
    for key, value in master_env.items():
        monkeypatch.setenv(key, value)
    _close_forkserver()  # the next one starts with the master's environment of this test
    ws: list[int] = []
    try:
        ws = addprocs(1, env=env)
        _spawned_by(ws[0], "exec" if "LC_ALL" in env else mode)
        mine, fresh = remotecall_fetch(_probe, ws[0]), remotecall_fetch(_fresh_probe, ws[0])
        assert mine == fresh
        flags = "import sys; print(sys.flags.utf8_mode, sys.getfilesystemencoding())"
        assert remotecall_fetch(_interpreter_flags, ws[0]) == _run_fresh(ws[0], flags)
        assert [mine[n]["encoding"] for n in ("stdin", "stdout", "stderr")] == encodings
        assert [mine[n]["errors"] for n in ("stdin", "stdout", "stderr")] == [
            *errors,
            "backslashreplace",
        ]
    finally:
        if ws:
            rmprocs(ws, waitfor=30)
        end_workers(ws)
        _close_forkserver()  # the next test's starts with the usual environment


def _print_and_report(text: str) -> list[str]:
    print(text, flush=True)
    return [s.encoding for s in (sys.stdin, sys.stdout, sys.stderr)]


@pytest.mark.parametrize("mode", ["forkserver", "exec"])
def test_a_worker_inherits_an_encoding_that_is_not_ascii_compatible(
    mode: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # PYTHONIOENCODING=utf-16 in the master: a worker that kept it could not read its cookie
    # nor write its banner (addprocs failed: "UTF-16 stream does not start with BOM"); its
    # streams are UTF-8 instead, and what it prints reaches the master
    monkeypatch.setenv("PYDIST_SPAWN", mode)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-16")
    _close_forkserver()
    ws: list[int] = []
    try:
        ws = addprocs(1)
        got = remotecall_fetch(_print_and_report, ws[0], "h\u00e9 from the worker")
        assert got == ["utf-8"] * 3
        out = ""

        def relayed() -> bool:
            nonlocal out
            out += capfd.readouterr().out
            return "h\u00e9 from the worker" in out

        wait_until(relayed, timeout=10, interval=0.05, what="the worker's line to be relayed")
    finally:
        if ws:
            rmprocs(ws, waitfor=30)
        end_workers(ws)
        _close_forkserver()
