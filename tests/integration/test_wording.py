"""The words of the errors a user reads: what could not be pickled (the captured variable of a
closure, the global it uses, never an internal type), a worker that exited on its own, the
report of ``everywhere``, and an open file that a closure would carry."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    CompositeException,
    ProcessExitedException,
    RemoteException,
    everywhere,
    fetch,
    pmap,
    remotecall,
    remotecall_fetch,
)

T = 120
_GLOBAL_LOCK = threading.Lock()


def _shown(e: BaseException) -> str:
    return "".join(traceback.format_exception(e))


def test_an_unpicklable_return_value_is_named_once(add_workers: Any) -> None:
    (w,) = add_workers(1)
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(lambda: threading.Lock(), w)
    text = str(info.value)
    assert text.startswith(f"On worker {w}: ")
    assert text.count("return value") == 1, text
    assert "the return value, a _thread.lock, could not be pickled" in text
    assert _shown(info.value).count("could not be pickled") == 1, _shown(info.value)


def test_an_unpicklable_value_of_a_future_is_named_by_fetch_and_wait(add_workers: Any) -> None:
    (w,) = add_workers(1)
    for get in (lambda f: f.fetch(timeout=30), lambda f: fetch(f, timeout=30)):
        f = remotecall(threading.Lock, w)
        with pytest.raises(RemoteException) as info:
            get(f)
        text = str(info.value)
        assert "the return value, a _thread.lock, could not be pickled" in text, text
        assert "a tuple" not in text


def test_a_closure_names_the_captured_variable_that_cannot_be_pickled(add_workers: Any) -> None:
    (w,) = add_workers(1)
    n = 3
    lock = threading.Lock()
    with pytest.raises(pickle.PicklingError) as info:
        remotecall_fetch(lambda: (n, lock), w)
    text = str(info.value)
    assert "captures the variable 'lock', a _thread.lock" in text, text
    assert "builtins.function" not in text
    with pytest.raises(pickle.PicklingError) as info:
        remotecall_fetch(lambda: _GLOBAL_LOCK.locked(), w)
    assert "uses the global '_GLOBAL_LOCK', a _thread.lock" in str(info.value), str(info.value)


def test_pmap_names_what_the_user_passed_not_an_internal_type(add_workers: Any) -> None:
    add_workers(2)
    lock = threading.Lock()
    with pytest.raises(pickle.PicklingError) as info:
        pmap(lambda x: (lock, x)[1], range(3))
    text = str(info.value)
    assert "_Ship" not in text and "pydistributed" not in text, text
    assert ".<lambda> (test_wording.py, line " in text and "'lock'" in text, text


def test_a_closure_over_an_open_file_is_refused(add_workers: Any, tmp_path: Path) -> None:
    (w,) = add_workers(1)
    path = tmp_path / "data.txt"
    path.write_text("first\nsecond\n")
    for mode in ("r", "rb"):
        with open(path, mode) as fh:
            with pytest.raises(pickle.PicklingError) as info:
                remotecall_fetch(lambda: fh.readline(), w)
        text = str(info.value)
        assert "captures the variable 'fh'" in text, text
        assert "an open file cannot be sent to another process" in text, text
        assert isinstance(info.value.__cause__, TypeError)
    assert remotecall_fetch(lambda: 2 + 2, w) == 4


def test_a_worker_that_calls_sys_exit_says_so_with_its_code(add_workers: Any) -> None:
    (w,) = add_workers(1)
    with pytest.raises(ProcessExitedException) as info:
        remotecall_fetch(sys.exit, w, 3)
    assert str(info.value) == f"worker {w} has exited with code 3"


def test_everywhere_failures_name_the_master_and_show_their_tracebacks(add_workers: Any) -> None:
    w2, w3 = add_workers(2)
    with pytest.raises(CompositeException) as info:
        everywhere("1 / 0")
    heads = [str(e).split("\n")[0] for e in info.value.exceptions]
    assert heads == [
        "On process 1 (the master): ZeroDivisionError: division by zero",
        f"On worker {w2}: ZeroDivisionError: division by zero",
        f"On worker {w3}: ZeroDivisionError: division by zero",
    ]
    assert all(isinstance(e, RemoteException) for e in info.value.exceptions)
    for e in info.value.exceptions:
        assert "\nTraceback (most recent call last):\n" in str(e)
        assert str(e).rstrip().endswith("ZeroDivisionError: division by zero")


EVERYWHERE_SCRIPT = textwrap.dedent(
    """
    from pydistributed import addprocs, everywhere

    addprocs(2)
    everywhere(
        "from pydistributed import myid\\n"
        "if myid() != 1:\\n"
        "    1 / 0\\n"
    )
    """
)


def test_everywhere_failing_on_two_workers_prints_a_short_report(tmp_path: Path) -> None:
    script = tmp_path / "every.py"
    script.write_text(EVERYWHERE_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=T,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    err = proc.stderr
    assert proc.returncode == 1, err
    assert len(err.splitlines()) <= 30, err
    assert "On worker 1" not in err
    assert err.count("| pydistributed.errors.RemoteException: On worker ") == 2, err
    assert "everywhere: 2 of 3 calls failed" in err
    # each failure's remote traceback is shown, with its source line
    assert err.count("\nTraceback (most recent call last)") == 2, err
    assert err.count("    1 / 0\n") == 2, err
    assert "dispatch.py" not in err and "tasks.py" not in err, err
