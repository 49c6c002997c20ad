"""A small asyncio HTTP/1.1 client: one GET per connection, the body read as it arrives.

Enough for an informer (lists and long watches against a Kubernetes API server) and no more: no
keep-alive, no redirects, no compression (``Accept-Encoding: identity``), TLS through :mod:`ssl`.
The body comes out as the chunks the network delivers (chunked transfer coding undone), so a caller
never holds more than one chunk it has not consumed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator, Awaitable, Dict, Mapping, Optional, TypeVar
from urllib.parse import urlsplit

__all__ = ["HTTPResponse", "ConnectionFailed", "Endpoint", "within", "DEFAULT_READ_CHUNK", "MAX_HEADER_BYTES"]

T = TypeVar("T")

#: Most bytes asked of the socket at a time (and the stream reader's buffer limit, which buffers up to
#: twice this): with 1 MiB, syncing 400 x 1 MiB Secrets in protobuf peaked ~20 MiB above the store,
#: with 256 KiB ~5 MiB, at no measurable cost in time.
DEFAULT_READ_CHUNK = 256 * 1024
#: A response head larger than this is refused: a server's headers are never that big.
MAX_HEADER_BYTES = 64 * 1024


async def within(awaitable: Awaitable[T], timeout: Optional[float]) -> T:
    """``await awaitable``, or TimeoutError after ``timeout`` seconds (None: no limit).

    Not ``asyncio.wait_for``: before Python 3.12 it returns the result (or raises the error) of an
    awaitable that completed just as the caller was cancelled, and so loses the cancellation -- a
    reflector whose connections fail fast then retried for ever instead of stopping.  A scope, not a
    Task, so also usable between an async generator's yields.
    """
    async with asyncio.timeout(timeout):
        return await awaitable


class ConnectionFailed(OSError):
    """The server could not be reached, or the connection broke or stalled mid-response."""


class Endpoint:
    """Where requests go: scheme, host, port and the TLS context (None for plain HTTP).

    ``ca_file``: CA bundle that signs the server's certificate (default: the system's);
    ``cert_file``/``key_file``: a client certificate; ``insecure``: do not verify the server.
    """

    def __init__(self, base_url: str, *, ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                 key_file: Optional[str] = None, insecure: bool = False) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server URL must be http:// or https://HOST[:PORT], not {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path_prefix = parts.path.rstrip("/")
        self.ssl: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                ctx.load_cert_chain(cert_file, key_file)
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl = ctx
        elif cert_file or ca_file:
            raise ValueError("a CA or client certificate needs an https:// server URL")

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    async def get(self, path: str, headers: Mapping[str, str], *, connect_timeout: float) -> "HTTPResponse":
        """Send ``GET path`` and read the response head; the body is left to :meth:`HTTPResponse.chunks`."""
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=DEFAULT_READ_CHUNK)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.host_header}: {exc!r}") from None
        lines = [f"GET {self.path_prefix}{path} HTTP/1.1", f"Host: {self.host_header}", "Accept-Encoding: identity",
                 "Connection: close", "User-Agent: streamcodec-informer"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            async with asyncio.timeout(connect_timeout):
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
            writer.close()
            raise ConnectionFailed(f"no response from {self.host_header}: {exc!r}") from None
        if len(head) > MAX_HEADER_BYTES:
            writer.close()
            raise ConnectionFailed(f"response head of {len(head)} bytes from {self.host_header}")
        return HTTPResponse(reader, writer, head)


class HTTPResponse:
    """``status``, ``reason``, ``headers`` (lower-case names), then the body by :meth:`chunks` or :meth:`read`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self._reader = reader
        self._writer = writer
        text = head.decode("latin-1").split("\r\n")
        status_line = text[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            writer.close()
            raise ConnectionFailed(f"not an HTTP/1.x response: {text[0][:80]!r}")
        self.status = int(status_line[1])
        self.reason = status_line[2] if len(status_line) > 2 else ""
        self.headers: Dict[str, str] = {}
        for line in text[1:]:
            name, sep, val = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = val.strip()
        self.bytes_read = 0

    @property
    def content_type(self) -> str:
        """The media type, without parameters."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    async def chunks(self, timeout: Optional[float] = None) -> AsyncIterator[bytes]:
        """The body as it arrives; ``timeout``: most seconds to wait for any one piece (None: no limit)."""
        reader = self._reader
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await within(reader.readuntil(b"\r\n"), timeout)
                    size = int(size_line.split(b";")[0].strip() or b"x", 16)
                    if size == 0:
                        return
                    left = size
                    while left:
                        piece = await within(reader.read(min(left, DEFAULT_READ_CHUNK)), timeout)
                        if not piece:
                            raise ConnectionFailed("the connection closed inside a chunk")
                        left -= len(piece)
                        self.bytes_read += len(piece)
                        yield piece
                    await within(reader.readexactly(2), timeout)
            elif "content-length" in self.headers:
                left = int(self.headers["content-length"])
                while left > 0:
                    piece = await within(reader.read(min(left, DEFAULT_READ_CHUNK)), timeout)
                    if not piece:
                        raise ConnectionFailed(f"the connection closed {left} bytes before the body's end")
                    left -= len(piece)
                    self.bytes_read += len(piece)
                    yield piece
            else:  # the body ends with the connection
                while True:
                    piece = await within(reader.read(DEFAULT_READ_CHUNK), timeout)
                    if not piece:
                        return
                    self.bytes_read += len(piece)
                    yield piece
        except asyncio.TimeoutError:
            raise ConnectionFailed(f"nothing received for {timeout:g} s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, OSError, ValueError) as exc:
            if isinstance(exc, ConnectionFailed):
                raise
            raise ConnectionFailed(f"the response broke off: {exc!r}") from None

    async def read(self, limit: int, timeout: Optional[float] = None) -> bytes:
        """The body (an error Status), at most ``limit`` bytes of it."""
        out = bytearray()
        try:
            async for piece in self.chunks(timeout):
                out += piece[: limit - len(out)]
                if len(out) >= limit:
                    break
        except ConnectionFailed:
            pass  # what arrived is all an error report gets
        return bytes(out)

    def close(self) -> None:
        self._writer.close()
