"""``streamcodec informer URL PATH``: watch a resource, print its events (or one sync summary) as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any, Dict, List, Optional

from .http import within
from .reflector import InformerError, InformerEvent, Reflector

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamcodec informer",
        description="Keep a local copy of one resource in sync with a Kubernetes API server (watch-list, or LIST "
                    "then watch) and print its events as JSON lines: {\"type\": added|updated|deleted, \"key\", "
                    "\"resourceVersion\"}, and {\"synced\": true, ...} once the copy is complete.",
    )
    p.add_argument("url", metavar="URL", help="the server, http(s)://HOST:PORT")
    p.add_argument("path", metavar="PATH", help="the collection, e.g. /api/v1/namespaces/default/secrets or /api/v1/secrets")
    p.add_argument("--watch-list", choices=("auto", "on", "off"), default="auto",
                   help="auto: watch-list, falling back to a paged LIST; on: watch-list only; off: LIST then watch (default auto)")
    p.add_argument("--until-synced", action="store_true",
                   help="print one summary line once the store is complete, then exit 0")
    p.add_argument("--content-type", choices=("json", "protobuf", "cbor"), default="json",
                   help="the wire format asked for (protobuf: Kubernetes' typed protobuf; cbor: Kubernetes' CBOR, "
                        "application/cbor lists and application/cbor-seq watches; both fall back to JSON when the "
                        "server answers JSON; default json)")
    p.add_argument("--label-selector", "-l", default=None, metavar="SELECTOR")
    p.add_argument("--field-selector", default=None, metavar="SELECTOR")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--cert", default=None, metavar="FILE", help="client certificate (PEM; with --key)")
    p.add_argument("--key", default=None, metavar="FILE", help="client certificate's key (PEM)")
    p.add_argument("--ca", default=None, metavar="FILE", help="CA bundle of the server's certificate")
    p.add_argument("--insecure-skip-tls-verify", action="store_true", help="do not verify the server's certificate")
    p.add_argument("--bookmark-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="fall back to LIST when a watch-list has not reached its initial-events-end bookmark by then (default 60)")
    p.add_argument("--page-size", type=int, default=500, metavar="N", help="limit of each LIST page (0: unpaginated; default 500)")
    p.add_argument("--objects", action="store_true", help="print whole objects in event lines")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="exit 1 if not done by then (default: never)")
    p.add_argument("--verbose", "-v", action="store_true", help="log retries and fallbacks on stderr")
    return p


def _line(ev: InformerEvent, objects: bool) -> Dict[str, Any]:
    meta = (ev.object or {}).get("metadata") or {}
    out: Dict[str, Any] = {"type": ev.type, "key": ev.key, "resourceVersion": meta.get("resourceVersion", "")}
    if objects:
        out["object"] = ev.object
    return out


async def _run(args: argparse.Namespace) -> int:
    reflector = Reflector(
        args.url, args.path, label_selector=args.label_selector, field_selector=args.field_selector, token=args.token,
        cert_file=args.cert, key_file=args.key, ca_file=args.ca, insecure=args.insecure_skip_tls_verify,
        content_type=args.content_type, watch_list=args.watch_list, bookmark_timeout=args.bookmark_timeout,
        page_size=args.page_size,
    )
    started = time.monotonic()
    events = reflector.events()
    try:
        async for ev in events:
            if ev.type == "synced":
                summary = {"synced": True, "objects": len(reflector.store), "watch_list": bool(reflector.used_watch_list),
                           "resource_version": reflector.resource_version, "seconds": round(time.monotonic() - started, 3)}
                print(json.dumps(summary), flush=True)
                if args.until_synced:
                    return 0
            elif not args.until_synced:
                print(json.dumps(_line(ev, args.objects)), flush=True)
    finally:
        reflector.close()
        await events.aclose()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``streamcodec informer``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(within(_run(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"streamcodec informer: not done within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (InformerError, ValueError, OSError) as exc:
        print(f"streamcodec informer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
