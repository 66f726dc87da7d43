"""Serving ASGI apps on real sockets inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp

from wxkf.server import HeaderDeadline
from wxkf.tasks import finished_within

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class _Server(uvicorn.Server):
    """A uvicorn server that reports start-up through an event, leaves signal handling alone, and
    stops as soon as it is told to (:meth:`stop`).

    uvicorn looks at ``should_exit`` every 0.1 s and then pauses 0.1 s for connections to close; in a
    suite that stops a thousand servers, those pauses were most of the time spent in teardowns. Here
    the main loop wakes on :meth:`stop`, and the stop waits on the connections and tasks themselves.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test runner owns SIGINT, not this server
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    def stop(self) -> None:
        self.should_exit = True
        self._stopping.set()

    async def main_loop(self) -> None:
        """uvicorn's (its tick refreshes the Date header), woken at once by :meth:`stop`."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._stopping.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's: no new connections, the open ones asked to close, their responses and tasks
        given ``timeout_graceful_shutdown`` to finish (then cancelled), the lifespan's shutdown; but
        the waits poll every 10 ms, not every 100 ms after a fixed 100 ms pause."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while state.connections or state.tasks:  # noqa: ASYNC110 - uvicorn signals neither's end
                    await asyncio.sleep(0.01)  # the poll's interval
        except TimeoutError:
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp, *, lifespan: str = "auto", graceful: float = 2.0, port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 on ``port`` (default: a free one); yields ``http://127.0.0.1:PORT``.

    The socket is bound before the server starts, so the port is known without racing anyone for it.
    On exit the server stops; requests still running after ``graceful`` seconds are cancelled.
    """
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and
    # without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        proxy_headers=False,  # as wxkf.server: the caller's address is the TCP peer's
        http=HeaderDeadline,  # as wxkf.server: a connection sends its headers in time or is closed
        timeout_graceful_shutdown=graceful,  # type: ignore[arg-type]  # any number works
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            raise RuntimeError(
                "the server did not start" + (f": {task.exception()!r}" if task.done() else "")
            )
        if server.should_exit:
            raise RuntimeError("the server failed during start-up")
        yield f"http://127.0.0.1:{port}"
    finally:
        ready.cancel()
        server.stop()
        if not await finished_within(task, STOP_TIMEOUT):
            raise RuntimeError(f"the server did not stop within {STOP_TIMEOUT:g} s")
        sock.close()
