"""Shared scans: concurrent watch-lists and lists of a prefix read it from etcd once, not once each.

Without this, N watch-list informers of a collection are N paged etcd reads: etcd sends the
collection N times and every page is received and parsed N times.  A :class:`ScanHub` runs one
*scan* per prefix and revision -- one task paging the prefix at a pinned revision R, exactly as
:class:`~streamcodec.storage.list_stream.ListStream` does (the first page's linearizable read pins R) --
and every *member* reads every page from it:

* **Bounded ring.**  A scan holds at most ``ring_pages`` pages (each within the store's
  ``page_bytes`` budget) and fetches a page only when its fastest member is within one page of
  needing it.  When it needs room and a member still needs the oldest page, that member gets
  ``detach_after`` seconds to move on (readers of one scan drift apart by more than a ring's
  worth all the time: 15 of 16 client-go informers were detached within 1.3 s of their start
  without it), then it is *detached*: it continues on its own paged read at R from the next key
  it needs.  So the group waits for its slowest member at most ``detach_after`` at a time, and
  the memory of a scan never grows with its members.
* **Circular.**  A member arriving mid-flight joins at the page being read (at page 0 if the ring
  still holds it, so simultaneous arrivals share everything); after the end of the prefix the scan
  wraps round to its start for the members that still need the keys before their join point (a
  watch-list's initial events carry no order guarantee).  An *ordered* member (a LIST, whose items
  are in key order) joins only at a lap's first page, or starts the next scan; it never wraps.
  Every member gets every key at R exactly once; the scan ends when no member needs another page.
* **Consistency.**  A request with no resourceVersion (a consistent read) joins a scan only if R is
  at least etcd's revision when the request arrived: trivially when the scan's first read has not
  been sent yet, else after one quorum read (``current_revision``).  A NotOlderThan X joins if
  R >= X.  Otherwise a new scan starts.
* **Errors.**  Page reads fail over through the store's own retries; a failure (R compacted:
  :class:`~streamcodec.storage.errors.Expired`, etcd gone for good) ends every attached member
  with that error.

Members are used through :meth:`EtcdStore.shared_watch_list
<streamcodec.storage.etcd.EtcdStore.shared_watch_list>`, which puts the live phase (the shared
watch from R + 1) after them.  Only raw keys, values and revisions here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Deque, Dict, List, Optional, Set, Tuple

from ._implementation import wire
from .errors import Unavailable
from .list_stream import read_page
from .types import KeyValue

if TYPE_CHECKING:  # pragma: no cover
    from .etcd import EtcdStore
    from .list_stream import ListStream

__all__ = ["ScanHub", "ScanMember", "RING_PAGES", "DETACH_AFTER"]

log = logging.getLogger("streamcodec.storage")

#: Pages a scan holds at most: its fastest member reads one, the next is being fetched, and the
#: rest are slack before a slower member is detached.  Sixteen client-go informers of 1 MiB Secrets
#: drift ~8 MiB apart as they decode: with 4 pages of ~2 MiB the group kept waiting for its slowest
#: member and detaching it (etcd sent 2.9 x the collection, all synced in 45.9 s); with 8, 1.33 x
#: in 27.4 s; 16 pages bought nothing more (32.5 s) for twice the memory.
RING_PAGES = 8

#: Seconds a full ring waits for a member still reading its oldest page before detaching it: long
#: enough for a reader of a stream that is being read (a client decoding, its socket buffer
#: draining) to move on, short enough that a stalled client delays its group only briefly.
DETACH_AFTER = 1.0

#: Pages the scan fetches ahead of its fastest member (so it rarely waits for etcd).
_PREFETCH = 1


class _Page:
    """One page of a scan: its key-values at R, where it started, and what follows it."""

    __slots__ = ("index", "lap", "start", "kvs", "next_start")

    def __init__(self, index: int, lap: int, start: bytes, kvs: List[KeyValue], next_start: Optional[bytes]) -> None:
        self.index = index
        self.lap = lap
        self.start = start
        self.kvs = kvs
        #: the first key of the next page in this lap; None when this page ends the lap
        self.next_start = next_start


class _Scan:
    """One paged read of a prefix at one revision, and the members reading it."""

    def __init__(self, hub: "ScanHub", prefix: bytes) -> None:
        self.hub = hub
        self.prefix = prefix
        self.range_end: bytes = wire.prefix_range_end(prefix)
        self.revision: Optional[int] = None
        self.pages: Deque[_Page] = collections.deque()
        self.members: Set["ScanMember"] = set()
        self.error: Optional[BaseException] = None
        self.finished = False
        #: True once the pinning (first) read is sent: a consistent reader arriving later needs a gate
        self.first_sent = False
        self.pinned = asyncio.Event()
        self._demand = asyncio.Event()
        self._next_index = 0
        self._next_lap = 0
        self._next_start = prefix
        self._limit = hub.store.initial_page_limit()
        #: pages fetched from etcd (each once, whatever the member count)
        self.pages_fetched = 0
        self.task: Optional["asyncio.Task[None]"] = None

    def joinable(self) -> bool:
        return not self.finished and self.error is None

    def page(self, index: int) -> Optional[_Page]:
        if self.pages and self.pages[0].index <= index <= self.pages[-1].index:
            return self.pages[index - self.pages[0].index]
        return None

    def join_point(self) -> Tuple[int, int, bytes]:
        """Where a new member starts: (page index, lap, first key)."""
        # the oldest page of a full ring goes at the next fetch: joining there would mean a detach at once
        safe = list(self.pages)[1:] if len(self.pages) >= self.hub.ring_pages else list(self.pages)
        for page in reversed(safe):
            if page.start == self.prefix:
                return page.index, page.lap, page.start  # the lap's first page is still held: share it all
        leading = max((m.index for m in self.members), default=self._next_index)
        current = self.page(leading)
        if current is not None:
            return current.index, current.lap, current.start
        return self._next_index, self._next_lap, self._next_start

    def start_point(self) -> Optional[Tuple[int, int, bytes]]:
        """Where a member that must read in key order (a LIST) starts: the lap's first page, if the
        ring still holds it (or it is yet to be fetched); else None -- such a member cannot join."""
        point = self.join_point()
        return point if point[2] == self.prefix else None

    def wake(self) -> None:
        self._demand.set()

    def _wanted(self) -> bool:
        """Whether some member needs the next page, and the fastest is close enough to it."""
        active = [m for m in self.members if not m.done]
        if not active:
            return False
        if self._next_index > max(m.index for m in active) + _PREFETCH:
            return False
        return any(m.needs(self._next_lap, self._next_start) for m in active)

    async def run(self) -> None:
        store = self.hub.store
        try:
            while True:
                while not self._wanted():
                    if not any(not m.done for m in self.members):
                        return
                    self._demand.clear()
                    await self._demand.wait()
                if len(self.pages) >= self.hub.ring_pages:
                    await self._make_room()
                self.first_sent = True
                kvs, read_at, next_start, self._limit = await read_page(
                    store, self._next_start, self.range_end, self._limit, self.revision or 0
                )
                self.pages_fetched += 1
                self.hub.pages_fetched_total += 1
                if self.revision is None:
                    self.revision = read_at
                    self.pinned.set()
                page = _Page(self._next_index, self._next_lap, self._next_start, kvs, next_start)
                del kvs
                self.pages.append(page)
                self._next_index += 1
                if next_start is not None:
                    self._next_start = next_start
                else:  # the end of the prefix: a further lap starts from its beginning
                    self._next_lap += 1
                    self._next_start = self.prefix
                for member in list(self.members):
                    member._wake.set()
        except asyncio.CancelledError:
            self.error = Unavailable(f"the shared scan of {self.prefix!r} was stopped (the store is closing)", key=self.prefix)
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to every member
            self.error = exc
        finally:
            self.finished = True
            self.pinned.set()
            self.pages.clear()
            self.hub._gone(self)
            for member in list(self.members):
                member._wake.set()

    async def _make_room(self) -> None:
        """Drop the oldest page, once its readers have moved on or ``detach_after`` has passed."""
        oldest = self.pages[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hub.detach_after
        while True:
            self._demand.clear()  # before the check: a member moving on after it wakes the wait
            readers = self._readers_of(oldest)
            left = deadline - loop.time()
            if not readers or left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    await self._demand.wait()
            except asyncio.TimeoutError:
                readers = self._readers_of(oldest)
                break
        self.pages.popleft()
        for member in readers:
            member._detach()

    def _readers_of(self, page: _Page) -> List["ScanMember"]:
        """The members that still need ``page`` (reading it, or not yet at it)."""
        return [m for m in self.members if not m.done and m.index <= page.index]


class ScanMember:
    """One reader of a shared scan: an async iterator of KeyValues at one revision.

    The same interface as :class:`~streamcodec.storage.list_stream.ListStream` for a
    watch-list: ``revision`` is set once the first item (or the end) is
    returned; ``aclose()`` leaves the scan.  ``detached`` tells whether it
    fell behind and finished on its own read; ``shared_pages`` counts the
    pages it took from the scan.
    """

    def __init__(self, hub: "ScanHub", prefix: bytes, resource_version: Optional[int], *, ordered: bool = False) -> None:
        self.hub = hub
        self.prefix = prefix
        self.resource_version = resource_version or 0
        #: reads in key order (a LIST): joins a scan only at its first page, and so never wraps round
        self.ordered = ordered
        self.revision: Optional[int] = None
        #: a shared read is never cut by a limit (the KeyValueStream interface)
        self.continue_token: Optional[str] = None
        self.detached = False
        self.shared_pages = 0
        self.done = False
        #: the page index this member reads (or waits for)
        self.index = 0
        self._scan: Optional[_Scan] = None
        self._joined = False
        self._lap = 0
        self._join_key = prefix
        self._in_wrap = False
        self._page: Optional[_Page] = None
        self._offset = 0
        #: the next key this member needs
        self._resume = prefix
        self._private: Optional["ListStream"] = None
        self._segments: List[Tuple[bytes, bytes]] = []
        self._wake = asyncio.Event()

    def __aiter__(self) -> "ScanMember":
        return self

    @property
    def join_key(self) -> bytes:
        """The key this member joined its scan at (the prefix when it read from the start)."""
        return self._join_key

    def needs(self, lap: int, start: bytes) -> bool:
        """Whether the page of ``lap`` starting at ``start`` holds keys this member still needs."""
        if lap == self._lap:
            return True
        return lap == self._lap + 1 and start < self._join_key

    def _attach(self, scan: _Scan) -> None:
        self._scan = scan
        point = scan.start_point() if self.ordered else scan.join_point()
        assert point is not None, "ScanHub._find only returns a scan an ordered member can start"
        self.index, self._lap, self._join_key = point
        self._resume = self._join_key
        scan.members.add(self)
        scan.wake()

    def _leave(self) -> None:
        scan, self._scan = self._scan, None
        self._page = None
        if scan is not None:
            scan.members.discard(self)
            scan.wake()

    def _finish(self) -> None:
        self.done = True
        self._leave()

    def _detach(self) -> None:
        """Fallen a ring behind: finish on a private read at R from the next key needed."""
        scan = self._scan
        assert scan is not None and scan.revision is not None
        log.info("detaching a slow member of the scan of %r at revision %d", self.prefix, scan.revision)
        self.detached = True
        self.hub.members_detached += 1
        self.revision = scan.revision
        self._segments = []
        if not self._in_wrap:
            self._segments.append((self._resume, scan.range_end))
            if self._join_key != self.prefix:
                self._segments.append((self.prefix, self._join_key))
        elif self._resume < self._join_key:
            self._segments.append((self._resume, self._join_key))
        self._leave()
        self._wake.set()

    async def _join(self) -> None:
        self._joined = True
        self._attach(await self.hub._find(self))

    async def __anext__(self) -> KeyValue:
        if not self._joined:
            await self._join()
        while True:
            if self.done:
                raise StopAsyncIteration
            if self.detached:
                return await self._next_private()
            scan = self._scan
            assert scan is not None
            page = self._page
            if page is None:
                page = scan.page(self.index)
                if page is None:
                    if scan.error is not None:
                        error = scan.error
                        self._finish()
                        raise error
                    if scan.finished:  # cannot happen while we are attached and need pages; never hang on it
                        self._finish()
                        raise Unavailable(f"the shared scan of {self.prefix!r} ended early", key=self.prefix)
                    self._wake.clear()
                    scan.wake()
                    await self._wake.wait()
                    continue
                self._page, self._offset = page, 0
                self.shared_pages += 1
                if self.revision is None:
                    self.revision = scan.revision
            if self._offset < len(page.kvs):
                kv = page.kvs[self._offset]
                self._offset += 1
                if self._in_wrap and kv.key >= self._join_key:
                    self._finish()  # back at the join point: the circle is complete
                    raise StopAsyncIteration
                self._resume = kv.key + b"\x00"
                return kv
            self._advance(page)

    def _advance(self, page: _Page) -> None:
        """Done with ``page``: move to the next one this member needs, or finish."""
        self._page = None
        if page.next_start is None:  # the end of a lap
            if self._in_wrap or self._join_key == self.prefix:
                self._finish()
                return
            self._in_wrap = True
            self._resume = self.prefix
        else:
            self._resume = page.next_start
            if self._in_wrap and page.next_start >= self._join_key:
                self._finish()
                return
        self.index = page.index + 1
        if self._scan is not None:
            self._scan.wake()

    async def _next_private(self) -> KeyValue:
        while True:
            if self._private is None:
                if not self._segments:
                    self.done = True
                    raise StopAsyncIteration
                start, end = self._segments.pop(0)
                self._private = self.hub.store.list_stream(self.prefix, self.revision, start_key=start, end_key=end)
            try:
                return await self._private.__anext__()
            except StopAsyncIteration:
                self._private = None

    async def aclose(self) -> None:
        """Leave the scan (or stop the private read)."""
        self.done = True
        self._leave()
        if self._private is not None:
            private, self._private = self._private, None
            await private.aclose()


class ScanHub:
    """The shared scans of one :class:`~streamcodec.storage.etcd.EtcdStore` (see the module doc)."""

    def __init__(self, store: "EtcdStore", *, ring_pages: int = RING_PAGES, detach_after: float = DETACH_AFTER) -> None:
        if ring_pages < _PREFETCH + 2:  # the page read, the one prefetched, and one page of slack
            raise ValueError(f"ring_pages must be at least {_PREFETCH + 2}")
        if not detach_after >= 0:
            raise ValueError("detach_after must be a number of seconds >= 0")
        self.store = store
        self.ring_pages = ring_pages
        self.detach_after = detach_after
        self._scans: Dict[bytes, List[_Scan]] = {}
        #: scans started so far (for tests: N simultaneous readers of a prefix make one)
        self.scans_started = 0
        #: pages the scans fetched from etcd, and members that fell behind onto a private read, so far
        self.pages_fetched_total = 0
        self.members_detached = 0

    def member(self, prefix: bytes, resource_version: Optional[int] = None, *, ordered: bool = False) -> ScanMember:
        """A reader of ``prefix`` at a revision of at least ``resource_version`` (None: a consistent read);
        ``ordered``: its keys in order (a LIST), else in the scan's circular order (a watch-list)."""
        if not isinstance(prefix, bytes) or not prefix:
            raise ValueError("prefix must be non-empty bytes")
        return ScanMember(self, prefix, resource_version, ordered=ordered)

    def scan_count(self, prefix: Optional[bytes] = None) -> int:
        """Scans running (of ``prefix``, or of every prefix)."""
        if prefix is not None:
            return len(self._scans.get(prefix, ()))
        return sum(len(scans) for scans in self._scans.values())

    def pages_fetched(self, prefix: bytes) -> int:
        """Pages the running scans of ``prefix`` fetched from etcd so far."""
        return sum(scan.pages_fetched for scan in self._scans.get(prefix, ()))

    async def _find(self, member: ScanMember) -> _Scan:
        """The scan ``member`` may join (starting one if none qualifies)."""
        prefix = member.prefix

        def usable(scan: _Scan) -> bool:
            return scan.joinable() and (not member.ordered or scan.start_point() is not None)

        for scan in reversed(self._scans.get(prefix, [])):
            if usable(scan) and not scan.first_sent:
                return scan  # its pinning read comes after our arrival: it satisfies any request
        candidates = [scan for scan in reversed(self._scans.get(prefix, [])) if usable(scan)]
        if candidates:
            # a consistent read must see every write acknowledged before it arrived
            gate = member.resource_version or await self.store.current_revision()
            for scan in candidates:
                await scan.pinned.wait()
                if usable(scan) and scan.revision is not None and scan.revision >= gate:
                    return scan
        return self._start(prefix)

    def _start(self, prefix: bytes) -> _Scan:
        scan = _Scan(self, prefix)
        self._scans.setdefault(prefix, []).append(scan)
        self.scans_started += 1
        scan.task = asyncio.ensure_future(scan.run())
        return scan

    def _gone(self, scan: _Scan) -> None:
        scans = self._scans.get(scan.prefix)
        if scans is not None and scan in scans:
            scans.remove(scan)
            if not scans:
                del self._scans[scan.prefix]

    async def close(self) -> None:
        """Stop every scan (their members fail or end)."""
        scans = [scan for group in self._scans.values() for scan in group]
        for scan in scans:
            if scan.task is not None:
                scan.task.cancel()
        await asyncio.gather(*(s.task for s in scans if s.task is not None), return_exceptions=True)
