"""The owner's reference table: counts per client, notices in any order, exited clients."""

from __future__ import annotations

import itertools
import threading

import pytest

from pydistributed.channels import Channel
from pydistributed.ids import RRID
from pydistributed.refstore import Failure, FutureSlot, RefStore

A = RRID(1, 1)
B = RRID(2, 7)


def test_add_makes_a_future_slot_and_release_frees_it() -> None:
    rs = RefStore()
    slot = rs.add(A, 1)
    assert isinstance(slot, FutureSlot)
    assert rs.lookup(A) is slot and len(rs) == 1 and A in rs
    assert rs.add(A, 1) is slot  # a second handle on the same process
    rs.release(A, 1)
    assert rs.lookup(A) is slot
    rs.release(A, 1)
    assert rs.lookup(A) is None and len(rs) == 0 and A not in rs


def test_freed_only_when_every_client_is_at_zero() -> None:
    rs = RefStore()
    rs.add(A, 1)
    rs.add(A, 2)
    rs.add(A, 3)
    rs.release(A, 2)
    rs.release(A, 1)
    assert rs.clients(A) == {1: 0, 2: 0, 3: 1}
    rs.release(A, 3)
    assert len(rs) == 0 and rs.clients(A) == {}


def test_a_delete_that_overtakes_its_add_is_remembered() -> None:
    rs = RefStore()
    rs.add(A, 1)  # the creator
    rs.release(A, 3)  # process 3 drops a handle whose add (sent by 1) is still on its way
    assert rs.clients(A) == {1: 1, 3: -1}
    rs.add(A, 3)
    rs.release(A, 1)
    assert len(rs) == 0


def test_a_lone_early_delete_is_cancelled_by_its_add() -> None:
    rs = RefStore()
    rs.release(A, 3)
    assert A in rs and rs.lookup(A) is None
    rs.add(A, 3, make=None)
    assert len(rs) == 0


def test_every_order_of_the_notices_of_one_handover_ends_freed() -> None:
    # 1 creates; 1 announces 2's handle; 2 drops it; 1 drops its own. The notices from 1
    # arrive in the order sent; 2's may come at any point.
    from_1 = [("add", 1), ("add", 2), ("del", 1)]
    for pos in range(len(from_1) + 1):
        order = [*from_1[:pos], ("del", 2), *from_1[pos:]]
        rs = RefStore()
        for i, (what, client) in enumerate(order):
            (rs.add if what == "add" else rs.release)(A, client)
            # never freed before the last notice, always freed after it
            assert (A in rs) == (i < len(order) - 1), order


def test_make_none_counts_without_storage() -> None:
    rs = RefStore()
    assert rs.add(A, 1, make=None) is None
    assert A in rs and rs.lookup(A) is None


def test_factory_storage_is_kept() -> None:
    rs = RefStore()
    ch = Channel(3)
    assert rs.add(B, 2, make=lambda: ch) is ch
    assert rs.add(B, 1) is ch  # a later add does not replace it with a Future's slot
    rs.release(B, 1)
    rs.release(B, 2)
    assert len(rs) == 0


def test_apply_adds_before_deletes() -> None:
    rs = RefStore()
    rs.apply(adds=[(A, 2)], dels=[(A, 2)])
    assert len(rs) == 0
    rs.apply(adds=[(A, 1), (A, 2)], dels=[(A, 2)])
    assert rs.clients(A) == {1: 1, 2: 0}
    assert isinstance(rs.lookup(A), FutureSlot)


def test_ensure_keeps_the_storage_until_the_first_notice() -> None:
    rs = RefStore()
    slot = rs.ensure(A)
    assert rs.ensure(A) is slot and A in rs
    slot.put(5)  # an operation that overtook the creator's add
    assert rs.add(A, 4) is slot  # the add arrives: same storage, value kept
    assert rs.lookup(A).fetch() == 5
    rs.release(A, 4)
    assert len(rs) == 0


def test_drop_client_forgets_its_handles_and_later_notices() -> None:
    rs = RefStore()
    rs.add(A, 1)
    rs.add(A, 5)
    rs.add(B, 5)
    rs.drop_client(5)
    assert rs.clients(A) == {1: 1}
    assert B not in rs  # only 5 held it
    # an add announced by a third process before it learnt that 5 exited, and 5's own
    # delete still in flight: neither may keep A alive nor free it
    rs.add(A, 5)
    rs.release(A, 5)
    rs.release(A, 5)
    assert rs.clients(A) == {1: 1}
    rs.release(A, 1)
    assert len(rs) == 0
    # a call from an exited process makes its storage, which nobody holds
    assert isinstance(rs.add(B, 5), FutureSlot)
    assert len(rs) == 0


def test_drop_client_of_the_only_holder_of_an_early_delete() -> None:
    rs = RefStore()
    rs.release(A, 5)
    rs.drop_client(5)
    assert len(rs) == 0


def test_snapshot_is_a_copy() -> None:
    rs = RefStore()
    rs.add(A, 1)
    snap = rs.snapshot()
    snap[A][1] = 99
    assert rs.snapshot() == {A: {1: 1}}


def test_concurrent_adds_and_releases_balance() -> None:
    rs = RefStore()
    rs.add(A, 1)  # keeps the entry alive throughout
    ids = [RRID(9, i) for i in range(200)]

    def churn(client: int) -> None:
        for rrid in ids:
            rs.add(rrid, client)
            rs.add(A, client)
        for rrid in reversed(ids):
            rs.release(rrid, client)
            rs.release(A, client)

    threads = [threading.Thread(target=churn, args=(c,)) for c in range(2, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert rs.snapshot() == {A: {1: 1, **{c: 0 for c in range(2, 10)}}}


def test_future_slot_is_write_once_and_waits() -> None:
    slot = FutureSlot()
    assert not slot.isready()
    with pytest.raises(TimeoutError):
        slot.wait(0.01)
    with pytest.raises(TimeoutError):
        slot.fetch(-1)
    t = threading.Timer(0.05, slot.put, args=("v",))
    t.start()
    assert slot.fetch(5) == "v"
    t.join()
    assert slot.isready()
    assert not slot.try_put("w")
    with pytest.raises(RuntimeError, match="only once"):
        slot.put("w")
    assert slot.fetch() == "v"


def test_failure_pickles() -> None:
    import pickle

    from pydistributed.errors import capture

    try:
        raise ValueError("boom")
    except ValueError as e:
        captured = capture(e)
    f = pickle.loads(pickle.dumps(Failure(3, captured)))
    assert f.pid == 3 and isinstance(f.captured.exc, ValueError)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_two_handovers_in_any_order(order: tuple[int, ...]) -> None:
    # Process 1 owns A and holds it; it sends it to 2 (announcing 2's handle locally), 2
    # sends it to 3 (an add to 1 from 2), then 2 and 3 drop theirs. 2's notices arrive in
    # the order 2 sent them; 3's delete may come at any point; 1 drops last.
    from_2 = [("add", 3), ("del", 2)]
    events = [("add", 1), ("add", 2)]  # 1 made it and announced 2: both local, first
    rest = [*from_2, ("del", 3)]
    ordered = [rest[i] for i in order]
    if ordered.index(("add", 3)) > ordered.index(("del", 2)):
        return  # not a possible order: 2 sends its add before its delete
    rs = RefStore()
    for what, client in [*events, *ordered]:
        (rs.add if what == "add" else rs.release)(A, client)
        assert A in rs
    rs.release(A, 1)
    assert A not in rs
