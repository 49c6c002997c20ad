"""Connection hygiene for uvicorn: the timeouts and the cap that Go's HTTP server gives kube-apiserver.

uvicorn's h11 protocol closes a kept-alive connection that stays idle between requests, but waits
for ever on a connection that never completes its request headers, or its body, and accepts any
number of connections: 3,000 half-open connections held 3,016 descriptors.  :func:`guarded_h11`
makes a protocol class that also

* closes a connection whose request headers are not complete ``header_timeout`` seconds after the
  connection opened or its previous response ended (kube-apiserver: ``ReadHeaderTimeout`` 32 s);
* closes one whose request body is not complete ``body_timeout`` seconds after its headers;
* refuses connections past ``max_connections`` (closed at once: the client sees a reset and retries);
* on TLS connections, gives the app the ASGI TLS extension with the verified client certificate
  (``scope["extensions"]["tls"]``, :mod:`streamcodec.server.tls`);
* calls back a streaming response when its client goes (:meth:`call_when_lost`), so a response need
  not keep a task waiting on ``receive()`` for ``http.disconnect`` (an idle watch's largest cost);
* hands a live watch's connection over to a protocol of its own (:meth:`hand_over`,
  :mod:`streamcodec.server.parked_watch`): uvicorn forgets it, and the request's task may end
  without completing its response.  Handed-over connections still count towards the cap, and
  uvicorn's graceful shutdown still calls their ``shutdown()`` and waits for them to close.

Pass it as ``uvicorn.Config(app, http=guarded_h11(...))``; :meth:`streamcodec.server.App.uvicorn_options` gives
the one matching the App's config.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional, Tuple, Type

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .tls import tls_extension, with_tls_extension

__all__ = ["guarded_h11", "raise_open_files_limit"]


def guarded_h11(header_timeout: float, body_timeout: float, max_connections: int) -> Type[H11Protocol]:
    """An H11Protocol subclass with these limits (see the module doc)."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: Optional[asyncio.TimerHandle] = None
        _phase = ""
        _on_lost: Optional[Callable[[], None]] = None

        def hand_over(self, protocol: asyncio.BaseProtocol) -> Optional[Tuple[Callable[[asyncio.BaseProtocol], None], bool]]:
            """Give this connection, in the middle of a streaming response, to ``protocol``.

            uvicorn's request cycle takes the response as complete (its task may end; a late
            ``send`` raises), and this protocol forgets the connection; ``protocol`` gets every
            later callback of the transport.  Returns (``forget``, to call with ``protocol`` once the
            connection is lost; whether its writes are paused now), or None when the connection is closing.
            """
            transport, cycle = self.transport, self.cycle
            if transport.is_closing() or cycle is None or cycle.disconnected or not cycle.response_started:
                return None
            cycle.response_complete = True
            paused = self.flow.write_paused
            self._disarm()
            self._unset_keepalive_if_required()
            self._on_lost = None
            # the server's set of connections holds the new protocol instead: it counts towards the
            # cap, and a graceful shutdown calls its shutdown() and waits for it to close
            self.connections.discard(self)
            self.connections.add(protocol)  # type: ignore[arg-type]
            self.flow.resume_reading()  # the new protocol notices the client's going by reading
            transport.set_protocol(protocol)
            self.cycle = None  # type: ignore[assignment]
            return self.connections.discard, paused  # type: ignore[return-value]

        def call_when_lost(self, callback: Optional[Callable[[], None]]) -> None:
            """Call ``callback`` (once) when the connection is lost; None: no longer."""
            self._on_lost = callback

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.logger.warning("refusing a connection: %d are open (the cap)", max_connections)
                transport.abort()
                return
            tls = tls_extension(transport)  # the verified client certificate: scope["extensions"]["tls"]
            if tls is not None:
                self.app = with_tls_extension(self.app, tls)
            self._arm("headers", header_timeout)

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._phase = ""

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.logger.info("closing a connection whose request %s did not arrive in time", self._phase)
                self.transport.abort()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if self._phase == "headers" and state is not h11.IDLE:
                if state is h11.SEND_BODY:
                    self._arm("body", body_timeout)
                else:
                    self._disarm()
            elif self._phase == "body" and state is not h11.SEND_BODY:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm("headers", header_timeout)  # the next request's; uvicorn's keep-alive timer also runs

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            try:
                super().connection_lost(exc)
            finally:
                callback, self._on_lost = self._on_lost, None
                if callback is not None:
                    callback()

    return GuardedH11Protocol


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit); the new soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)

