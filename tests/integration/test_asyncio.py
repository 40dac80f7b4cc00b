"""asyncio: ``await`` on a Future, ``asyncio.gather``/``wrap_future``, and async take/put on a
RemoteChannel, without blocking the event loop or a thread per pending await."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import (
    Executor,
    RemoteChannel,
    RemoteException,
    addprocs,
    remotecall,
    remotecall_fetch,
)
from tests.conftest import end_workers, requests_awaiting, wait_until
from tests.integration._helpers import sleep_then, square

T = 30


@pytest.fixture(scope="module")
def pids() -> Iterator[list[int]]:
    added = addprocs(2)
    yield added
    end_workers(added)


def fail() -> None:
    raise KeyError("remote")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, T))


def test_await_a_future(pids: list[int]) -> None:
    async def main() -> Any:
        return await remotecall(square, pids[0], 6)

    assert run(main()) == 36


def test_gather_many_without_a_thread_each(pids: list[int]) -> None:
    before = threading.active_count()

    async def main() -> list[Any]:
        futs = [remotecall(sleep_then, pids[i % 2], 0.2, i) for i in range(100)]
        await asyncio.sleep(0.05)
        assert threading.active_count() < before + 10
        return await asyncio.gather(*futs)

    assert run(main()) == list(range(100))


def test_the_loop_is_not_blocked(pids: list[int]) -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    async def main() -> Any:
        t = asyncio.ensure_future(ticker())
        value = await remotecall(sleep_then, pids[0], 0.4, "v")
        await t
        return value

    assert run(main()) == "v"
    assert len(ticks) == 5


def test_await_raises_the_calls_own_exception(pids: list[int]) -> None:
    async def main() -> None:
        await remotecall(fail, pids[0])

    with pytest.raises(KeyError) as info:
        run(main())
    assert isinstance(info.value.__cause__, RemoteException)


def test_wrap_future_and_executor_futures(pids: list[int]) -> None:
    async def main() -> Any:
        with Executor() as ex:
            a = await asyncio.wrap_future(remotecall(square, pids[1], 3))
            b = await ex.submit(square, 4)
            c = await asyncio.get_running_loop().run_in_executor(ex, square, 5)
        return a, b, c

    assert run(main()) == (9, 16, 25)


def test_cancelling_the_awaiting_task_leaves_the_cluster_usable(pids: list[int]) -> None:
    f = remotecall(sleep_then, pids[0], 0.5, "done anyway")

    async def main() -> None:
        task = asyncio.ensure_future(_await(f))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert not f.cancelled()
    assert f.result(T) == "done anyway"
    assert remotecall_fetch(square, pids[0], 2) == 4


async def _await(f: Any) -> Any:
    return await f


def test_cancelling_waits_for_a_queued_executor_task_cancels_it(pids: list[int]) -> None:
    async def main() -> tuple[Any, Any]:
        with Executor(max_workers=1) as ex:
            first = ex.submit(sleep_then, 0.3, 1)
            second = ex.submit(square, 2)
            task = asyncio.ensure_future(_await(second))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.sleep(0.05)
            return first, second

    first, second = run(main())
    assert second.cancelled()
    assert first.result(T) == 1


def test_remote_channel_async_take_and_put(pids: list[int]) -> None:
    rc = RemoteChannel(pids[0])

    async def main() -> list[Any]:
        got = []
        taker = asyncio.ensure_future(rc.atake())
        await asyncio.sleep(0.05)
        await rc.aput("a")
        got.append(await taker)
        await rc.aput("b")
        got.append(await rc.afetch())
        got.append(await rc.atake())
        with pytest.raises(TimeoutError):
            await rc.atake(timeout=0.1)
        return got

    assert run(main()) == ["a", "b", "b"]


def test_local_remote_channel_async() -> None:
    rc = RemoteChannel()

    async def main() -> Any:
        taker = asyncio.ensure_future(rc.atake())
        await rc.aput(7)
        return await taker

    assert run(main()) == 7


def test_cancelled_atake_loses_nothing(pids: list[int]) -> None:
    rc = RemoteChannel(pids[1])

    async def main() -> None:
        taker = asyncio.ensure_future(rc.atake())
        await asyncio.sleep(0.1)
        taker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taker

    run(main())
    wait_until(lambda: requests_awaiting(pids[1]) == 0, T, what="the cancelled take to answer")
    rc.put("kept", timeout=T)
    assert rc.take(timeout=T) == "kept"
