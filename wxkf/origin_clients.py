"""One small httpx client per origin, for talking to many different hosts (puppets).

httpcore's connection pool walks *every* pooled connection on each request (``is_idle``,
``has_expired``...). One shared client holding a connection per puppet therefore costs time in
proportion to the fleet on every delivery: with 100 puppets at 200 deliveries/s that walk was 37 % of
the hub's CPU (docs/benchmarks.md). A client per origin keeps each walk to that puppet's few
connections. Clients are kept for the most recently used origins; an evicted client is closed once
any request it may still be serving has timed out.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict

import httpx

from wxkf.tasks import stop_tasks


class OriginClients:
    def __init__(
        self,
        *,
        max_origins: int = 1024,
        connections_per_origin: int = 8,
        timeout: float = 10.0,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self._clients: OrderedDict[str, httpx.AsyncClient] = OrderedDict()
        self._max_origins = max_origins
        self._limits = httpx.Limits(
            max_connections=connections_per_origin, max_keepalive_connections=connections_per_origin
        )
        self._timeout = timeout
        self._verify = verify if verify is not None else ssl.create_default_context()
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: set[httpx.AsyncClient] = set()

    def for_url(self, url: str) -> httpx.AsyncClient:
        """The client for ``url``'s origin (scheme, host, port), created on first use."""
        parsed = httpx.URL(url)
        origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
        client = self._clients.get(origin)
        if client is not None:
            self._clients.move_to_end(origin)
            return client
        client = httpx.AsyncClient(limits=self._limits, timeout=self._timeout, verify=self._verify)
        self._clients[origin] = client
        if len(self._clients) > self._max_origins:
            _, evicted = self._clients.popitem(last=False)
            self._close_later(evicted)
        return client

    def __len__(self) -> int:
        return len(self._clients)

    def _close_later(self, client: httpx.AsyncClient) -> None:
        self._retired.add(client)

        async def close() -> None:
            await asyncio.sleep(self._timeout + 1.0)  # let its in-flight requests finish or time out
            self._retired.discard(client)
            await client.aclose()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        await stop_tasks(list(self._closing))
        clients = [*self._clients.values(), *self._retired]
        self._clients.clear()
        self._retired.clear()
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
