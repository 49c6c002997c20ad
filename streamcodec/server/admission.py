"""Admission of the costly part of a stream: fair, bounded queueing before a 429.

A list, a watch-list's initial events and a watch's initial state each hold a pool buffer and an
etcd page while they run; a live watch holds nothing while idle.  So only the costly part takes a
slot here, and it gives the slot back as soon as it is over (a watch-list: at its initial-events-end
bookmark), so a thousand live watches never crowd out a list.

When every slot is taken, requests wait in a bounded queue, served round-robin across clients
(the peer address; a user once authentication exists), so one client re-listing many times cannot
starve another: Kubernetes' API Priority and Fairness does the same with its fair queues.  A
request that waited ``max_wait`` seconds, or that finds the queue full, gets 429 with Retry-After.
This absorbs the seed's flood: informers re-listing all at once after an outage wait their turn in
bounded memory, and all sync in the end.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Deque, Dict

from .status import APIError

__all__ = ["Admission"]

class Admission:
    """``capacity`` concurrent costly streams; at most ``queue_limit`` waiting, each at most ``max_wait`` s."""

    def __init__(self, capacity: int, *, queue_limit: int, max_wait: float, retry_after: int) -> None:
        if capacity < 1 or queue_limit < 0 or max_wait < 0:
            raise ValueError("admission needs capacity >= 1, queue_limit >= 0 and max_wait >= 0")
        self.capacity = capacity
        self.queue_limit = queue_limit
        self.max_wait = max_wait
        self.retry_after = retry_after
        self.active = 0
        self.waiting = 0
        self.admitted = 0
        self.rejected = 0
        self._queues: Dict[str, Deque["asyncio.Future[None]"]] = {}
        self._turns: Deque[str] = collections.deque()  # clients with waiters, in round-robin order

    def _refuse(self, why: str) -> APIError:
        self.rejected += 1
        return APIError(429, "TooManyRequests", f"{why}; retry later", retry_after=self.retry_after)

    async def acquire(self, client: str) -> None:
        """Take a slot for ``client``, waiting fairly; 429 when the wait or the queue is too long."""
        if self.active < self.capacity and not self.waiting:
            self.active += 1
            self.admitted += 1
            return
        if self.waiting >= self.queue_limit:
            raise self._refuse(f"the server is busy: {self.active} streams running and {self.waiting} waiting")
        future: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = collections.deque()
            self._turns.append(client)
        queue.append(future)
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait):
                await future
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():
                self.release()  # granted in the same instant: hand the slot on
            else:
                future.cancel()
                self._forget(client, future)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._refuse(f"waited {self.max_wait:g} s for one of {self.capacity} stream slots") from None
        self.admitted += 1

    def _forget(self, client: str, future: "asyncio.Future[None]") -> None:
        queue = self._queues.get(client)
        if queue is not None and future in queue:
            queue.remove(future)
            self.waiting -= 1
            if not queue:
                del self._queues[client]
                self._turns.remove(client)

    def release(self) -> None:
        """Give a slot back: to the next client in turn, else to the free count."""
        while self._turns:
            client = self._turns.popleft()
            queue = self._queues[client]
            future = queue.popleft()
            self.waiting -= 1
            if queue:
                self._turns.append(client)  # its next waiter goes to the back of the round
            else:
                del self._queues[client]
            if not future.done():
                future.set_result(None)  # the slot passes on: active stays the same
                return
        self.active -= 1

    def stats(self) -> Dict[str, int]:
        return {"active": self.active, "waiting": self.waiting, "admitted": self.admitted, "rejected": self.rejected,
                "capacity": self.capacity}


def client_of(scope: Dict[str, object]) -> str:
    """The fairness key of a request: its authenticated user (``scope["user"]``, set by
    :mod:`streamcodec.server.security`), else its peer's address."""
    user = scope.get("user")
    if getattr(user, "authenticated", False):
        return "user:" + str(getattr(user, "name", ""))
    client = scope.get("client")
    if isinstance(client, (tuple, list)) and client:
        return str(client[0])
    return ""

