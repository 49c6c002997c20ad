"""The least a server process can hold per idle streaming connection, for bench_watches' floors.

    python -m benchmarks.connection_floor asgi PORT     # uvicorn (h11) + the least ASGI streaming app
    python -m benchmarks.connection_floor asyncio PORT  # a bare asyncio Protocol, no HTTP server at all

Each answers every request with a chunked 200 and one chunk, then holds the connection open.  The ASGI
app then waits on ``receive()`` for ``http.disconnect``, as any ASGI streaming response must to notice a
client that goes; the bare protocol keeps only its transport.  Loopback only.
"""

from __future__ import annotations

import asyncio
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


class _Bare(asyncio.Protocol):
    __slots__ = ("transport", "seen")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.seen = b""

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if b"\r\n\r\n" in self.seen:
            self.seen = b""
            self.transport.write(_HEAD)


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
