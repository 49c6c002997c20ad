"""Type-checked (by tests/test_typing.py with mypy), not run: the public API as a user writes it."""

from __future__ import annotations

from typing import List

from streamcodec import (
    BufferPool,
    CBOREncoder,
    DecodeError,
    Event,
    JSONDecoder,
    JSONEncoder,
    MsgpackEncoder,
    PoolBuffer,
    ProtoEncoder,
)
from streamcodec.protocol import Decoder, Encoder
from streamcodec.writer import FrameWriter

encoders: List[Encoder] = [JSONEncoder(), CBOREncoder(), MsgpackEncoder(), ProtoEncoder(max_frame_size=1 << 20)]
frame: bytes = encoders[0].encode({"a": 1})
buf: PoolBuffer = BufferPool(1 << 20, 1 << 16).acquire()
n: int = encoders[1].encode_into({"a": [1, 2]}, buf)
dec: Decoder = JSONDecoder()
dec.feed(frame)
events: List[Event] = list(dec)
try:
    dec.close()
except DecodeError as e:
    offset: int = e.offset


async def send(view: memoryview) -> None:
    pass


async def stream(pool: BufferPool) -> None:
    async with FrameWriter(encoders[2], pool, send) as w:
        await w.event("ADDED", {"x": 1})
        await w.raw_event("DELETED", frame)
