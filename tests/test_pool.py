"""BufferPool and PoolBuffer: the budget is never exceeded, waits are fair,
exported buffers are never recycled."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from streamcodec import BufferExported, BufferPool, PoolBuffer, PoolExhausted


def test_budget_split_and_exhaustion() -> None:
    pool = BufferPool(budget_bytes=10_000, buffer_size=4096)
    assert pool.max_buffers == 2 and pool.budget == 8192
    a, b = pool.acquire(), pool.acquire()
    assert a is not b and a.capacity == b.capacity == 4096
    with pytest.raises(PoolExhausted):
        pool.acquire()
    s = pool.stats()
    assert (s.in_use, s.high_water, s.allocated) == (8192, 8192, 8192)
    a.release()
    c = pool.acquire()
    assert c is a  # reused, not a new allocation
    assert pool.stats().allocated == 8192


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        BufferPool(budget_bytes=100, buffer_size=200)
    with pytest.raises(ValueError):
        BufferPool(budget_bytes=100, buffer_size=0)
    with pytest.raises(ValueError):
        PoolBuffer(0)


def test_release_clears_and_foreign_buffer_refused() -> None:
    pool = BufferPool(4096, 4096)
    buf = pool.acquire()
    buf.data[0:3] = b"abc"
    buf.length = 3
    assert buf.getvalue() == b"abc"
    buf.release()
    assert pool.acquire().length == 0
    with pytest.raises(ValueError):
        BufferPool(4096, 4096).release(PoolBuffer(4096))


def test_exported_buffer_cannot_be_cleared_or_released() -> None:
    pool = BufferPool(4096, 4096)
    buf = pool.acquire()
    buf.data[0:5] = b"hello"
    buf.length = 5
    view = buf.view()
    assert buf.is_exported()
    with pytest.raises(BufferExported):
        buf.clear()
    with pytest.raises(BufferExported):
        pool.release(buf)
    # Nothing changed while refused: the holder of the view still sees its bytes.
    assert bytes(view) == b"hello" and buf.length == 5
    assert pool.stats().in_use == 4096
    view.release()
    assert not buf.is_exported()
    assert bytes(buf.data[:5]) == b"hello"  # the export check left the bytes alone
    pool.release(buf)
    assert pool.stats().in_use == 0


def test_export_through_a_raw_memoryview_of_data_is_seen() -> None:
    buf = PoolBuffer(16)
    mv = memoryview(buf.data)[4:8]
    with pytest.raises(BufferExported):
        buf.clear()
    del mv
    buf.clear()
    assert len(buf.data) == 16  # never resized


async def test_acquire_async_waits_then_gets_released_buffer() -> None:
    pool = BufferPool(4096, 4096)
    held = pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire_async())
    await asyncio.sleep(0)
    assert not waiter.done() and pool.stats().waiting == 1
    held.release()
    got = await asyncio.wait_for(waiter, 1)
    assert got is held
    s = pool.stats()
    assert s.waits == 1 and s.in_use == 4096 and s.waiting == 0


async def test_waiters_served_in_order_and_non_blocking_acquire_does_not_jump_queue() -> None:
    pool = BufferPool(4096, 4096)
    held = pool.acquire()
    order = []

    async def take(i: int) -> None:
        buf = await pool.acquire_async()
        order.append(i)
        await asyncio.sleep(0)
        buf.release()

    tasks = [asyncio.ensure_future(take(i)) for i in range(3)]
    await asyncio.sleep(0)
    held.release()
    with pytest.raises(PoolExhausted):
        pool.acquire()  # the buffer went straight to the first waiter
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert order == [0, 1, 2]
    assert pool.stats().in_use == 0


async def test_timeout_and_cancel_leave_no_waiter_and_no_leak() -> None:
    pool = BufferPool(4096, 4096)
    held = pool.acquire()
    with pytest.raises(asyncio.TimeoutError):
        await pool.acquire_async(timeout=0.01)
    t = asyncio.ensure_future(pool.acquire_async())
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert pool.stats().waiting == 0
    held.release()
    assert pool.stats().in_use == 0
    assert pool.acquire() is held


async def test_many_concurrent_users_never_exceed_budget() -> None:
    pool = BufferPool(3 * 1024, 1024)
    peak = 0

    async def user(i: int) -> None:
        nonlocal peak
        for _ in range(20):
            buf = await pool.acquire_async(timeout=5)
            peak = max(peak, pool.stats().in_use)
            await asyncio.sleep(0)
            buf.release()

    await asyncio.wait_for(asyncio.gather(*(user(i) for i in range(10))), 10)
    s = pool.stats()
    assert peak <= s.budget and s.high_water == s.budget and s.in_use == 0
    assert s.allocated == s.budget and s.waits > 0


def test_double_release_is_refused_and_never_hands_one_buffer_out_twice() -> None:
    pool = BufferPool(8192, 4096)
    a = pool.acquire()
    a.release()
    with pytest.raises(ValueError):
        a.release()
    x, y = pool.acquire(), pool.acquire()
    assert x is not y
    assert pool.stats().in_use == 8192


async def test_buffer_handed_to_a_waiter_stays_acquired() -> None:
    pool = BufferPool(4096, 4096)
    a = pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire_async())
    await asyncio.sleep(0)
    a.release()
    b = await asyncio.wait_for(waiter, 1)
    assert b is a
    b.release()  # one release for each acquire: accepted
    with pytest.raises(ValueError):
        b.release()


# -- resident memory: only written pages count (Linux) ------------------------------------------------------------

_RSS_SCRIPT = r"""
import json, sys
from streamcodec import BufferPool
from streamcodec._pages import PAGES_DROPPABLE

def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS:"))

MiB = 1 << 20
pool = BufferPool(budget_bytes=64 * 4 * MiB, buffer_size=4 * MiB)
before = rss()
bufs = [pool.acquire() for _ in range(64)]
fresh = rss() - before
for buf in bufs:
    buf.data[: MiB] = b"x" * MiB  # a stream of 1 MiB frames flushed promptly writes about this much
    buf.length = MiB
written = rss() - before
zero_after = all(b.data[MiB:].count(0) == 3 * MiB for b in bufs[:4])
for buf in bufs:
    buf.release()
released = rss() - before
print(json.dumps({"droppable": PAGES_DROPPABLE, "fresh": fresh, "written": written, "released": released,
                  "zero_after": zero_after}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and madvise are Linux's")
def test_pool_buffers_are_resident_only_where_written_and_idle_ones_give_memory_back() -> None:
    # A fresh process: this one's allocator state would blur a few MiB.
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout)
    MiB = 1 << 20
    assert r["droppable"], "Linux + CPython must leave unwritten buffer pages unmapped"
    # 64 buffers of 4 MiB = 256 MiB of budget: untouched, they cost almost nothing ...
    assert r["fresh"] < 16 * MiB, r
    # ... written for 1 MiB each they cost about that (bytearray(n) would make all 256 MiB resident) ...
    assert 48 * MiB < r["written"] < 96 * MiB, r
    # ... and back in the pool they give it back.
    assert r["released"] < 16 * MiB, r
    assert r["zero_after"], "a new buffer's unwritten bytes must read as zeros, as bytearray(n)'s do"



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")
async def test_pages_past_every_holders_extent_are_not_dropped_again() -> None:
    import mmap

    from streamcodec._pages import PAGES_DROPPABLE

    assert PAGES_DROPPABLE
    page, size = mmap.PAGESIZE, 64 * mmap.PAGESIZE
    pool = BufferPool(size, size)

    def dropped(buf: PoolBuffer) -> bool:  # an interior page past the extents reads as zeros again
        return buf.data[size // 2 : size // 2 + page].count(0) == page

    a = pool.acquire()
    a.data[:] = b"x" * size
    pool.release(a, extent=4 * page)  # its holder says it wrote 4 pages: the rest keeps its bytes
    assert a.data[page * 2 : page * 3].count(0) == page and not dropped(a)
    b = pool.acquire()
    b.data[:] = b"x" * size
    waiter = asyncio.ensure_future(pool.acquire_async())
    await asyncio.sleep(0)
    pool.release(b)  # any extent: handed straight to the waiter, nothing dropped yet
    c = await asyncio.wait_for(waiter, 1)
    assert c is b and not dropped(c)
    pool.release(c, extent=page)  # the last holder wrote little, the first wrote everything: all dropped
    assert dropped(b)
