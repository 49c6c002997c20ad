"""A Kubernetes-style API server over etcd that streams lists and watches
through streamcodec's bounded buffer pool.

* :class:`App` / :func:`create_app`: the ASGI application (uvicorn; mountable
  in Starlette/FastAPI), configured by one :class:`ServerConfig`.
* :class:`StreamResponse`: for servers with their own routing, one object
  that supervises a response body (a :class:`~.streams.ResponseBody`, or a
  producer writing through a FrameWriter) as an ASGI streaming response;
  :class:`ListBody` / :class:`WatchBody` are the bodies of the storage
  streams, for requests parsed by :class:`ListRequest` / :class:`WatchRequest`.
* ``streamcodec serve`` (:mod:`streamcodec.cli`): run it.

Modules: ``app`` (routing, CRUD, admission bookkeeping), ``handlers`` (request
parsing), ``bodies`` (list / watch bodies), ``items`` (stored values as
frames), ``streams`` (the supervising response), ``negotiation``,
``objects``, ``status``, ``admission``, ``defaults``, ``connections``,
``security`` / ``secure_serving`` / ``tls`` / ``audit``.
"""

from .app import App, ServerConfig, create_app
from .bodies import ListBody, WatchBody
from .handlers import ListRequest, WatchRequest
from .status import APIError
from .streams import ResponseBody, StreamResponse

__all__ = [
    "APIError",
    "App",
    "ListBody",
    "ListRequest",
    "ResponseBody",
    "ServerConfig",
    "StreamResponse",
    "WatchBody",
    "WatchRequest",
    "create_app",
]
