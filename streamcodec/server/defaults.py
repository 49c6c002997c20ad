"""The server's defaults that more than one place needs, each defined once with its reason.

:class:`~streamcodec.server.app.ServerConfig` (whose fields are ``streamcodec serve``'s flags) and
:class:`~streamcodec.server.streams.StreamResponse` (for servers with their own routing) both read these.
"""

from __future__ import annotations

#: Seconds one send of a bulk stream may wait on a client that reads nothing before it is cut
#: off: long enough for a client that pauses (GC, a full disk), short enough that a dead peer
#: gives its pool buffer back within a minute.
STALL_TIMEOUT = 30.0

#: Seconds a request waits for a stream slot or pool buffer before a 429: client-go retries a
#: 429 after Retry-After, so waiting longer than its request timeout (60 s) only wastes the slot.
QUEUE_WAIT = 60.0

#: Retry-After (seconds) of every 429, 503 and "too large resource version" 504: kube-apiserver's
#: value, which client-go honours before retrying.
RETRY_AFTER = 1

#: Bytes of the pool every bulk stream (a list, a watch-list's initial events) writes through: 16
#: buffers of 4 MiB, so 16 streams run at once before others queue -- the informer count of
#: Kubernetes' experiment, and what lets 16 watch-lists that arrive together share one etcd scan
#: instead of four.  The budget is virtual: a buffer is resident only where written (~1.3 MiB for
#: 1 MiB objects), so 16 concurrent watch-lists of 1 MiB Secrets grew the server by 19 MiB with
#: shared scans and 59 MiB without (benchmarks/bench_shared_scans.py).
POOL_BYTES = 64 * 1024 * 1024

#: Largest ASGI body message a stream sends.  A pool buffer's contents go out in pieces of at most
#: this size, so the ASGI server's chunk-framing copy and the transport's write buffer each hold at
#: most one piece of a stream, not a whole buffer, and freshly allocated copies stay small enough for
#: the allocator to reuse instead of mapping (and page-faulting) new memory.
SEND_PIECE_BYTES = 256 * 1024

#: Bytes of watch-event frames kept so that the readers of one collection transcode each object once
#: (:class:`~streamcodec.server.items.FrameCache`): a shared scan's ring (8 pages of ~2 MiB of stored
#: values), since a scan's members are at most a ring apart, and frames are no larger than the stored
#: JSON they come from (typed protobuf carries ``[]byte`` as bytes, not base64: 3/4 of it).
FRAME_CACHE_BYTES = 16 * 1024 * 1024

#: Tries of an unconditional update that meets concurrent writes (each a fresh read); kube's
#: GuaranteedUpdate retries until its request times out, this until the tries run out.
UPDATE_RETRIES = 100
