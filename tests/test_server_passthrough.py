"""The server's hot path, without etcd or HTTP: JSON pass-through spliced in the
pool buffer, and how bodies reach ASGI.

Every emitted line is checked with the stdlib json module."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List

import pytest

from streamcodec import BufferPool, FrameTooLarge, JSONEncoder
from streamcodec.writer import FrameWriter

from streamcodec.server.objects import encode_for_storage, splice_resource_version
from streamcodec.server import streams
from streamcodec.server.objects import DEFAULT_RESOURCES
from streamcodec.server.items import ItemWriter, _find_key
from streamcodec.server.streams import SEND_PIECE_BYTES, StreamResponse


def stored(obj: Dict[str, Any]) -> bytes:
    return encode_for_storage(obj)


async def events_through_writer(values: List[Any], revision: int, buffer_size: int = 1 << 16) -> List[bytes]:
    """Write each stored value as an ADDED event (pass-through on); the sent chunks."""
    chunks: List[bytes] = []

    async def send(view: memoryview) -> None:
        chunks.append(bytes(view))

    pool = BufferPool(2 * buffer_size, buffer_size)
    encoder = JSONEncoder(max_frame_size=buffer_size)
    items = ItemWriter(encoder, "json", DEFAULT_RESOURCES["secrets"], True)
    async with FrameWriter(encoder, pool, send, flush_bytes=buffer_size) as writer:
        for value in values:
            await items.event(writer, "ADDED", value, revision)
    assert pool.stats().in_use == 0
    return chunks


def lines(chunks: List[bytes]) -> List[Dict[str, Any]]:
    body = b"".join(chunks)
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


SECRET = {"metadata": {"name": "s", "namespace": "default"}, "kind": "Secret", "apiVersion": "v1", "data": {"k": "dg=="}}


async def test_spliced_event_is_byte_identical_to_the_copying_splice() -> None:
    value = stored(SECRET)
    page = b"\x00" * 7 + value + b"\xff" * 5  # etcd values arrive as slices of a page
    for given in (value, memoryview(page)[7 : 7 + len(value)]):
        [chunk] = await events_through_writer([given], 42)
        assert chunk == JSONEncoder().encode_raw_event("ADDED", splice_resource_version(value, 42))
        [event] = lines([chunk])
        assert event["type"] == "ADDED"
        assert list(event["object"]["metadata"].items())[0] == ("resourceVersion", "42")
        assert event["object"]["data"] == SECRET["data"]


async def test_empty_metadata_gets_no_trailing_comma() -> None:
    [event] = lines(await events_through_writer([b'{"metadata":{},"kind":"Secret"}'], 7))
    assert event["object"] == {"metadata": {"resourceVersion": "7"}, "kind": "Secret"}


@pytest.mark.parametrize(
    "value, expected_data",
    [
        # a foreign writer in this layout left a stale version in metadata: replaced, never duplicated
        (b'{"metadata":{"name":"s","resourceVersion":"1"},"data":{"k":"dg=="}}', {"k": "dg=="}),
        # the key elsewhere (nested): still correct through the decode path
        (b'{"metadata":{"name":"s"},"data":{"resourceVersion":"x"}}', {"resourceVersion": "x"}),
        # a newline makes the encoder re-encode; the result is still one line
        (b'{"metadata":{"name":"s"},\n "data":{"k":"dg=="}}', {"k": "dg=="}),
    ],
)
async def test_values_the_splice_cannot_take_are_still_right(value: bytes, expected_data: Any) -> None:
    chunks = await events_through_writer([value], 9)
    [event] = lines(chunks)
    assert event["object"]["metadata"] == {"name": "s", "resourceVersion": "9"}
    assert event["object"]["data"] == expected_data
    assert b"".join(chunks).count(b'"resourceVersion"') == 1 + (b'"data":{"resourceVersion"' in value)


async def test_a_frame_that_fits_only_without_the_version_moves_to_the_next_buffer() -> None:
    value = stored(SECRET)
    unspliced = len(JSONEncoder().encode_raw_event("ADDED", value))
    spliced = len(JSONEncoder().encode_raw_event("ADDED", splice_resource_version(value, 5)))
    # The second frame fits the room left before the splice but not after it.
    buffer_size = spliced + unspliced + (spliced - unspliced) // 2
    chunks = await events_through_writer([value, value], 5, buffer_size=buffer_size)
    assert [len(c) for c in chunks] == [spliced, spliced]  # flushed, then written whole into the emptied buffer
    assert [e["object"]["metadata"]["resourceVersion"] for e in lines(chunks)] == ["5", "5"]


async def test_a_frame_too_large_only_with_the_version_is_refused_cleanly() -> None:
    value = stored(SECRET)
    unspliced = len(JSONEncoder().encode_raw_event("ADDED", value))
    with pytest.raises(FrameTooLarge):
        await events_through_writer([value], 5, buffer_size=unspliced + 3)


async def test_other_asgi_servers_get_bytes_in_bounded_pieces() -> None:
    """Only uvicorn's protocols, which copy the body anyway, may be handed views."""
    text = "x" * (SEND_PIECE_BYTES * 2 - 10)
    raw = b'{"v":"' + text.encode() + b'"}'
    frame = len(JSONEncoder().encode_raw_event("ADDED", raw))  # over half a buffer: one flush per event
    pieces = 2 * -(-frame // SEND_PIECE_BYTES) + 1  # and the final empty body

    async def producer(writer: FrameWriter) -> None:
        for _ in range(2):
            await writer.raw_event("ADDED", raw)

    messages: List[Dict[str, Any]] = []

    async def send(message: Dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body = message["body"]
            assert type(body) is bytes and len(body) <= SEND_PIECE_BYTES
            message = dict(message, body=body)
        messages.append(message)

    async def receive() -> Dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    pool = BufferPool(8 * SEND_PIECE_BYTES, 4 * SEND_PIECE_BYTES)
    response = StreamResponse(producer, encoder=JSONEncoder(max_frame_size=pool.buffer_size), pool=pool,
                              content_type="application/json")
    await response({"type": "http"}, receive, send)
    assert messages[0]["type"] == "http.response.start" and response.outcome == "complete"
    bodies = [m["body"] for m in messages[1:]]
    assert len(bodies) == pieces and bodies[-1] == b""
    assert [json.loads(line)["object"]["v"] for line in b"".join(bodies).split(b"\n")[:-1]] == [text] * 2
    assert pool.stats().in_use == 0


@pytest.mark.parametrize("quotes_before", [0, 3, 200])
@pytest.mark.parametrize("key_at", [None, 70_000, 150_000 - 17, 150_000 - 10])
def test_key_search_over_large_values_agrees_with_find(quotes_before: int, key_at: Any) -> None:
    """The quote walk for large objects finds exactly what a plain search finds."""
    data = bytearray(b"A" * 150_000)
    for i in range(quotes_before):
        data[1000 + i * 300] = ord('"')
    if key_at is not None:
        data[key_at : key_at + 17] = b'"resourceVersion"'
    end = 150_000 - 5  # a key running past ``end`` does not count
    expected = data.find(b'"resourceVersion"', 10, end)
    assert _find_key(data, 10, end) == expected
    assert (expected != -1) == (key_at is not None and key_at + 17 <= end)


async def test_a_producer_that_swallows_cancellation_is_ended_by_closing_its_storage_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disconnect must end the response in bounded time even if cancellation is lost below the producer."""
    monkeypatch.setattr(streams, "CANCEL_GRACE_SECONDS", 0.2)
    storage_closed = asyncio.Event()
    sent_first = asyncio.Event()
    calls: List[str] = []

    async def producer(writer: FrameWriter) -> None:
        await writer.raw_event("ADDED", b'{"v":1}')
        await writer.flush()
        sent_first.set()
        while not storage_closed.is_set():  # like a storage read that turns cancellation into a retry
            try:
                await storage_closed.wait()
            except asyncio.CancelledError:
                calls.append("cancel swallowed")

    async def cleanup() -> None:
        calls.append("cleanup")
        storage_closed.set()

    async def send(message: Dict[str, Any]) -> None:
        pass

    async def receive() -> Dict[str, Any]:
        await sent_first.wait()
        return {"type": "http.disconnect"}

    pool = BufferPool(2 * 65536, 65536)
    response = StreamResponse(producer, encoder=JSONEncoder(), pool=pool, content_type="application/json",
                              cleanup=cleanup, on_close=lambda: calls.append("closed"))
    await asyncio.wait_for(response({"type": "http"}, receive, send), 5)
    assert response.outcome == "disconnected"
    assert calls[0] == "cancel swallowed" and calls[-1] == "closed"
    assert calls.count("cleanup") == 1  # closed underneath the producer once, not again at the end
    assert pool.stats().in_use == 0


async def test_a_send_is_timed_only_while_it_waits() -> None:
    """A send that completes at once arms no timer; one that waits is resumed, or cut at its stall limit."""
    loop = asyncio.get_running_loop()
    gate: "asyncio.Future[None]" = loop.create_future()
    seen: List[str] = []

    async def send(message: Dict[str, Any]) -> None:
        mode = message["mode"]
        if mode == "at-once":
            timers.append(len(loop._scheduled))  # type: ignore[attr-defined]  # timers while the send runs
        elif mode == "waits":
            await gate  # resumed: sees what the loop sends back
            seen.append("resumed")
        elif mode == "fails-later":
            await asyncio.sleep(0)
            raise ConnectionResetError("peer reset")
        elif mode == "never":
            try:
                await loop.create_future()
            finally:
                seen.append("cancelled inside the send")

    timers: List[int] = []
    client = streams._ClientSend(send, status=200, content_type="application/json", stall_timeout=0.2,
                                 live_stall_timeout=0.2, contended=None, contended_stall_timeout=None, piece_bytes=1024)
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    await client._timed({"mode": "at-once"})
    assert timers == [before]
    loop.call_later(0.01, gate.set_result, None)
    await client._timed({"mode": "waits"})
    with pytest.raises(ConnectionResetError):
        await client._timed({"mode": "fails-later"})
    t0 = loop.time()
    with pytest.raises(streams.ClientStalled):
        await client._timed({"mode": "never"})
    assert 0.15 < loop.time() - t0 < 1.0
    assert seen == ["resumed", "cancelled inside the send"]


async def test_a_receive_that_says_disconnect_once_the_response_is_complete_cancels_nothing() -> None:
    """Servers answer receive() with http.disconnect once a response is complete (uvicorn does): that late
    answer must not cancel the task that sent the response, nor count it as a disconnect."""
    done = asyncio.Event()

    async def send(message: Dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()
            await asyncio.sleep(0)  # the server flushes: receive()'s waiter runs meanwhile

    async def receive() -> Dict[str, Any]:
        await done.wait()
        return {"type": "http.disconnect"}

    async def producer(writer: FrameWriter) -> None:
        await writer.raw_event("ADDED", b'{"v":1}')

    async def cleanup() -> None:
        await asyncio.sleep(0)

    task = asyncio.current_task()
    assert task is not None
    for _ in range(20):
        response = StreamResponse(producer, cleanup=cleanup, encoder=JSONEncoder(), pool=BufferPool(1 << 16, 1 << 14),
                                  content_type="application/json")
        await response({"type": "http"}, receive, send)
        assert response.outcome == "complete" and task.cancelling() == 0
        await asyncio.sleep(0.005)  # a leaked cancellation would end this test here
        done.clear()


@pytest.mark.parametrize("query", [{}, {"labelSelector": "app=web"}, {"fieldSelector": "metadata.name=other"}])
async def test_a_delete_whose_last_version_etcd_no_longer_had_reaches_every_watcher(query: Dict[str, str]) -> None:
    """A DELETED with no previous value (compacted away) cannot be told to match a selector or not: every
    watcher gets it as a tombstone (a selecting one used to drop it, and keep the object for good)."""
    from streamcodec.server.bodies import WatchBody
    from streamcodec.server.handlers import WatchRequest
    from streamcodec.storage.types import KeyValue, WatchEvent

    resource = DEFAULT_RESOURCES["secrets"]
    request = WatchRequest.parse({"watch": "1", **query}, 1800, resource.field_selectors)
    encoder = JSONEncoder()
    body = WatchBody(None, b"/registry/secrets/default/", request, resource, ItemWriter(encoder, "json", resource, True))  # type: ignore[arg-type]
    sent: List[bytes] = []

    async def collect(view: memoryview) -> None:
        sent.append(bytes(view))

    async with FrameWriter(encoder, BufferPool(1 << 20, 1 << 16), collect) as writer:
        tombstone = KeyValue(b"/registry/secrets/default/gone", b"", 0, 0, 0)
        await body.write_event(writer, WatchEvent("DELETED", tombstone, None, 77))
    (event,) = [json.loads(line) for line in b"".join(sent).splitlines()]
    assert event["type"] == "DELETED"
    assert event["object"]["metadata"] == {"name": "gone", "resourceVersion": "77"}
