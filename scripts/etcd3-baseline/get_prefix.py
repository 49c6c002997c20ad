"""Baseline for benchmarks/bench_storage.py: python-etcd3's ``get_prefix`` over a key prefix.

Runs in its OWN virtualenv (python-etcd3 0.12 needs ``protobuf<4``, the project uses protobuf 7);
benchmarks/bench_storage.py creates it.  Stays up so interpreter start and imports are not timed:
each line ``run`` on stdin makes one full ``get_prefix`` that touches every value, answered by one
JSON line on stdout: ``{"count", "bytes", "seconds", "maxrss_bytes"}``, or ``{"error", "details"}``
when the call fails (e.g. RESOURCE_EXHAUSTED when the response exceeds the receive limit).
End of stdin ends the process.

    python get_prefix.py --endpoint 127.0.0.1:2379 --prefix /bench/ [--max-receive BYTES]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import etcd3
import grpc


def peak_rss_bytes() -> int:
    """VmHWM: this process's own peak RSS (ru_maxrss would start at the spawning process's peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="HOST:PORT of an etcd member (plain text)")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--max-receive", type=int, default=-1, help="grpc.max_receive_message_length (-1: unlimited)")
    args = parser.parse_args()
    host, port = args.endpoint.rsplit(":", 1)
    client = etcd3.client(
        host=host, port=int(port), grpc_options=[("grpc.max_receive_message_length", args.max_receive)]
    )
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        started = time.perf_counter()
        try:
            count = total = 0
            for value, _meta in client.get_prefix(args.prefix):
                count += 1
                total += len(value)
            reply = {"count": count, "bytes": total, "seconds": time.perf_counter() - started}
        except grpc.RpcError as exc:
            reply = {"error": exc.code().name, "details": str(exc.details())}
        reply["maxrss_bytes"] = peak_rss_bytes()
        print(json.dumps(reply), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
