"""The in-memory token cache: single flight, precise invalidation, refresh ahead of expiry."""

from __future__ import annotations

import asyncio

import pytest

from wecom.errors import ApiRateLimited, error_for
from wecom.tokens import AccessToken, AccessTokenProvider, GetTokenProvider, StaticTokenProvider


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A gettoken stand-in: numbered tokens, optionally held until released, optionally failing."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()
        self.fail: int | None = None
        self.reuse = False  # as WeCom: the current token until it expires
        self._current: AccessToken | None = None

    async def fetch(self) -> AccessToken:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise error_for(self.fail, "simulated", "gettoken")
        current = self._current
        if self.reuse and current is not None and self.clock() < current.expires_at:
            return current
        self._current = AccessToken.expiring_in(f"tok-{self.calls}", 7200, now=self.clock())
        return self._current


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def upstream(clock: Clock) -> Upstream:
    return Upstream(clock)


@pytest.fixture
def provider(upstream: Upstream, clock: Clock) -> GetTokenProvider:
    return GetTokenProvider(upstream.fetch, margin=300, retry_interval=10, clock=clock)


def test_providers_satisfy_the_protocol(provider: GetTokenProvider) -> None:
    assert isinstance(provider, AccessTokenProvider)
    assert isinstance(StaticTokenProvider("t"), AccessTokenProvider)


def test_access_token() -> None:
    token = AccessToken.expiring_in("secret-token", 7200, now=100.0)
    assert token.expires_at == 7300.0
    assert token.valid_for(now=7000.0) == 300.0
    assert "secret-token" not in repr(token)


async def test_static_provider() -> None:
    provider = StaticTokenProvider("fixed")
    await provider.invalidate("fixed")
    assert await provider.get() == "fixed"
    assert "fixed" not in repr(provider)


async def test_concurrent_gets_share_one_fetch(provider: GetTokenProvider, upstream: Upstream) -> None:
    upstream.release.clear()
    callers = [asyncio.create_task(provider.get()) for _ in range(100)]
    await asyncio.wait_for(upstream.started.wait(), 5)
    upstream.release.set()
    assert set(await asyncio.gather(*callers)) == {"tok-1"}
    assert upstream.calls == 1 == provider.fetches
    assert await provider.get() == "tok-1"
    assert upstream.calls == 1


async def test_stale_invalidation_does_not_refetch(provider: GetTokenProvider, upstream: Upstream) -> None:
    assert await provider.get() == "tok-1"
    await provider.invalidate("tok-0-long-gone")
    assert await provider.get() == "tok-1"
    assert upstream.calls == 1


async def test_concurrent_reporters_cost_one_refresh(provider: GetTokenProvider, upstream: Upstream) -> None:
    token = await provider.get()
    await asyncio.gather(*(provider.invalidate(token) for _ in range(20)))
    assert set(await asyncio.gather(*(provider.get() for _ in range(20)))) == {"tok-2"}
    await provider.invalidate(token)  # a late report about the old token changes nothing
    assert await provider.get() == "tok-2"
    assert upstream.calls == 2


async def test_refreshes_margin_before_expiry(
    provider: GetTokenProvider, upstream: Upstream, clock: Clock
) -> None:
    assert await provider.get() == "tok-1"
    clock.now += 7200 - 300 - 1
    assert await provider.get() == "tok-1"
    clock.now += 1
    assert await provider.get() == "tok-2"


async def test_an_upstream_that_returns_the_held_token_is_asked_once_per_lifetime(
    provider: GetTokenProvider, upstream: Upstream, clock: Clock
) -> None:
    upstream.reuse = True
    assert await provider.get() == "tok-1"
    clock.now += 7200 - 300  # inside the margin: one refresh, which gets tok-1 back
    for _ in range(20):
        assert await provider.get() == "tok-1"
        clock.now += 10
    assert upstream.calls == 2
    clock.now += 100  # tok-1 expired
    assert await provider.get() == "tok-3"
    clock.now += 7200 - 300  # learned: no early refresh in the next lifetime
    for _ in range(29):
        assert await provider.get() == "tok-3"
        clock.now += 10
    assert upstream.calls == 3
    clock.now += 10
    assert await provider.get() == "tok-4"


async def test_failed_refresh_serves_the_still_valid_token(
    provider: GetTokenProvider, upstream: Upstream, clock: Clock
) -> None:
    await provider.get()
    clock.now += 7000  # inside the margin, not expired
    upstream.fail = 45009
    assert await provider.get() == "tok-1"
    assert await provider.get() == "tok-1"
    assert upstream.calls == 2  # no new attempt before retry_interval
    clock.now += 10
    upstream.fail = None
    assert await provider.get() == "tok-3"


async def test_failure_without_a_valid_token_reaches_every_waiter(
    provider: GetTokenProvider, upstream: Upstream
) -> None:
    upstream.fail = 45009
    upstream.release.clear()
    callers = [asyncio.create_task(provider.get()) for _ in range(10)]
    await asyncio.wait_for(upstream.started.wait(), 5)
    upstream.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, ApiRateLimited) for result in results)
    assert upstream.calls == 1


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(
    provider: GetTokenProvider, upstream: Upstream
) -> None:
    upstream.release.clear()
    first = asyncio.create_task(provider.get())
    await asyncio.wait_for(upstream.started.wait(), 5)
    second = asyncio.create_task(provider.get())
    first.cancel()
    upstream.release.set()
    assert await second == "tok-1"
    assert upstream.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await first
