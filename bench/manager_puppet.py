"""A fleet of "fast puppets" in one process: answers every delivery at once and records when it came.

``python -m bench.manager_puppet --ports 4001,4002,... [--report F]`` listens on each port (one port
per puppet when there are few, as separate puppet processes would; path-addressed puppets share a
port when there are thousands). A port ``0`` binds a free one; ``F`` gets the ports bound, so the
benchmark does not race other processes for ports it picked. Every request is answered ``success``
as soon as its body is read, and recorded as ``(monotonic ns at its headers, method, path, raw
query)``; HTTP is :mod:`bench.raw_http`, so the fleet costs the shared machine little.
``CLOCK_MONOTONIC`` is system-wide on Linux, so the load generator can subtract its own timestamps
from these.

The first port also serves ``GET /_records?since=N`` (records N.. as JSON) for the benchmark to read.
It never decrypts: the load generator identifies each callback by the ``nonce`` it chose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from urllib.parse import parse_qs

from bench.raw_http import Handler
from bench.raw_http import serve as serve_http
from hub.cli import fast_event_loop

Record = tuple[int, str, str, str]


def answer(records: list[Record]) -> Handler:
    """The fleet's one handler: ``GET /_records`` reports, anything else is a delivery."""

    def handle(at_ns: int, method: str, url: bytes, body: bytes) -> tuple[int, str, bytes]:
        path, _, query = url.decode("latin-1").partition("?")
        if method == "GET" and path == "/_records":
            since = int(parse_qs(query).get("since", ["0"])[0])
            report = {"records": records[since:], "next": len(records)}
            return 200, "application/json", json.dumps(report).encode()
        records.append((at_ns, method, path, query))
        return 200, "text/plain", b"success"

    return handle


async def serve(ports: list[int], report: Path | None) -> None:
    records: list[Record] = []
    handle = answer(records)
    servers = [await serve_http(handle, "127.0.0.1", port, time.monotonic_ns) for port in ports]
    bound = [server.sockets[0].getsockname()[1] for server in servers]
    if report is not None:  # written whole, then renamed: a reader never sees half of it
        partial = report.with_suffix(".partial")
        partial.write_text(json.dumps(bound))
        partial.replace(report)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.manager_puppet", description=__doc__)
    parser.add_argument("--ports", required=True, help="comma-separated ports on 127.0.0.1; 0: any free one")
    parser.add_argument("--report", type=Path, help="write the bound ports here (JSON), once listening")
    args = parser.parse_args()
    # the hub's event loop: stand-ins for puppets should cost this shared machine as little as they can
    with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
        runner.run(serve([int(port) for port in args.ports.split(",")], args.report))


if __name__ == "__main__":
    main()
