"""Access tokens as rarely fetched as physically possible.

``gettoken`` is rate limited per app and every puppet, gateway and manager replica needs a token, so
one :class:`TokenService` answers them all:

* a short in-process memory cache serves the hot path without touching Mongo;
* concurrent callers in one process share one resolution (an ``asyncio`` task per app);
* across replicas, a lease on the app's Mongo document lets exactly one replica call upstream while
  the others wait for its result;
* a background pass refreshes tokens shortly before expiry, with jitter, so callers rarely wait;
* invalidation reports (40001/40014/42001 seen by a client) force at most one refresh per app per
  ``invalidate_interval`` and only if the reported token is still the current one;
* when upstream fails, the still-valid token keeps being served and retries back off exponentially.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from token_service.store import TokenRecord, TokenStore
from wecom.errors import WeComError
from wecom.tokens import AccessToken
from wxkf.retry import JITTER
from wxkf.single_flight import SingleFlight
from wxkf.tasks import run_every

log = logging.getLogger(__name__)

INVALID_CREDENTIAL = 40001
SYSTEM_BUSY = -1

Fetch = Callable[[str, str], Awaitable[AccessToken]]


class TokenUnavailable(Exception):
    """No valid token can be served; carries the errcode/errmsg to answer in WeCom's shape."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: float

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


@dataclass(frozen=True)
class TokenPolicy:
    """Timings, all in seconds. Defaults suit WeCom's 7200 s tokens."""

    min_remaining: float = 60.0  # a token with less validity left is refreshed before being served
    refresh_ahead: float = 600.0  # the background pass refreshes tokens this long before expiry...
    refresh_jitter: float = 300.0  # ...plus up to this much earlier, so replicas spread out
    refresh_check_interval: float = 30.0
    invalidate_interval: float = 10.0  # at most one forced refresh per app per interval
    memory_ttl: float = 5.0  # how long a replica trusts its memory before re-reading Mongo
    lease_ttl: float = 15.0  # must exceed the upstream call's timeout
    wait_timeout: float = 20.0  # how long a caller waits for another replica's refresh
    poll_interval: float = 0.05
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    negative_ttl: float = 60.0  # how long a secret rejected by upstream is refused locally


@dataclass(slots=True)
class _Cached:
    token: str
    expires_at: float
    checked_at: float


@dataclass
class TokenService:
    """Serves tokens per (corp_id, secret); see the module docstring for the strategy."""

    store: TokenStore
    fetch: Fetch
    policy: TokenPolicy = field(default_factory=TokenPolicy)
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=lambda: secrets.token_hex(8))
    upstream_calls: int = 0

    def __post_init__(self) -> None:
        self._memory: dict[str, _Cached] = {}
        self._rejected: dict[str, float] = {}
        self._single_flight: SingleFlight[IssuedToken] = SingleFlight()

    # -- public API -------------------------------------------------------------------------
    async def get(self, corp_id: str, secret: str) -> IssuedToken:
        """A token valid for at least ``policy.min_remaining`` seconds (or the last valid one)."""
        key = self.store.key_for(corp_id, secret)
        now = self.clock()
        cached = self._memory.get(key)
        fresh = cached is not None and now - cached.checked_at < self.policy.memory_ttl
        if cached is not None and fresh and cached.expires_at - now > self.policy.min_remaining:
            return IssuedToken(cached.token, cached.expires_at)
        return await self._single_flight.run(key, lambda: self._resolve(corp_id, secret, key, stale=None))

    async def invalidate(self, corp_id: str, secret: str, token: str) -> IssuedToken:
        """A client saw ``token`` rejected; refresh unless that already happened recently."""
        key = self.store.key_for(corp_id, secret)
        self._memory.pop(key, None)
        return await self._single_flight.run(
            f"{key}!invalidate", lambda: self._resolve(corp_id, secret, key, stale=token)
        )

    async def refresh_due(self) -> int:
        """One proactive pass: refresh every token close to expiry. Returns how many were refreshed."""
        now = self.clock()
        horizon = now + self.policy.refresh_ahead + JITTER.uniform(0, self.policy.refresh_jitter)
        refreshed = 0
        for key in await self.store.due_for_refresh(horizon):
            record = await self.store.load(key)
            if record is None or record.retry_at > now:
                continue
            if await self.store.try_lease(record, self.owner, now, self.policy.lease_ttl):
                try:
                    await self._fetch_under_lease(record)
                    refreshed += 1
                except TokenUnavailable as exc:
                    log.warning("proactive refresh failed for corp %s: %s", record.corp_id, exc)
        return refreshed

    async def run_refresher(self) -> None:
        """Background loop for the service's lifespan."""
        await run_every(
            self.refresh_due, self.policy.refresh_check_interval, "token refresh pass", jitter=0.2
        )

    def provider(self, corp_id: str, secret: str) -> ServiceTokenProvider:
        """An :class:`wecom.tokens.AccessTokenProvider` for one app, for in-process clients."""
        return ServiceTokenProvider(self, corp_id, secret)

    # -- resolution -------------------------------------------------------------------------
    def _usable(self, record: TokenRecord, now: float, stale: str | None) -> bool:
        if record.token is None or record.valid_for(now) <= self.policy.min_remaining:
            return False
        if stale is not None and hmac.compare_digest(record.token.encode(), stale.encode()):
            # Reported invalid: refresh, unless we did so moments ago (then the report is a straggler).
            return now - record.refreshed_at < self.policy.invalidate_interval
        return True

    def _issue(self, record: TokenRecord, now: float) -> IssuedToken:
        assert record.token is not None
        self._memory[record.key] = _Cached(record.token, record.expires_at, now)
        return IssuedToken(record.token, record.expires_at)

    async def _resolve(self, corp_id: str, secret: str, key: str, stale: str | None) -> IssuedToken:
        now = self.clock()
        if self._rejected.get(key, 0.0) > now:
            raise TokenUnavailable(INVALID_CREDENTIAL, "invalid credential (corpsecret rejected by WeCom)")
        record = await self.store.load(key)
        if record is None:
            await self.store.ensure(corp_id, secret)
        deadline = now + self.policy.wait_timeout
        while True:
            now = self.clock()
            record = await self.store.load(key)
            if record is None:  # deleted by a replica that saw the secret rejected
                raise TokenUnavailable(
                    INVALID_CREDENTIAL, "invalid credential (corpsecret rejected by WeCom)"
                )
            if not hmac.compare_digest(record.secret.encode(), secret.encode()):
                raise TokenUnavailable(INVALID_CREDENTIAL, "invalid credential")
            if self._usable(record, now, stale):
                return self._issue(record, now)
            if record.retry_at > now:
                return self._serve_during_backoff(record, now)
            if await self.store.try_lease(record, self.owner, now, self.policy.lease_ttl):
                return await self._fetch_under_lease(record)
            if now >= deadline:
                if record.valid_for(now) > 0:
                    return self._issue(record, now)
                raise TokenUnavailable(SYSTEM_BUSY, "timed out waiting for another replica's token refresh")
            await asyncio.sleep(self.policy.poll_interval)

    def _serve_during_backoff(self, record: TokenRecord, now: float) -> IssuedToken:
        if record.valid_for(now) > 0:
            return self._issue(record, now)
        raise TokenUnavailable(
            record.failure_errcode if record.failure_errcode is not None else SYSTEM_BUSY,
            f"no valid access token: upstream gettoken failed ({record.failure_errmsg}); "
            f"next attempt in {int(record.retry_at - now)} s",
        )

    async def _fetch_under_lease(self, record: TokenRecord) -> IssuedToken:
        """Call upstream once while holding the lease; persist the outcome and release the lease."""
        now = self.clock()
        self.upstream_calls += 1
        try:
            fresh = await self.fetch(record.corp_id, record.secret)
        except WeComError as exc:
            return await self._record_failure(record, exc.errcode, exc.errmsg, now)
        except Exception as exc:  # transport errors: unreachable, timeout, bad JSON
            return await self._record_failure(record, SYSTEM_BUSY, f"upstream unreachable: {exc}", now)
        await self.store.save_token(record.key, self.owner, fresh.token, fresh.expires_at, now)
        log.info("refreshed access token for corp %s (valid %d s)", record.corp_id, fresh.expires_at - now)
        self._memory[record.key] = _Cached(fresh.token, fresh.expires_at, now)
        return IssuedToken(fresh.token, fresh.expires_at)

    async def _record_failure(
        self, record: TokenRecord, errcode: int, errmsg: str, now: float
    ) -> IssuedToken:
        if errcode == INVALID_CREDENTIAL and record.generation == 0:
            # The secret never worked: forget it rather than keep it, and refuse it locally for a while.
            await self.store.delete(record.key)
            self._rejected[record.key] = now + self.policy.negative_ttl
            raise TokenUnavailable(errcode, errmsg)
        failures = record.failures + 1
        delay = min(self.policy.backoff_max, self.policy.backoff_base * 2 ** (failures - 1))
        retry_at = now + delay * JITTER.uniform(0.8, 1.2)
        await self.store.save_failure(record.key, self.owner, errcode, errmsg, retry_at, failures)
        log.warning(
            "gettoken failed for corp %s: errcode %s (%s); retry in %.0f s",
            record.corp_id,
            errcode,
            errmsg,
            retry_at - now,
        )
        if record.valid_for(now) > 0:
            return self._issue(record, now)
        raise TokenUnavailable(errcode, f"no valid access token: upstream gettoken failed ({errmsg})")


@dataclass(frozen=True, slots=True)
class ServiceTokenProvider:
    """Adapts :class:`TokenService` to the :class:`wecom.tokens.AccessTokenProvider` protocol."""

    service: TokenService
    corp_id: str
    secret: str = field(repr=False)

    async def get(self) -> str:
        return (await self.service.get(self.corp_id, self.secret)).token

    async def invalidate(self, token: str) -> None:
        await self.service.invalidate(self.corp_id, self.secret, token)
