"""The byte budget of a page in flight: the defaults and what one response costs beyond its payload.

A list is read in pages, each a Range response; a watch buffers at most one fragmented revision.
These numbers size both (:class:`~streamcodec.storage.etcd.EtcdStore` turns them into page
limits and gRPC's receive limit); each is defined here once, with its reason.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "DEFAULT_PAGE_BYTES",
    "MAX_PAGE_KEYS",
    "MiB",
    "PER_KV_OVERHEAD",
    "RECEIVE_COPY_FACTOR",
    "RESPONSE_HEADROOM",
]

MiB = 1 << 20

#: Default byte budget of one list page (including grpc.aio's transient copy
#: while receiving it, see RECEIVE_COPY_FACTOR).  Every concurrent stream holds
#: about one page, so pages hold about one ~1 MB object: with 8 MiB pages a
#: watch-list of 1 MB Secrets grew a server by ~9 MB per stream against a median
#: ~5.7 MB with 2 MiB, for ~15 % more throughput (benchmarks/bench_server.py), and
#: a list_stream of 400 x 1 MiB grew RSS by 26-32 MiB against 2 * 1 MiB + 16 MiB.
DEFAULT_PAGE_BYTES = 2 * MiB

#: Largest object we expect.  etcd refuses requests over 1.5 MiB by default
#: (--max-request-bytes); 2 MiB covers that plus key and envelope.
DEFAULT_MAX_OBJECT_BYTES = 2 * MiB

#: Protobuf framing of a Range response beyond keys and values: header, and per
#: key-value its tags, lengths and four int64s -- well under 64 bytes each.
PER_KV_OVERHEAD = 64
RESPONSE_HEADROOM = 256 * 1024

#: What receiving one response costs in Python memory, per response byte:
#: grpc.aio (raw bytes, no deserializer) assembles the message in a bytearray
#: (over-allocating by up to 1/8 as it grows) and then copies it into the
#: ``bytes`` it returns, so both exist for a moment.  ``page_bytes`` is a
#: budget for that whole transient cost, so responses aim at page_bytes / 2.125.
RECEIVE_COPY_FACTOR = 2.125

#: Most keys one page may ask for, however small the objects: bounds the
#: per-page Python object count (KeyValue tuples) independently of bytes.
MAX_PAGE_KEYS = 10_000
