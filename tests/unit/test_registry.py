"""The worker table (``registry.Registry``): membership, ids never reused, dead stays dead.

No I/O: every test builds a fresh ``Registry`` and drives it through its methods.
"""

from __future__ import annotations

import threading

import pytest

from pydistributed.registry import Registry, WorkerInfo

# RFC 5737 documentation addresses: never this host, whatever its name or address
FAR = "192.0.2.10"
FARTHER = "198.51.100.20"


def _enter(reg: Registry, info: WorkerInfo) -> list[WorkerInfo]:
    """Admit ``info`` and let it join (what the master does once it answered JoinPGRP)."""
    others = reg.admit(info)
    assert reg.joined(info.pid)
    return others


def _master_with(*hosts: str | None) -> Registry:
    """A master's table with one worker per host, joined in order (pids 2, 3, ...)."""
    reg = Registry(1, "master")
    for host in hosts:
        pid = reg.assign_pid()
        _enter(reg, WorkerInfo(pid, host, 9000 + pid))
    return reg


def test_an_empty_table() -> None:
    reg = Registry(1, "master")
    assert reg.myid == 1 and reg.role == "master"
    assert reg.worker_ids() == [1]  # as in Julia: the master works when there are no workers
    assert reg.proc_ids() == [1]
    assert reg.infos() == [] and reg.get(2) is None
    assert reg.is_alive(1)
    assert not reg.is_alive(2) and not reg.is_dead(2) and not reg.was_removed(2)
    assert not reg.was_assigned(2)
    assert reg.epoch == 0


def test_admit_returns_the_others_as_they_were() -> None:
    reg = Registry(1, "master")
    a, b, c = (WorkerInfo(reg.assign_pid(), "localhost", 9000 + i) for i in range(3))
    assert _enter(reg, a) == []
    assert _enter(reg, b) == [a]
    assert _enter(reg, c) == [a, b]
    assert reg.worker_ids() == [2, 3, 4]
    assert reg.proc_ids() == [1, 2, 3, 4]
    assert reg.get(3) is b and reg.infos() == [a, b, c]
    assert all(reg.is_alive(p) for p in (1, 2, 3, 4))
    # admitting an entry again replaces it; the others are what is returned
    b2 = WorkerInfo(3, "localhost", 9999)
    assert _enter(reg, b2) == [a, c]
    assert reg.get(3) is b2 and reg.worker_ids() == [2, 3, 4]


def test_a_joining_worker_is_invisible_until_it_has_joined() -> None:
    reg = Registry(1, "master")
    a, b, c = (WorkerInfo(reg.assign_pid(), "localhost", 9000 + i) for i in range(3))
    _enter(reg, a)
    epoch = reg.epoch
    assert reg.admit(b) == [a]
    # b is joining: nothing lists it, nothing calls it, the epoch has not moved
    assert reg.worker_ids() == [2] and reg.proc_ids() == [1, 2] and reg.infos() == [a]
    assert not reg.is_alive(3) and reg.get(3) is None and reg.epoch == epoch
    # a worker joining meanwhile is told of b (each of the two learns of the other)
    assert reg.admit(c) == [a, b]
    assert reg.joined(3) and reg.worker_ids() == [2, 3] and reg.epoch == epoch + 1
    # c's connection closes before it joins: it is dead, and cannot join any more
    assert reg.remove(4) is c
    assert reg.is_dead(4) and not reg.joined(4) and reg.worker_ids() == [2, 3]


def test_assign_pid_never_reuses_an_id() -> None:
    reg = Registry(1, "master")
    assert [reg.assign_pid() for _ in range(3)] == [2, 3, 4]
    for pid in (2, 3, 4):
        _enter(reg, WorkerInfo(pid))
    reg.remove(4)  # the newest one leaves: its id is still not given again
    reg.remove(2)
    assert reg.assign_pid() == 5
    assert reg.was_assigned(2) and reg.was_assigned(4) and reg.was_assigned(5)
    assert not reg.was_assigned(1)  # the master's id is not a worker's
    assert not reg.was_assigned(6)


def test_assign_pid_is_unique_across_threads() -> None:
    reg = Registry(1, "master")
    got: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def take(out: list[int]) -> None:
        start.wait(10)
        out.extend(reg.assign_pid() for _ in range(200))

    threads = [threading.Thread(target=take, args=(out,)) for out in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    every = sorted(p for out in got for p in out)
    assert every == list(range(2, 2 + 8 * 200))


def test_remove_makes_a_process_dead_for_good() -> None:
    reg = _master_with("localhost", "localhost")
    info = reg.get(2)
    assert reg.remove(2) is info
    assert reg.is_dead(2) and not reg.is_alive(2)
    assert reg.get(2) is None
    assert reg.worker_ids() == [3] and reg.proc_ids() == [1, 3]
    assert not reg.was_removed(2)  # it left; nobody removed it
    # removing again: nothing left to return, still dead
    assert reg.remove(2) is None
    assert reg.is_dead(2)
    reg.remove(3)
    assert reg.worker_ids() == [1] and reg.proc_ids() == [1]


def test_mark_removing_then_remove() -> None:
    reg = _master_with("localhost")
    info = reg.get(2)
    assert info is not None and not info.removing
    assert reg.mark_removing(2) is info
    assert info.removing and reg.was_removed(2)
    assert reg.is_alive(2) and not reg.is_dead(2)  # still there until it has gone
    assert reg.worker_ids() == [2]
    reg.remove(2)
    assert reg.was_removed(2) and reg.is_dead(2) and not reg.is_alive(2)


def test_mark_removing_an_unknown_pid_returns_none() -> None:
    reg = Registry(1, "master")
    assert reg.mark_removing(7) is None
    assert reg.worker_ids() == [1]


def test_a_worker_that_died_before_rmprocs_is_not_called_removed() -> None:
    reg = _master_with("localhost")
    reg.remove(2)  # it crashed
    assert reg.mark_removing(2) is None  # rmprocs came too late
    assert not reg.was_removed(2) and reg.is_dead(2)


def test_a_dead_pid_learned_again_stays_out() -> None:
    reg = Registry(0, "worker")
    reg.join(3, "all_to_all", "localhost")
    reg.learn(((2, "localhost", 9002), (4, "localhost", 9004)))
    assert reg.worker_ids() == [2, 4]
    reg.remove(2)
    # a late update (sent before the master knew 2 had gone) names it again
    reg.learn(((2, "localhost", 9002), (5, "localhost", 9005)))
    assert reg.worker_ids() == [4, 5]
    assert reg.is_dead(2) and not reg.is_alive(2) and reg.get(2) is None
    entry = reg.get(5)
    assert entry is not None and (entry.host, entry.port) == ("localhost", 9005)


def test_join_takes_the_id_and_settings_from_the_master() -> None:
    reg = Registry(0, "worker")
    assert reg.topology == "all_to_all" and reg.master_host == "localhost"
    reg.join(7, "master_worker", FAR)
    assert reg.myid == 7 and reg.role == "worker"
    assert reg.topology == "master_worker" and reg.master_host == FAR
    assert reg.is_alive(7) and reg.is_alive(1)  # itself and the master
    assert reg.worker_ids() == [1]  # it knows of no other worker yet
    reg.join(7, "all_to_all", "")  # no host given: the master is on this host
    assert reg.master_host == "localhost"


def test_the_master_can_be_dead_on_a_worker() -> None:
    reg = Registry(0, "worker")
    reg.join(2, "all_to_all", "localhost")
    assert reg.is_alive(1)
    reg.remove(1)
    assert reg.is_dead(1) and not reg.is_alive(1)


def test_epoch_grows_on_every_membership_change() -> None:
    reg = Registry(0, "worker")
    seen = [reg.epoch]

    def changed() -> None:
        assert reg.epoch == seen[-1] + 1
        seen.append(reg.epoch)

    reg.join(2, "all_to_all", "localhost")
    changed()
    reg.learn(((3, "localhost", 9003),))
    changed()
    reg.learn(((4, "localhost", 9004), (5, "localhost", 9005)))  # one change, two workers
    changed()
    reg.remove(4)
    changed()
    reg.learn(((6, "localhost", 9006),))
    changed()

    master = Registry(1, "master")
    before = master.epoch
    master.admit(WorkerInfo(master.assign_pid()))
    assert master.epoch == before  # joining: not a member yet
    master.joined(2)
    assert master.epoch == before + 1
    master.mark_removing(2)  # a wish, not a change of membership
    assert master.epoch == before + 1
    master.remove(2)
    assert master.epoch == before + 2


def test_queries_do_not_change_the_epoch() -> None:
    reg = _master_with("localhost", FAR)
    before = reg.epoch
    reg.worker_ids()
    reg.proc_ids()
    reg.infos()
    reg.get(2)
    reg.is_alive(2)
    reg.is_dead(2)
    reg.was_removed(2)
    reg.was_assigned(2)
    reg.procs_on_host(2)
    reg.assign_pid()
    assert reg.epoch == before


def test_procs_on_host_groups_by_address() -> None:
    # pids: 2 localhost, 3 127.0.0.1, 4 FAR, 5 FAR, 6 no host (local), 7 FARTHER
    reg = _master_with("localhost", "127.0.0.1", FAR, FAR, None, FARTHER)
    local = [1, 2, 3, 6]  # loopback names and no name all mean this host
    assert reg.procs_on_host(1) == local
    assert reg.procs_on_host(3) == local
    assert reg.procs_on_host(6) == local
    assert reg.procs_on_host(4) == [4, 5]
    assert reg.procs_on_host(7) == [7]
    with pytest.raises(ValueError, match="no process with id 99"):
        reg.procs_on_host(99)
    reg.remove(5)
    assert reg.procs_on_host(4) == [4]
    with pytest.raises(ValueError):
        reg.procs_on_host(5)  # gone


def test_procs_on_host_on_a_worker_places_the_master_where_it_was_told() -> None:
    reg = Registry(0, "worker")
    reg.join(3, "all_to_all", FAR)
    reg.learn(((2, FAR, 9002), (3, "127.0.0.1", 9003), (4, FARTHER, 9004)))
    assert reg.procs_on_host(1) == [1, 2]
    assert reg.procs_on_host(3) == [3]
    assert reg.procs_on_host(4) == [4]


def test_worker_info_fields() -> None:
    info = WorkerInfo(4, "localhost", 9004)
    assert info.pid == 4 and (info.host, info.port) == ("localhost", 9004)
    assert info.config is None and info.manager is None and info.ospid is None
    assert info.process is None and not info.removing
    assert not info.exited.is_set()
    assert "pid=4" in repr(info)
    assert "myid=1" in repr(Registry(1, "master"))


def test_mark_lost_makes_a_worker_dead_before_its_removal() -> None:
    reg = _master_with("localhost", "localhost")
    epoch = reg.epoch
    reg.mark_lost(2)
    assert reg.is_dead(2) and not reg.is_alive(2) and reg.epoch == epoch + 1
    info = reg.remove(2)  # the closing thread still finds the entry to deregister
    assert info is not None and info.pid == 2
    reg.mark_lost(2)  # again: nothing changes
    assert reg.epoch == epoch + 2 and reg.is_alive(3)
