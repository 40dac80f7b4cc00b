"""What a user reads when a remote call fails: ``str(RemoteException)`` is ``On worker N: Type:
message`` and then the remote traceback (API.md; Julia's ``On worker N:`` shows the remote
stack too), which shows the user's own files, lines and source lines (functions shipped by value
keep their file name), without pydistributed's own frames."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pydistributed import RemoteException, remotecall_fetch

T = 120
PACKAGE = str(Path(__file__).resolve().parents[2] / "src" / "pydistributed")

SCRIPT = textwrap.dedent(
    """
    import sys
    from pydistributed import addprocs, pmap, remotecall_fetch

    def helper(x):
        return 1 / x

    def boom(x):
        y = x - 3
        return helper(y)

    if __name__ == "__main__":
        addprocs(2)
        if sys.argv[1] == "pmap":
            pmap(boom, range(6))
        else:
            remotecall_fetch(boom, 2, 3)
    """
)


def _run(tmp_path: Path, *args: str) -> tuple[Path, str]:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=T,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 1, proc.stderr
    return script, proc.stderr


def _frames(text: str) -> list[str]:
    return re.findall(r'File "([^"]+)", line \d+', text)


@pytest.mark.parametrize("how", ["remotecall_fetch", "pmap"])
def test_a_remote_traceback_shows_the_users_file_lines_and_source(tmp_path: Path, how: str) -> None:
    script, err = _run(tmp_path, how)
    assert "<dynamic-code>" not in err
    # the local part first (Python's own), then the exception: its line, the remote traceback
    local, remote = err.split("pydistributed.errors.RemoteException: On ")
    assert remote.startswith("worker ") and remote.split("\n")[0].endswith(
        ": ZeroDivisionError: division by zero"
    )
    # the remote part shows only the user's frames, with their source lines
    assert f'File "{script}", line 10, in boom\n    return helper(y)\n' in remote
    assert f'File "{script}", line 6, in helper\n    return 1 / x\n' in remote
    assert _frames(remote) == [str(script), str(script)]
    assert remote.rstrip().endswith("ZeroDivisionError: division by zero")
    # the local part: the user's line, then at most three frames of pydistributed
    frames = _frames(local)
    assert frames[0] == str(script)
    assert len([f for f in frames if f.startswith(PACKAGE)]) <= 3, err
    assert err.count("ZeroDivisionError: division by zero") == 2, err  # the summary, remote
    assert len(err.splitlines()) <= 30, err


def _fail_here(x: Any) -> Any:
    raise ValueError(f"bad {x}")


def test_the_remote_exception_shows_the_remote_traceback(add_workers: Any) -> None:
    (w,) = add_workers(1)
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_fail_here, w, "q")
    e = info.value
    head, rest = str(e).split("\n", 1)
    assert head == f"On worker {w}: ValueError: bad q"
    assert rest.startswith("Traceback (most recent call last):\n")
    assert "in _fail_here" in rest and 'raise ValueError(f"bad {x}")' in rest
    assert rest.rstrip().endswith("ValueError: bad q")
    assert "dispatch.py" not in rest and "dispatch.py" not in e.captured.traceback_text
    assert isinstance(e.captured.exc, ValueError) and e.pid == w
    assert e.__cause__ is None  # (the traceback is not shown twice when it goes uncaught)


def test_a_call_on_the_master_itself_names_the_master(add_workers: Any) -> None:
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_fail_here, 1, "z")
    text = str(info.value)
    assert text.startswith("On process 1 (the master): ValueError: bad z\nTraceback ")
    assert "dispatch.py" not in text
