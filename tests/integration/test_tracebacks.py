"""What a user reads when a remote call fails: the remote traceback shows the user's own files,
lines and source lines (functions shipped by value keep their file name), pydistributed's own
frames are left out, and the remote part is set apart as ``concurrent.futures`` does it."""

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
from pydistributed.errors import RemoteTraceback

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
    # the remote part, set apart between triple quotes, shows only the user's frames
    remote = err.split('"""')[1]
    assert f'File "{script}", line 10, in boom\n    return helper(y)\n' in remote
    assert f'File "{script}", line 6, in helper\n    return 1 / x\n' in remote
    assert _frames(remote) == [str(script), str(script)]
    assert remote.rstrip().endswith("ZeroDivisionError: division by zero")
    # the local part: the user's line, then at most two frames of pydistributed
    local = err.split("The above exception was the direct cause of the following exception:")[1]
    frames = _frames(local)
    assert frames[0] == str(script)
    assert len([f for f in frames if f.startswith(PACKAGE)]) <= 3, err
    assert err.rstrip().splitlines()[-1].startswith("pydistributed.errors.RemoteException: On ")
    assert err.count("ZeroDivisionError: division by zero") == 2, err  # remote, and the summary
    assert len(err.splitlines()) <= 30, err


def _fail_here(x: Any) -> Any:
    raise ValueError(f"bad {x}")


def test_the_remote_exception_reads_at_a_glance(add_workers: Any) -> None:
    (w,) = add_workers(1)
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_fail_here, w, "q")
    e = info.value
    assert str(e) == f"On worker {w}: ValueError: bad q"
    assert isinstance(e.captured.exc, ValueError) and e.pid == w
    assert isinstance(e.__cause__, RemoteTraceback)
    cause = str(e.__cause__)
    assert cause.startswith(f'on worker {w}\n"""\nTraceback (most recent call last):\n')
    assert "in _fail_here" in cause and 'raise ValueError(f"bad {x}")' in cause
    assert "dispatch.py" not in cause and "dispatch.py" not in e.captured.traceback_text


def test_a_call_on_the_master_itself_names_the_master(add_workers: Any) -> None:
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_fail_here, 1, "z")
    assert str(info.value) == "On process 1 (the master): ValueError: bad z"
    assert "dispatch.py" not in str(info.value.__cause__)
