"""The admission queue on its own: slots, fair turns across clients, bounded waits (no server, no etcd)."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

from streamcodec.server.admission import Admission
from streamcodec.server.status import APIError


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_slots_are_given_at_once_up_to_capacity_then_waiters_queue() -> None:
    async def main() -> None:
        a = Admission(2, queue_limit=10, max_wait=5, retry_after=1)
        await a.acquire("x")
        await a.acquire("y")
        waiter = asyncio.ensure_future(a.acquire("z"))
        await asyncio.sleep(0.01)
        assert not waiter.done() and a.stats()["waiting"] == 1
        a.release()
        await asyncio.wait_for(waiter, 1)
        assert a.stats() == {"active": 2, "waiting": 0, "admitted": 3, "rejected": 0, "capacity": 2}
        a.release()
        a.release()
        assert a.active == 0

    run(main())


def test_waiters_are_served_round_robin_across_clients() -> None:
    async def main() -> List[str]:
        a = Admission(1, queue_limit=10, max_wait=5, retry_after=1)
        await a.acquire("holder")
        order: List[str] = []

        async def want(client: str) -> None:
            await a.acquire(client)
            order.append(client)

        tasks = [asyncio.ensure_future(want(c)) for c in ("greedy", "greedy", "greedy", "other", "third")]
        await asyncio.sleep(0.01)
        for _ in tasks:
            a.release()
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        return order

    # the greedy client's three requests do not go before the others' one each
    assert run(main()) == ["greedy", "other", "third", "greedy", "greedy"]


def test_a_wait_past_max_wait_is_429_with_retry_after_and_leaves_the_queue() -> None:
    async def main() -> None:
        a = Admission(1, queue_limit=10, max_wait=0.05, retry_after=7)
        await a.acquire("x")
        with pytest.raises(APIError) as info:
            await a.acquire("y")
        assert info.value.code == 429 and info.value.headers()["Retry-After"] == "7"
        assert a.stats()["waiting"] == 0 and a.stats()["rejected"] == 1
        a.release()
        assert a.active == 0  # no slot was lost to the timed-out waiter

    run(main())


def test_a_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        a = Admission(1, queue_limit=1, max_wait=5, retry_after=1)
        await a.acquire("x")
        first = asyncio.ensure_future(a.acquire("y"))
        await asyncio.sleep(0.01)
        with pytest.raises(APIError) as info:
            await asyncio.wait_for(a.acquire("z"), 0.5)
        assert info.value.code == 429
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert a.stats()["waiting"] == 0
        a.release()
        assert a.active == 0

    run(main())


def test_a_cancelled_waiter_never_takes_a_slot_with_it() -> None:
    async def main() -> None:
        a = Admission(1, queue_limit=5, max_wait=5, retry_after=1)
        await a.acquire("x")
        gone = asyncio.ensure_future(a.acquire("y"))
        stays = asyncio.ensure_future(a.acquire("z"))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        a.release()
        await asyncio.wait_for(stays, 1)
        assert a.active == 1 and a.waiting == 0
        a.release()
        assert a.active == 0

    run(main())
