"""New workers take the topology and laziness of the workers there are, as in Julia."""

from __future__ import annotations

from typing import Any

import pytest

from pydistributed import addprocs, myid, remotecall_fetch, workers


def test_a_different_topology_or_laziness_is_refused_and_adds_nothing(add_workers: Any) -> None:
    (w,) = add_workers(1)  # all_to_all, lazy
    before = workers()
    with pytest.raises(ValueError, match="Workers with Topology all_to_all already exist"):
        addprocs(1, topology="master_worker")
    with pytest.raises(ValueError, match=r"Active workers with lazy=True\. Cannot set lazy=False"):
        addprocs(1, lazy=False)
    assert workers() == before and remotecall_fetch(myid, w) == w


def test_with_no_workers_any_topology_goes(add_workers: Any) -> None:
    assert workers() == [1]
    (a,) = add_workers(1, topology="master_worker")
    with pytest.raises(ValueError, match="Requested Topology all_to_all cannot be set"):
        addprocs(1)
    (b,) = add_workers(1, topology="master_worker")  # like the others: fine
    assert sorted(workers()) == sorted([a, b])
