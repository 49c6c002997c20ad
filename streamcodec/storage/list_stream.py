"""``ListStream``: one pinned-revision paged read of a prefix, within a byte budget.

The first page pins the revision (a linearizable read), every later page asks for exactly that
revision, so the result is one consistent snapshot or
:class:`~streamcodec.storage.errors.Expired` -- never partial or mixed.  Pages come from a
:class:`PageSource` (the store), which sizes them and reads them with failover.
"""

from __future__ import annotations

from typing import Any, AsyncGenerator, List, Optional, Protocol, Tuple

from ._implementation import wire
from .errors import InvalidContinue
from .tokens import decode_continue, encode_continue
from .types import KeyValue, RangeResult

__all__ = ["ListStream", "PageSource", "read_page"]


class PageSource(Protocol):
    """What a paged read needs of the store: page sizes, and one Range page at a revision."""

    def initial_page_limit(self) -> int:
        """Keys in the first page."""
        ...

    def next_page_limit(self, previous: int, largest_kv_bytes: int) -> int:
        """Keys in the next page, from the last page's limit and largest key-value."""
        ...

    async def range_page(self, key: bytes, range_end: bytes, limit: int, revision: int) -> Tuple[RangeResult, int]:
        """One page of ``[key, range_end)`` at ``revision`` (0: the newest), and the limit used."""
        ...


async def read_page(
    pages: PageSource, start: bytes, range_end: bytes, limit: int, revision: int
) -> Tuple[List[KeyValue], int, Optional[bytes], int]:
    """One page of a paged read, and what the next page needs.

    Returns the page's key-values, the revision etcd read them at, the key the next page starts
    from (the one after the last key; None when this page ends the range) and the next page's
    limit (sized from this page's largest key-value).  Every paged read -- a private
    :class:`ListStream` or a shared scan -- steps through its range with this, one way.
    """
    result, used = await pages.range_page(start, range_end, limit, revision)
    kvs: List[KeyValue] = result.kvs
    read_at = int(result.header.revision)
    next_start = kvs[-1].key + b"\x00" if result.more and kvs else None
    del result  # the key-values' values are slices of the response: nothing else keeps it
    next_limit = used
    if kvs:
        largest = max(len(kv.key) + len(kv.value) for kv in kvs)
        next_limit = pages.next_page_limit(max(used, len(kvs)), largest)
    return kvs, read_at, next_start, next_limit


class ListStream:
    """Async iterator over one pinned-revision paged read of a prefix.

    ``revision`` is None until the first page arrives, then the pinned
    revision.  ``continue_token`` is set when a ``limit`` stopped the stream
    before the end (signed with ``continue_secret``).  ``pages`` counts Range
    requests made.

    Memory: values are memoryview slices of the current page's response,
    except the last value of each page of several, which is copied to
    ``bytes`` so that a consumer still holding it does not keep the whole page
    alive while the next page arrives.  So at most one page plus one object is live, provided
    the consumer keeps only the current item.
    """

    def __init__(
        self,
        pages: PageSource,
        prefix: bytes,
        revision: Optional[int],
        continue_token: Optional[str],
        limit: Optional[int],
        *,
        continue_secret: bytes,
        start_key: Optional[bytes] = None,
        end_key: Optional[bytes] = None,
    ) -> None:
        if not isinstance(prefix, bytes) or not prefix:
            raise ValueError("prefix must be non-empty bytes")
        if limit is not None and limit <= 0:
            raise ValueError("limit must be positive")
        range_end = wire.prefix_range_end(prefix)
        if (start_key is not None and not start_key.startswith(prefix)) or (end_key is not None and not prefix <= end_key <= range_end):
            raise ValueError("start_key and end_key must lie within the prefix")
        self._pages = pages
        self._secret = continue_secret
        self.prefix = prefix
        self._start = start_key if start_key is not None else prefix
        self._range_end = end_key if end_key is not None else range_end
        self.revision: Optional[int] = revision if revision else None
        if continue_token is not None:
            token_revision, self._start = decode_continue(continue_secret, continue_token, prefix)
            if revision and revision != token_revision:
                raise InvalidContinue("a continue token cannot be combined with another revision")
            self.revision = token_revision
        self._limit = limit
        self.continue_token: Optional[str] = None
        self.pages = 0
        self._gen = self._run()

    def __aiter__(self) -> "ListStream":
        return self

    async def __anext__(self) -> KeyValue:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop early and release the page held."""
        await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[KeyValue, None]:
        pages = self._pages
        range_end = self._range_end
        start = self._start
        if start >= range_end:
            return  # an empty key range (etcd would read it as "from start to the end of the keyspace")
        page_limit = pages.initial_page_limit()
        yielded = 0
        while True:
            want = page_limit if self._limit is None else min(page_limit, self._limit - yielded)
            page, read_at, next_start, page_limit = await read_page(pages, start, range_end, want, self.revision or 0)
            kvs: List[Any] = page  # emptied as it is yielded
            del page
            self.pages += 1
            if self.revision is None:
                self.revision = read_at
            count = len(kvs)
            if count == 0:
                return
            for i in range(count):
                kv = kvs[i]
                kvs[i] = None  # the consumer's reference is the only one left
                if i == count - 1 and count > 1:
                    # A page of one key-value is little more than that value:
                    # holding it costs what a copy would, so no copy is made.
                    kv = kv._replace(value=bytes(kv.value))
                yielded += 1
                yield kv
                del kv
            del kvs
            if next_start is None:
                return
            start = next_start
            if self._limit is not None and yielded >= self._limit:
                self.continue_token = encode_continue(self._secret, self.prefix, int(self.revision), start)
                return
