"""The least a server process can hold per idle streaming connection, for bench_watches' floors.

    python -m benchmarks.connection_floor asgi PORT     # uvicorn (h11) + the least ASGI streaming app
    python -m benchmarks.connection_floor asyncio PORT  # a bare asyncio Protocol, no HTTP server at all

Each answers every request with a chunked 200 and one chunk, then holds the connection open.  The ASGI
app then waits on ``receive()`` for ``http.disconnect``, as any ASGI streaming response must to notice a
client that goes; the bare protocol keeps only its transport.  Loopback only.

The bare protocol is also the floor of a write's fan-out: a POST (any path) whose JSON body holds
``"name": "X"`` is answered at once (``{"metadata":{"resourceVersion":"1"}}``), after one prepared
chunk naming X has been written to every other open connection, in one loop pass: what reaching N
watchers costs at the least in one Python process (a transport write each, no encoding).
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The least ASGI streaming response: headers, one chunk, then wait for the client to go."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{}\n\r\n"


_OPEN: "set[_Bare]" = set()
_NAME = re.compile(rb'"name"\s*:\s*"([^"]*)"')
_CREATED = b'HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 36\r\n\r\n{"metadata":{"resourceVersion":"1"}}'


class _Bare(asyncio.Protocol):
    __slots__ = ("transport", "seen")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.seen = b""

    def connection_lost(self, exc: Any) -> None:
        _OPEN.discard(self)

    def data_received(self, data: bytes) -> None:
        self.seen += data
        head, sep, body = self.seen.partition(b"\r\n\r\n")
        if not sep:
            return
        if not head.startswith(b"POST"):
            self.seen = b""
            _OPEN.add(self)
            self.transport.write(_HEAD)
            return
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if len(body) < (int(length.group(1)) if length else 0):
            return  # the rest of the body is coming
        self.seen = b""
        name = _NAME.search(body)
        if name is not None:
            event = b'{"type":"ADDED","object":{"metadata":{"name":"%s"}}}\n' % name.group(1)
            chunk = b"%x\r\n%s\r\n" % (len(event), event)
            for other in _OPEN:
                other.transport.write(chunk)
        self.transport.write(_CREATED)


async def _bare(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Bare, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: Any) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "asyncio":
        asyncio.run(_bare(port))
    else:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, http="h11", log_level="warning", lifespan="on", backlog=4096)


if __name__ == "__main__":
    main(sys.argv[1:])
