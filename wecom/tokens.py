"""Where a :class:`~wecom.client.WeComClient` gets its access_token from.

``gettoken`` is rate limited and every token stays valid for two hours, so tokens are cached and
shared. The client only needs :class:`AccessTokenProvider`; this module has the in-memory
implementations, and the Mongo-backed token service implements the same protocol across replicas.

``invalidate(token)`` names the token that was rejected, so that when many requests fail together
with the same token only the first report drops it: a report about a token already replaced is
ignored, and N concurrent reporters cost one refresh, not N.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["AccessToken", "AccessTokenProvider", "GetTokenProvider", "StaticTokenProvider"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token and when it expires, as wall-clock seconds (``time.time()``) so it can be persisted."""

    token: str = field(repr=False)
    expires_at: float

    @classmethod
    def expiring_in(cls, token: str, expires_in: float, *, now: float | None = None) -> AccessToken:
        """From gettoken's ``expires_in`` (seconds from now)."""
        return cls(token, (time.time() if now is None else now) + expires_in)

    def valid_for(self, now: float | None = None) -> float:
        """Seconds of validity left (negative once expired)."""
        return self.expires_at - (time.time() if now is None else now)


@runtime_checkable
class AccessTokenProvider(Protocol):
    async def get(self) -> str:
        """A token believed valid now."""
        ...

    async def invalidate(self, token: str) -> None:
        """WeCom rejected ``token``; drop it if it is still the current one."""
        ...


@dataclass(frozen=True, slots=True)
class StaticTokenProvider:
    """Always the same token; for tests and for proxies that inject the real token themselves."""

    token: str = field(repr=False)

    async def get(self) -> str:
        return self.token

    async def invalidate(self, token: str) -> None:
        return None


class GetTokenProvider:
    """One app's token, cached in memory and refreshed ``margin`` seconds before it expires.

    WeCom (and a token service in front of it) answers gettoken with the current token until that
    expires. The first time a refresh returns the token already held, the provider learns it: from
    then on it serves each token until it expires and fetches only then, one call per lifetime
    instead of a call on every ``get()`` inside the margin.

    Concurrent ``get()`` calls share a single in-flight fetch (a shielded task, so a cancelled caller
    does not cancel it for the others). If a refresh fails while the cached token has not expired yet,
    that token keeps being served and the next attempt waits ``retry_interval`` seconds, so a WeCom
    hiccup neither fails callers nor turns into a stream of gettoken calls.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[AccessToken]],
        *,
        margin: float = 300.0,
        retry_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self.margin = margin
        self.retry_interval = retry_interval
        self._clock = clock
        self._current: AccessToken | None = None
        self._retry_at = 0.0
        self._inflight: asyncio.Task[AccessToken] | None = None
        self.reuses_tokens = False  # learned: upstream returns the current token until it expires
        self.fetches = 0  # upstream calls made, for metrics and tests

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin!r}, cached={self._current is not None})"

    async def get(self) -> str:
        current = self._current
        if current is not None:
            now = self._clock()
            refresh_at = current.expires_at - (0.0 if self.reuses_tokens else self.margin)
            if now < refresh_at or (now < self._retry_at and now < current.expires_at):
                return current.token
        return (await self._refresh()).token

    async def invalidate(self, token: str) -> None:
        current = self._current
        if current is not None and hmac.compare_digest(current.token.encode(), token.encode()):
            log.info("access token reported invalid; fetching a new one on next use")
            self._current = None
            self._retry_at = 0.0

    async def _refresh(self) -> AccessToken:
        task = self._inflight
        if task is None:
            task = asyncio.ensure_future(self._fetch_once())
            self._inflight = task
            task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[AccessToken]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved, even if every waiter was cancelled meanwhile

    async def _fetch_once(self) -> AccessToken:
        self.fetches += 1
        try:
            fresh = await self._fetch()
        except Exception as exc:
            current = self._current
            now = self._clock()
            if current is None or now >= current.expires_at:
                raise
            self._retry_at = now + self.retry_interval
            log.warning("access token refresh failed (%s); serving the cached one", type(exc).__name__)
            return current
        held = self._current
        if held is not None and not self.reuses_tokens and hmac.compare_digest(held.token, fresh.token):
            log.info("gettoken returned the token held; from now on each token is kept until it expires")
            self.reuses_tokens = True
        self._current = fresh
        self._retry_at = 0.0
        return fresh
