"""Answers that cannot be received: the failure is labelled with the process that failed to
decode, and says that the value was computed elsewhere and why it cannot arrive."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pydistributed import RemoteException, myid, remotecall_fetch, remotecall_wait


def _make_only_there() -> Any:
    import onlyworker_values  # type: ignore[import-not-found]

    return onlyworker_values.Point(1, 2)


def test_an_answer_the_caller_cannot_decode_is_the_callers_failure(
    add_workers: Any, tmp_path: Path
) -> None:
    (tmp_path / "onlyworker_values.py").write_text(
        textwrap.dedent(
            """
            class Point:
                def __init__(self, x, y):
                    self.x, self.y = x, y
            """
        )
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    (w,) = add_workers(1, env={"PYTHONPATH": path})
    with pytest.raises(ImportError):
        __import__("onlyworker_values")
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(_make_only_there, w)
    err = info.value
    assert err.pid == myid() == 1  # this process failed, not the worker
    assert isinstance(err.captured.exc, ModuleNotFoundError)
    text = str(err)
    assert f"The call ran on process {w}, but its answer cannot be received on process 1" in text
    assert "onlyworker_values" in text and "missing on process 1" in text
    assert remotecall_fetch(myid, w) == w  # the link is fine
    # remotecall_wait stores the value there and answers None: nothing to decode here
    assert remotecall_wait(_make_only_there, w).isready()
