"""The ``streamcodec`` command.

``streamcodec serve``  runs the API server (this package's ASGI app) under uvicorn.
``streamcodec demo``   runs the watch-list experiment (:mod:`streamcodec.demo`).
``streamcodec informer`` keeps a resource in sync and prints its events (:mod:`streamcodec.informer`).
``streamcodec etcd provision 3.5`` finds or fetches local etcd binaries (:mod:`streamcodec.etcd_provision`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional


__all__ = ["main", "build_parser"]


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G (binary) suffix: 64M = 64 MiB."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip()
    try:
        if text[-1:].upper() in units:
            return int(float(text[:-1]) * units[text[-1].upper()])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 67108864, 64M, 1G)") from None


def _listen(text: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamcodec", description="Stream huge etcd collections through a Kubernetes-style API server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the API server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a Kubernetes-style core/v1 API server over etcd: /api/v1/namespaces/NS/RESOURCE[/NAME] and\n"
            "/api/v1/RESOURCE with list (limit/continue/resourceVersion[Match]), watch, watch-list\n"
            "(sendInitialEvents), create/replace/delete, in JSON, CBOR, Kubernetes protobuf and MessagePack.\n"
            "Objects live under KEY_ROOT/RESOURCE/NAMESPACE/NAME.  Point kubectl at it with --server http://HOST:PORT."
        ),
        epilog=(
            "memory: every bulk stream (a list, a watch-list's initial events) writes through one buffer of --buffer-bytes\n"
            "from a shared pool of --pool-bytes; when every buffer (or --max-streams) is taken, new ones wait their turn,\n"
            "fairly across clients, for up to --queue-wait seconds, then get 429 with Retry-After.  Live watches take no\n"
            "buffer while idle, and one whose client does not keep up is cut off after --slow-watcher-timeout."
        ),
    )
    from .server.app import ServerConfig  # its defaults are the flags' defaults

    serve.add_argument("--etcd", required=True, metavar="URL[,URL...]",
                       help="etcd client endpoints, comma-separated (http://host:port or host:port; https:// needs --etcd-cafile)")
    serve.add_argument("--listen", default="127.0.0.1:8080", type=_listen, metavar="HOST:PORT",
                       help="address to serve HTTP on (default 127.0.0.1:8080)")
    serve.add_argument("--list-mode", choices=("streaming", "buffered"), default=ServerConfig.list_mode,
                       help="streaming: list items leave as etcd delivers them, memory bounded by the pool; "
                            "buffered: read the whole list and build the whole response before sending (the classic way). "
                            f"Default {ServerConfig.list_mode}")
    serve.add_argument("--pool-bytes", type=_size, default=ServerConfig.pool_bytes, metavar="N",
                       help=f"total bytes of the shared stream buffer pool (default {ServerConfig.pool_bytes}; K/M/G suffixes allowed)")
    serve.add_argument("--buffer-bytes", type=_size, default=ServerConfig.buffer_bytes, metavar="N",
                       help=f"bytes of one stream's buffer, which must hold the largest encoded object (default {ServerConfig.buffer_bytes})")
    serve.add_argument("--max-streams", type=int, default=ServerConfig.max_streams, metavar="N",
                       help="most concurrent bulk streams: lists and watch-lists' initial events (default: the number of buffers "
                            "in the pool; buffered list mode: 400, kube-apiserver's --max-requests-inflight); live watches do not count")
    serve.add_argument("--queue-wait", type=float, default=ServerConfig.queue_wait, metavar="SECONDS",
                       help=f"how long a bulk stream may wait for its turn before 429 (default {ServerConfig.queue_wait:g})")
    serve.add_argument("--slow-watcher-timeout", type=float, default=ServerConfig.slow_watcher_timeout, metavar="SECONDS",
                       help="cut off a live watch whose client has not taken an event for this long "
                            f"(default {ServerConfig.slow_watcher_timeout:g})")
    serve.add_argument("--stall-timeout", type=float, default=ServerConfig.stall_timeout, metavar="SECONDS",
                       help=f"disconnect a client that reads nothing for this long while a stream waits on it (default {ServerConfig.stall_timeout:g})")
    from streamcodec.storage.etcd import DEFAULT_PAGE_BYTES

    serve.add_argument("--etcd-page-bytes", type=_size, default=DEFAULT_PAGE_BYTES, metavar="N",
                       help=f"byte budget of one etcd range page a list or watch-list reads at a time (default {DEFAULT_PAGE_BYTES}); "
                            "each concurrent stream holds about one page")
    serve.add_argument("--shared-scans", action=argparse.BooleanOptionalAction, default=ServerConfig.shared_scans,
                       help="concurrent watch-lists and whole lists of one collection share one paged etcd read "
                            f"(default {'on' if ServerConfig.shared_scans else 'off'})")
    serve.add_argument("--frame-cache-bytes", type=_size, default=ServerConfig.frame_cache_bytes, metavar="N",
                       help="watch-event frames kept so the readers of one shared scan or watch transcode each object "
                            f"once (default {ServerConfig.frame_cache_bytes}; 0: off)")
    serve.add_argument("--namespace-lifecycle", action=argparse.BooleanOptionalAction, default=ServerConfig.namespace_lifecycle,
                       help="kube's NamespaceLifecycle admission: creates and updates in a namespace without a Namespace "
                            "object are 404, default/kube-system/kube-public cannot be deleted, and the system namespaces "
                            f"are created at start-up (default {'on' if ServerConfig.namespace_lifecycle else 'off'})")
    serve.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="on SIGTERM/SIGINT, wait this long for open streams before closing them (default 5)")
    serve.add_argument("--continue-secret-file", default=None, metavar="FILE",
                       help="key (at least 32 bytes) that signs continue tokens, so they stay valid across restarts and "
                            "replicas (default: a random key per process)")
    serve.add_argument("--min-request-timeout", type=int, default=ServerConfig.min_request_timeout, metavar="SECONDS",
                       help="a watch without timeoutSeconds ends after a random time between this and twice this, as "
                            f"kube-apiserver's flag (default {ServerConfig.min_request_timeout})")
    serve.add_argument("--key-root", default=ServerConfig.key_root, metavar="PREFIX",
                       help=f"etcd key prefix of all objects (default {ServerConfig.key_root})")
    serve.add_argument("--etcd-cafile", default=None, metavar="FILE", help="CA bundle: talk TLS to etcd")
    serve.add_argument("--etcd-certfile", default=None, metavar="FILE", help="client certificate for etcd (with --etcd-keyfile)")
    serve.add_argument("--etcd-keyfile", default=None, metavar="FILE", help="client key for etcd (with --etcd-certfile)")
    serve.add_argument("--etcd-username", default=None, metavar="USER",
                       help="etcd user; the password is read from the environment variable STREAMCODEC_ETCD_PASSWORD")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                       help="log level of the server and uvicorn (default info)")
    from .server import secure_serving  # TLS, authentication, authorization, audit flags

    secure_serving.add_arguments(serve)

    demo = sub.add_parser("demo", help="run the watch-list experiment (see `streamcodec demo --help`)", add_help=False)
    demo.add_argument("args", nargs=argparse.REMAINDER)
    informer = sub.add_parser("informer", help="keep a resource in sync and print its events (see `streamcodec informer --help`)",
                              add_help=False)
    informer.add_argument("args", nargs=argparse.REMAINDER)
    etcd = sub.add_parser("etcd", help="find or fetch local etcd binaries: `streamcodec etcd provision 3.5|3.4`", add_help=False)
    etcd.add_argument("args", nargs=argparse.REMAINDER)
    return parser


#: glibc malloc arenas for the server.  Each gRPC and asyncio thread would
#: otherwise get an arena of its own, and freed 1 MB values linger in each:
#: measured with 16 concurrent watch-lists of 1 MB objects, capping them at 2
#: cut the server's peak RSS growth by ~15 %, with no measurable slowdown.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX) unless MALLOC_ARENA_MAX is set; False where not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def serve(args: argparse.Namespace) -> int:
    limit_malloc_arenas()  # before uvicorn and gRPC start their threads
    import uvicorn

    from .server.app import App, ServerConfig

    endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
    if not endpoints:
        raise SystemExit("streamcodec serve: --etcd names no endpoint")
    store_options: Dict[str, Any] = {}
    if args.etcd_cafile:
        store_options.update(ca_file=args.etcd_cafile, cert_file=args.etcd_certfile, key_file=args.etcd_keyfile)
    elif args.etcd_certfile or args.etcd_keyfile:
        raise SystemExit("streamcodec serve: a client certificate needs --etcd-cafile (TLS)")
    if args.etcd_page_bytes:
        store_options["page_bytes"] = args.etcd_page_bytes
    if args.etcd_username:
        password = os.environ.get("STREAMCODEC_ETCD_PASSWORD")
        if password is None:
            raise SystemExit("streamcodec serve: --etcd-username needs STREAMCODEC_ETCD_PASSWORD in the environment")
        store_options.update(username=args.etcd_username, password=password)
    continue_secret = None
    if args.continue_secret_file:
        try:
            with open(args.continue_secret_file, "rb") as f:
                continue_secret = f.read().strip()
        except OSError as exc:
            raise SystemExit(f"streamcodec serve: --continue-secret-file: {exc}") from None
    try:
        config = ServerConfig(
            list_mode=args.list_mode,
            pool_bytes=args.pool_bytes,
            buffer_bytes=min(args.buffer_bytes, args.pool_bytes),
            max_streams=args.max_streams,
            queue_wait=args.queue_wait,
            slow_watcher_timeout=args.slow_watcher_timeout,
            stall_timeout=args.stall_timeout,
            continue_secret=continue_secret,
            min_request_timeout=args.min_request_timeout,
            key_root=args.key_root.rstrip("/") or "/registry",
            shared_scans=args.shared_scans,
            frame_cache_bytes=args.frame_cache_bytes,
            namespace_lifecycle=args.namespace_lifecycle,
        )
    except ValueError as exc:
        raise SystemExit(f"streamcodec serve: {exc}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .server import secure_serving

    try:  # before anything listens: a non-loopback --listen needs TLS and authentication
        security = secure_serving.configure(args)
    except ValueError as exc:
        raise SystemExit(f"streamcodec serve: {exc}") from None
    app = App(etcd_endpoints=endpoints, store_options=store_options, config=config, **security.app_options)
    host, port = args.listen
    try:
        uvicorn.run(app, host=host, port=port, log_level=args.log_level, lifespan="on", access_log=args.log_level == "debug",
                    timeout_graceful_shutdown=args.shutdown_timeout, **app.uvicorn_options(), **security.uvicorn_options)
    finally:
        security.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``streamcodec`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from . import demo

        return int(demo.main(argv[1:]) or 0)
    if argv[:1] == ["etcd"]:  # before build_parser: scripts/provision-etcd runs this with the stdlib only
        from . import etcd_provision

        return etcd_provision.main(argv[1:])
    if argv[:1] == ["informer"]:
        from .informer import cli as informer_cli

        return informer_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
