"""A Kubernetes-style API server over etcd that streams lists and watches
through streamcodec's bounded buffer pool.

* :class:`App` / :func:`create_app`: the ASGI application (uvicorn; mountable
  in Starlette/FastAPI).
* :class:`StreamResponse`: for servers with their own routing, one object
  that turns a producer writing through a FrameWriter into an ASGI streaming
  response; :func:`list_producer` / :func:`watch_producer` make producers
  from the storage streams.
* ``streamcodec serve`` (:mod:`streamcodec.cli`): run it.
"""

from .app import App, ServerConfig, create_app
from .handlers import ListRequest, WatchRequest, list_producer, watch_producer
from .status import APIError
from .streams import StreamResponse

__all__ = [
    "APIError",
    "App",
    "ListRequest",
    "ServerConfig",
    "StreamResponse",
    "WatchRequest",
    "create_app",
    "list_producer",
    "watch_producer",
]
