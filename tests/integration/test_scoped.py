"""procs_added: a with block that adds workers and removes exactly those on exit."""

from __future__ import annotations

import pytest

from pydistributed import addprocs, procs_added, remotecall_fetch, workers
from tests.conftest import end_workers, worker_table


def test_adds_and_removes_exactly_its_workers() -> None:
    (outside,) = addprocs(1)
    try:
        with procs_added(2) as pids:
            assert len(pids) == 2 and set(pids) <= set(workers())
            assert remotecall_fetch(abs, pids[0], -1) == 1
        assert workers() == [outside]
        assert not any(p in worker_table() and not worker_table()[p].exited.is_set() for p in pids)
    finally:
        end_workers([outside])


def test_removes_them_when_the_body_raises() -> None:
    with pytest.raises(ValueError), procs_added(1) as pids:
        raise ValueError("body failed")
    assert pids[0] not in workers()


def test_removes_them_on_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), procs_added(1) as pids:
        raise KeyboardInterrupt
    assert pids[0] not in workers()


def test_nested_blocks() -> None:
    with procs_added(1) as outer:
        with procs_added(1) as inner:
            assert set(workers()) == set(outer + inner)
        assert workers() == outer
    assert workers() == [1]


def test_a_worker_that_exited_inside_the_block_is_fine() -> None:
    from pydistributed import rmprocs

    with procs_added(2) as pids:
        rmprocs(pids[0], waitfor=10)
    assert workers() == [1]
