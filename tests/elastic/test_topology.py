"""Joined workers follow the topology: master_worker keeps them apart; all_to_all with
lazy=False connects them at once."""

from __future__ import annotations

import pytest

from pydistributed import RemoteException, pmap, remotecall_fetch, wait_for_workers
from pydistributed.managers import ElasticManager
from tests.conftest import wait_until
from tests.elastic.conftest import Joiner, address

pytestmark = pytest.mark.timeout(120)


def _peers() -> list[int]:
    from pydistributed.cluster import current_cluster

    return sorted(current_cluster().connections.snapshot())


def _call(p: int) -> int:
    from pydistributed import myid

    return remotecall_fetch(myid, p)


def test_master_worker(joiner: Joiner) -> None:
    with ElasticManager("127.0.0.1", 0, topology="master_worker") as em:
        joiner.start(address(em))
        joiner.start(address(em))
        a, b = wait_for_workers(2, 60)
        assert sorted(pmap(lambda x: x + 1, range(10))) == list(range(1, 11))
        with pytest.raises(RemoteException, match="no connection to process"):
            remotecall_fetch(_call, a, b)


def test_all_to_all_not_lazy(joiner: Joiner) -> None:
    with ElasticManager("127.0.0.1", 0, lazy=False) as em:
        joiner.start(address(em))
        (a,) = wait_for_workers(1, 60)
        joiner.start(address(em))
        ids = wait_for_workers(2, 60)
        (b,) = [p for p in ids if p != a]
        # the second connects to the first when it joins, before any call between them
        wait_until(lambda: a in remotecall_fetch(_peers, b), 30, what="the eager connection")
        assert remotecall_fetch(_call, b, a) == a
