"""FrameWriter: frames of one stream through one pool buffer, sent in order,
within the pool's budget."""

from __future__ import annotations

import asyncio
import json
from typing import Any, List

import pytest

from streamcodec import BufferPool, FrameTooLarge, JSONEncoder, MsgpackEncoder
from streamcodec.writer import FrameWriter

DUMPS = dict(separators=(",", ":"), ensure_ascii=False)


class Sink:
    def __init__(self, keep_views: bool = False) -> None:
        self.chunks: List[bytes] = []
        self.kept: List[memoryview] = []
        self.keep_views = keep_views

    async def __call__(self, view: memoryview) -> None:
        if self.keep_views:
            # the previous bytes, still held, were never overwritten
            assert all(bytes(v) == self.chunks[-1] for v in self.kept)
        self.chunks.append(bytes(view))
        if self.keep_views:
            # Like a transport with one write pending: it holds on to the
            # newest bytes and lets go of the previous ones once they are out.
            for v in self.kept:
                v.release()
            self.kept = [view[:]]

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def items(n: int, size: int = 100) -> List[Any]:
    return [{"metadata": {"name": f"o{i}"}, "data": "x" * size} for i in range(n)]


async def test_list_body_equals_stdlib_and_is_sent_in_buffer_sized_chunks() -> None:
    pool = BufferPool(4096 * 2, 4096)
    sink = Sink()
    objs = items(200)
    async with FrameWriter(JSONEncoder(max_frame_size=4096), pool, sink) as w:
        await w.list_start(kind="SecretList", api_version="v1", metadata={"resourceVersion": "7"})
        for o in objs:
            await w.list_item(o)
        await w.list_end()
    expected = {"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": objs}
    assert sink.data == json.dumps(expected, **DUMPS).encode()
    assert len(sink.chunks) > 5 and all(len(c) <= 4096 for c in sink.chunks)
    s = pool.stats()
    assert s.in_use == 0 and s.high_water == 4096  # one buffer for the whole stream


async def test_events_and_raw_events_in_order() -> None:
    pool = BufferPool(1 << 16, 1 << 16)
    sink = Sink()
    enc = JSONEncoder()
    async with FrameWriter(enc, pool, sink) as w:
        await w.event("ADDED", {"a": 1})
        await w.raw_event("MODIFIED", enc.encode({"a": 2}))
        await w.flush()
        assert sink.data.count(b"\n") == 2  # flush sends at once
        await w.event("DELETED", {"a": 2})
    lines = [json.loads(x) for x in sink.data.splitlines()]
    assert [(e["type"], e["object"]["a"]) for e in lines] == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 2)]


async def test_frame_larger_than_a_buffer_is_frame_too_large() -> None:
    pool = BufferPool(1024, 1024)
    async with FrameWriter(JSONEncoder(), pool, Sink()) as w:
        with pytest.raises(FrameTooLarge):
            await w.event("ADDED", {"data": "x" * 2000})
        await w.event("ADDED", {"ok": True})  # the writer is still usable
    assert pool.stats().in_use == 0


async def test_announced_count_is_enforced() -> None:
    pool = BufferPool(1 << 16, 1 << 16)
    async with FrameWriter(MsgpackEncoder(), pool, Sink()) as w:
        await w.list_start(kind="L", api_version="v1", metadata={}, count=2)
        await w.list_item({"a": 1})
        with pytest.raises(ValueError):
            await w.list_end()
        await w.list_item({"a": 2})
        with pytest.raises(ValueError):
            await w.list_item({"a": 3})
        await w.list_end()


async def test_a_kept_view_is_never_overwritten_and_its_buffer_comes_back_later() -> None:
    pool = BufferPool(4096 * 2, 4096)
    sink = Sink(keep_views=True)
    async with FrameWriter(JSONEncoder(max_frame_size=4096), pool, sink, acquire_timeout=5) as w:
        for o in items(60):
            await w.event("ADDED", o)
    # The bytes the sink still references were never overwritten.
    assert len(sink.chunks) > 3 and bytes(sink.kept[0]) == sink.chunks[-1]
    s = pool.stats()
    assert s.in_use <= s.budget and s.retired == 4096 and s.in_use == 4096
    for v in sink.kept:
        v.release()
    sink.kept.clear()
    # The pool reclaims retired buffers on its next acquire.
    bufs = [pool.acquire() for _ in range(pool.max_buffers)]
    assert pool.stats().retired == 0
    for b in bufs:
        b.release()
    assert pool.stats().in_use == 0


async def test_second_stream_waits_for_the_budget() -> None:
    pool = BufferPool(4096, 4096)
    first = FrameWriter(JSONEncoder(max_frame_size=4096), pool, Sink())
    await first.open()
    second = FrameWriter(JSONEncoder(max_frame_size=4096), pool, Sink(), acquire_timeout=0.05)
    with pytest.raises(asyncio.TimeoutError):
        await second.open()
    opening = asyncio.ensure_future(FrameWriter(JSONEncoder(), pool, Sink()).open())
    await asyncio.sleep(0)
    assert not opening.done()
    first.close()
    await asyncio.wait_for(opening, 1)
    assert pool.stats().waits == 2


async def test_release_idle_gives_the_buffer_back_and_the_next_frame_waits_for_one() -> None:
    pool = BufferPool(4096, 4096)  # one buffer for two streams
    quiet, busy = Sink(), Sink()
    first = FrameWriter(JSONEncoder(), pool, quiet)
    await first.open()
    await first.event("ADDED", {"n": 1})
    first.release_idle()  # a frame is pending: kept
    assert pool.stats().in_use == 4096
    await first.flush()
    first.release_idle()
    assert pool.stats().in_use == 0  # idle and open, holding nothing
    second = FrameWriter(JSONEncoder(), pool, busy)
    await second.open()  # takes the only buffer
    pending = asyncio.ensure_future(first.event("MODIFIED", {"n": 2}))
    await asyncio.sleep(0.01)
    assert not pending.done()  # waits for a buffer instead of growing the pool
    await second.event("ADDED", {"m": 1})
    await second.flush()
    second.close()
    await asyncio.wait_for(pending, 1)
    await first.flush()
    first.close()
    assert [json.loads(line)["object"] for line in quiet.data.splitlines()] == [{"n": 1}, {"n": 2}]
    assert pool.stats().in_use == 0 and pool.stats().high_water == 4096
    with pytest.raises(RuntimeError):
        await first.event("ADDED", {"n": 3})  # closed, not idle


async def test_a_live_batch_that_outgrows_its_buffer_goes_on_in_a_new_one() -> None:
    pool = BufferPool(2 * 4096, 4096)
    sink = Sink()
    writer = FrameWriter(JSONEncoder(), pool, sink, flush_bytes=4096)
    await writer.open()
    writer.go_live()
    first, second = {"data": "a" * 2500}, {"data": "b" * 2500}  # together more than one buffer
    await writer.event("ADDED", first)
    await writer.event("MODIFIED", second)  # the live flush gives its buffer back; the frame takes a new one
    await writer.flush()
    writer.close()
    assert [json.loads(line)["object"] for line in sink.data.splitlines()] == [first, second]
    assert pool.stats().in_use == 0


async def test_a_large_encoded_frame_goes_out_as_it_is_after_what_is_pending() -> None:
    pool = BufferPool(4 * 65536, 65536)
    encoder = JSONEncoder()
    small = encoder.encode_event("ADDED", {"n": 1})
    large = encoder.encode_event("ADDED", {"data": "x" * 40000})
    views: List[Any] = []

    async def send(view: memoryview) -> None:
        views.append((view.obj, bytes(view)))

    writer = FrameWriter(encoder, pool, send, flush_bytes=16384)
    await writer.open()
    await writer.write_bytes(small)  # small: batched in the buffer
    await writer.write_bytes(large)  # large: the pending small one first, then the frame itself, not a copy
    await writer.write_bytes(small)
    await writer.flush()
    writer.close()
    assert [data for _, data in views] == [small, large, small]
    assert views[1][0] is large and views[0][0] is not small
    assert writer.frames == 3 and writer.bytes_sent == 2 * len(small) + len(large)
    assert [json.loads(line)["object"] for line in b"".join(d for _, d in views).splitlines()][1] == {"data": "x" * 40000}
