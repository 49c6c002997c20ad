"""Every tunable and hard limit of streamcodec, in one place.

Each constant says why it has the value it has.  Encoders, decoders and the
pool take these as defaults; all can be overridden per instance.
"""

from __future__ import annotations

#: Deepest nesting of containers an encoder accepts.  Deep enough for any
#: real Kubernetes object (the deepest CRDs nest ~30 levels); shallow enough
#: that a recursive encoder can never exhaust the C stack, and a cycle is
#: caught by this limit as well as by the explicit cycle check.
MAX_DEPTH = 256

#: Highest ``max_depth`` any encoder or decoder accepts.  The encoders recurse
#: per container level (the compiled ones on the C stack, the pure-Python twins
#: on the Python stack, whose default limit is 1000 frames, some of them in use
#: by the caller): the JSON and Struct-protobuf twins reach ~490 levels from an
#: empty stack, so 400 leaves a caller ~200 frames (tests/test_formats.py).
MAX_DEPTH_LIMIT = 400

#: Largest frame an encoder emits or a decoder accepts.  etcd refuses values
#: over 1.5 MiB by default (--max-request-bytes), and a frame carries one
#: object plus a small envelope, so 4 MiB leaves room for raising etcd's limit
#: without letting one hostile frame take unbounded memory.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024

#: Most values (every element, map key and map value, counted as the data model has them) one
#: request body may decode into.  Decoded, a value costs ~60-200 bytes of Python objects (an empty
#: list 56, a one-entry dict 184), and CBOR or MessagePack spend one byte on it: a 3 MiB body of empty
#: arrays decodes into ~200 MiB.  131,072 values bound a body at ~25 MiB of objects plus its strings'
#: text and its decode and checks at a few hundred ms of CPU, while a kube object at etcd's 1.5 MiB
#: value limit rarely holds a tenth of that (a ConfigMap of 50,000 keys holds 100,001).
DEFAULT_MAX_BODY_VALUES = 131072

#: Default total byte budget of a BufferPool: a few maximum frames in flight.
DEFAULT_POOL_BYTES = 16 * 1024 * 1024

#: Default size of one pool buffer.  Frames never span buffers, so a buffer
#: must hold the largest frame; 4 MiB matches DEFAULT_MAX_FRAME_SIZE.
DEFAULT_BUFFER_SIZE = DEFAULT_MAX_FRAME_SIZE

#: FrameWriter sends its buffer once it holds this many bytes.  Batching
#: small frames up to here keeps the number of sends low; flushing no later
#: than this keeps the part of a pool buffer a stream ever writes (and so
#: makes resident) at about this plus its largest frame, not the whole buffer.
DEFAULT_FLUSH_BYTES = 256 * 1024

#: Watch event types (Kubernetes watch.EventType).
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")

#: Name of the environment variable that forces the pure-Python twins.
PURE_PYTHON_ENV = "STREAMCODEC_PURE_PYTHON"
