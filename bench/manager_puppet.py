"""A fleet of "fast puppets" in one process: answers every delivery at once and records when it came.

``python -m bench.manager_puppet --ports 4001,4002,...`` listens on each port (one port per puppet
when there are few, as separate puppet processes would; path-addressed puppets share a port when there
are thousands). Every request is answered ``success`` as soon as its body is read, and recorded as
``(monotonic ns, method, path, raw query)``. ``CLOCK_MONOTONIC`` is system-wide on Linux, so the load
generator can subtract its own timestamps from these.

The first port also serves ``GET /_records?since=N`` (records N.. as JSON) for the benchmark to read.
It never decrypts: the load generator identifies each callback by the ``nonce`` it chose.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from aiohttp import web

from wxkf.cli import fast_event_loop

Record = tuple[int, str, str, str]


def build_app(records: list[Record]) -> web.Application:
    async def anything(request: web.Request) -> web.Response:
        now = time.monotonic_ns()
        await request.read()
        records.append((now, request.method, request.path, request.query_string))
        return web.Response(text="success")

    async def dump(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"records": records[since:], "next": len(records)})

    app = web.Application()
    app.router.add_get("/_records", dump)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def serve(ports: list[int]) -> None:
    records: list[Record] = []
    runner = web.AppRunner(build_app(records), access_log=None, handle_signals=False)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.manager_puppet", description=__doc__)
    parser.add_argument("--ports", required=True, help="comma-separated ports on 127.0.0.1")
    args = parser.parse_args()
    # the hub's event loop: stand-ins for puppets should cost this shared machine as little as they can
    with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
        runner.run(serve([int(port) for port in args.ports.split(",")]))


if __name__ == "__main__":
    main()
