"""Access tokens as rarely fetched as WeCom allows, and never fetched on a stranger's behalf for free.

``gettoken`` is rate limited per app and every puppet, gateway and manager replica needs a token, so
one :class:`TokenService` answers them all.

What WeCom does, and so what this does:

* ``gettoken`` returns the app's current token until it expires; asking early only returns the same
  token with less time left. So a token is renewed exactly once per lifetime, at ``renew_at``: just
  after the latest moment WeCom's copy can expire (the answer's ``expires_in`` counted from when the
  answer arrived, plus ``renew_grace`` for WeCom's rounding to whole seconds). Until ``expires_at``
  (``expires_in`` counted from when the request left, minus ``serve_margin``) the current token is
  served; callers arriving in the second or two between wait for the renewal. If a renewal returns
  the current token anyway (WeCom's clock, or an invalidation WeCom did not agree with), its new
  ``expires_in`` is recorded and the next renewal waits for it: a wasted call is never repeated.
* Across replicas, a lease on the app's document lets exactly one replica renew; the others read its
  result. A background pass wakes at the earliest ``renew_at`` so that callers rarely wait.
* In one process, concurrent callers share one resolution; a short memory cache serves the hot path.
* Invalidation reports (40001/40014/42001 seen by a client) force a refresh only if the reported token
  is still the current one (N clients reporting one revoked token cost one call), and at most one per
  app per ``invalidate_interval`` (counted from the last forced refresh, not the last renewal).
* When upstream fails, the still-valid token keeps being served and retries back off exponentially.

Against strangers (the HTTP routes need no authentication): a (corpid, secret) pair is *proven* once
WeCom issued a token for it, and only proven pairs are stored. For an unproven pair, WeCom's refusal
is cached (bounded, ``refusal_ttl``) and answered locally with WeCom's own errcode, and each upstream
call is charged to a token bucket per caller address, one per corpid and one for all unproven pairs
together (``OverBudget``, 45009, once any is empty). In-process callers (``caller=None``: the
manager's proxy and registration) and every call for a proven pair are never charged, so an
attacker's budget cannot starve them. Every map is bounded (LRU).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from token_service.limits import Budget, LruMap, RefusalCache
from token_service.metrics import REFUSED_LOCALLY, UPSTREAM_CALLS
from token_service.store import Issue, TokenRecord, TokenStore
from wecom.errors import WeComError
from wecom.tokens import AccessToken
from wxkf.retry import JITTER
from wxkf.single_flight import SingleFlight

log = logging.getLogger(__name__)

INVALID_CREDENTIAL = 40001
INVALID_CORPID = 40013
RATE_LIMITED = 45009
SYSTEM_BUSY = -1
# WeCom refusing the credentials themselves: the pair is not (or no longer) proven
CREDENTIALS_REFUSED = frozenset({INVALID_CREDENTIAL, INVALID_CORPID})
# failures that say nothing about the credentials
TRANSIENT = frozenset({SYSTEM_BUSY, RATE_LIMITED, 45033})

Fetch = Callable[[str, str], Awaitable[AccessToken]]


class TokenUnavailable(Exception):
    """No valid token can be served; carries the errcode/errmsg to answer in WeCom's shape."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class OverBudget(TokenUnavailable):
    """A caller (or a corpid) used up its budget of upstream calls for unproven credentials."""

    def __init__(self, errmsg: str, retry_after: float) -> None:
        super().__init__(RATE_LIMITED, errmsg)
        self.retry_after = retry_after


def budget_key(address: str) -> str:
    """Who a caller's upstream calls are charged to: its IPv4 address, or its IPv6 /64 (one host
    commonly holds a whole /64, so single IPv6 addresses would be free to pick)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: float

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


@dataclass(frozen=True)
class TokenPolicy:
    """Timings in seconds, sizes in entries. Defaults suit WeCom's 7200 s tokens."""

    serve_margin: float = 1.0  # a token is served until this long before its (conservative) expiry
    renew_grace: float = 1.0  # renew this long after the latest moment WeCom's copy can expire
    refresh_check_interval: float = 30.0  # the background pass looks at least this often
    invalidate_interval: float = 10.0  # at most one forced refresh per app per interval
    memory_ttl: float = 5.0  # how long a replica trusts its memory before re-reading Mongo
    lease_ttl: float = 15.0  # must exceed the upstream call's timeout
    wait_timeout: float = 20.0  # how long a caller waits for another replica's refresh
    poll_interval: float = 0.05
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    refusal_ttl: float = 60.0  # an unproven pair WeCom refused is refused locally this long...
    transient_refusal_ttl: float = 5.0  # ...or this long if the failure said nothing about it
    caller_burst: float = 10.0  # upstream calls for unproven pairs per caller address: a burst...
    caller_rate: float = 0.2  # ...then this many per second
    corp_burst: float = 20.0  # the same per corpid, all callers together
    corp_rate: float = 0.5
    total_burst: float = 100.0  # the same for all unproven pairs together (many addresses, many corpids)
    total_rate: float = 5.0
    max_entries: int = 10_000  # bound of each in-memory map (cached tokens, refusals, budgets)


@dataclass(frozen=True, slots=True)
class RenewalPass:
    renewed: int
    next_at: float  # when the next pass is due


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
        size = self.policy.max_entries
        self._memory: LruMap[_Cached] = LruMap(size)
        self._refusals = RefusalCache(size, self.clock)
        self._by_caller = Budget(self.policy.caller_burst, self.policy.caller_rate, size, self.clock)
        self._by_corp = Budget(self.policy.corp_burst, self.policy.corp_rate, size, self.clock)
        self._in_total = Budget(self.policy.total_burst, self.policy.total_rate, 1, self.clock)
        self._warned: LruMap[float] = LruMap(size)
        self._single_flight: SingleFlight[IssuedToken] = SingleFlight()

    # -- public API -------------------------------------------------------------------------
    async def get(self, corp_id: str, secret: str, *, caller: str | None = None) -> IssuedToken:
        """A token valid for more than ``policy.serve_margin`` seconds (or the last valid one).

        ``caller`` (a client address) is charged if an upstream call is needed for a pair that is
        not proven yet; ``None`` (in-process callers) is never charged."""
        key = self.store.key_for(corp_id, secret)
        now = self.clock()
        cached = self._memory.get(key)
        if (
            cached is not None
            and now - cached.checked_at < self.policy.memory_ttl
            and now < cached.expires_at - self.policy.serve_margin
        ):
            return IssuedToken(cached.token, cached.expires_at)
        return await self._single_flight.run(key, lambda: self._resolve(corp_id, secret, key, None, caller))

    async def invalidate(
        self, corp_id: str, secret: str, token: str, *, caller: str | None = None
    ) -> IssuedToken:
        """A client saw ``token`` rejected; refresh unless that already happened recently."""
        key = self.store.key_for(corp_id, secret)
        self._memory.pop(key)
        return await self._single_flight.run(
            f"{key}!invalidate", lambda: self._resolve(corp_id, secret, key, token, caller)
        )

    async def renew_due(self) -> RenewalPass:
        """One background pass: renew every token whose ``renew_at`` has come."""
        now = self.clock()
        next_at = now + self.policy.refresh_check_interval
        renewed = 0
        for record in await self.store.due_for_renewal(now):
            if record.retry_at > now:
                next_at = min(next_at, record.retry_at)
                continue
            if await self.store.try_lease(record, self.owner, now, self.policy.lease_ttl):
                try:
                    await self._renew_under_lease(record)
                    renewed += 1
                except TokenUnavailable as exc:
                    log.warning("token renewal failed for corp %s: %s", record.corp_id, exc)
                continue
            # another replica holds the lease (or just renewed): look again once its lease ends
            current = await self.store.load(record.key)
            if current is not None and current.renew_at <= now:
                next_at = min(next_at, max(current.lease_until, now + self.policy.poll_interval))
        upcoming = await self.store.next_renewal(self.clock(), next_at)
        return RenewalPass(renewed, next_at if upcoming is None else min(next_at, upcoming))

    async def run_refresher(self) -> None:
        """Background loop for the service's lifespan: a pass at each ``renew_at``."""
        while True:
            try:
                delay = (await self.renew_due()).next_at - self.clock()
            except Exception:
                log.exception("token renewal pass failed")
                delay = self.policy.refresh_check_interval
            await asyncio.sleep(
                min(self.policy.refresh_check_interval, max(self.policy.poll_interval, delay))
            )

    def entries(self) -> dict[str, int]:
        """How many entries each in-memory map holds (each is bounded by ``policy.max_entries``)."""
        return {
            "tokens": len(self._memory),
            "refusals": len(self._refusals),
            "caller_budgets": len(self._by_caller),
            "corp_budgets": len(self._by_corp),
            "warned": len(self._warned),
        }

    def provider(self, corp_id: str, secret: str) -> ServiceTokenProvider:
        """An :class:`wecom.tokens.AccessTokenProvider` for one app, for in-process clients."""
        return ServiceTokenProvider(self, corp_id, secret)

    # -- resolution -------------------------------------------------------------------------
    def _usable(self, record: TokenRecord, now: float, stale: str | None) -> bool:
        if record.token is None or now >= record.expires_at - self.policy.serve_margin:
            return False
        if stale is not None and hmac.compare_digest(record.token.encode(), stale.encode()):
            # Reported invalid: refresh, unless we did so moments ago (then the report is a straggler).
            return now - record.forced_at < self.policy.invalidate_interval
        return True

    def _issue(self, record: TokenRecord, now: float) -> IssuedToken:
        assert record.token is not None
        self._memory.put(record.key, _Cached(record.token, record.expires_at, now))
        return IssuedToken(record.token, record.expires_at)

    async def _resolve(
        self, corp_id: str, secret: str, key: str, stale: str | None, caller: str | None
    ) -> IssuedToken:
        self._raise_if_refused(corp_id, key)
        record = await self.store.load(key)
        if record is None:
            return await self._prove(corp_id, secret, key, caller)
        deadline = self.clock() + self.policy.wait_timeout
        while True:
            now = self.clock()
            if not hmac.compare_digest(record.secret.encode(), secret.encode()):
                raise TokenUnavailable(INVALID_CREDENTIAL, "invalid credential")
            if self._usable(record, now, stale):
                return self._issue(record, now)
            if record.retry_at > now:
                return self._serve_during_backoff(record, now)
            wake_at = now + self.policy.poll_interval
            if stale is None and now < record.renew_at:
                # past serving, but gettoken would answer this same token until renew_at
                wake_at = min(record.renew_at, now + 10 * self.policy.poll_interval)
            elif await self.store.try_lease(record, self.owner, now, self.policy.lease_ttl):
                return await self._renew_under_lease(record, forced=stale is not None)
            if now >= deadline:
                if record.valid_for(now) > 0:
                    return self._issue(record, now)
                raise TokenUnavailable(SYSTEM_BUSY, "timed out waiting for the access token's renewal")
            await asyncio.sleep(max(0.0, min(wake_at, deadline) - now))
            reread = await self.store.load(key)
            if reread is None:  # another replica saw WeCom refuse the secret and forgot the pair
                raise TokenUnavailable(
                    INVALID_CREDENTIAL, "invalid credential (corpsecret rejected by WeCom)"
                )
            record = reread

    def _serve_during_backoff(self, record: TokenRecord, now: float) -> IssuedToken:
        if record.valid_for(now) > 0:
            return self._issue(record, now)
        raise TokenUnavailable(
            record.failure_errcode if record.failure_errcode is not None else SYSTEM_BUSY,
            f"no valid access token: upstream gettoken failed ({record.failure_errmsg}); "
            f"next attempt in {int(record.retry_at - now)} s",
        )

    async def _call_upstream(self, corp_id: str, secret: str, reason: str, current: str | None) -> Issue:
        """One ``gettoken``, timed: served until ``expires_in`` after the request left (minus nothing
        more: ``serve_margin`` applies when serving), renewed ``renew_grace`` after ``expires_in``
        from when the answer arrived (the latest WeCom's copy can expire)."""
        started = self.clock()
        self.upstream_calls += 1
        try:
            fresh = await self.fetch(corp_id, secret)
        except WeComError:
            UPSTREAM_CALLS.labels(reason, "refused").inc()
            raise
        except Exception:
            UPSTREAM_CALLS.labels(reason, "unreachable").inc()
            raise
        same = current is not None and hmac.compare_digest(fresh.token.encode(), current.encode())
        UPSTREAM_CALLS.labels(reason, "same" if same else "new").inc()
        now = self.clock()
        latency = max(0.0, now - started)
        valid_for = fresh.expires_at - now
        return Issue(
            token=fresh.token,
            expires_at=now + valid_for - latency,
            renew_at=now + valid_for + self.policy.renew_grace,
            fetched_at=now,
        )

    # -- unproven pairs ---------------------------------------------------------------------
    def _raise_if_refused(self, corp_id: str, key: str) -> None:
        for refused_key in (key, f"corp {corp_id}"):
            refusal = self._refusals.get(refused_key)
            if refusal is not None:
                REFUSED_LOCALLY.labels("cached_refusal").inc()
                raise TokenUnavailable(refusal.errcode, refusal.errmsg)

    def _remember_refusal(self, corp_id: str, key: str, errcode: int, errmsg: str) -> None:
        ttl = self.policy.transient_refusal_ttl if errcode in TRANSIENT else self.policy.refusal_ttl
        self._refusals.put(f"corp {corp_id}" if errcode == INVALID_CORPID else key, errcode, errmsg, ttl)

    def _charge(self, corp_id: str, caller: str | None) -> None:
        if caller is None:
            return
        caller = budget_key(caller)
        budgets = ((self._by_caller, caller), (self._by_corp, corp_id), (self._in_total, ""))
        wait = max(budget.wait_for(key) for budget, key in budgets)
        if wait > 0:
            REFUSED_LOCALLY.labels("over_budget").inc()
            now = self.clock()
            last = self._warned.get(caller)
            if last is None or now - last >= 60.0:
                self._warned.put(caller, now)
                log.warning(
                    "gettoken for unproven credentials from %s over budget (corp %s)", caller, corp_id
                )
            raise OverBudget(
                "api freq out of limit: too many gettoken calls with corpid/corpsecret pairs the token "
                f"service has not seen work yet; retry in {max(1, round(wait))} s",
                wait,
            )
        for budget, key in budgets:
            budget.spend(key)

    async def _prove(self, corp_id: str, secret: str, key: str, caller: str | None) -> IssuedToken:
        """First ``gettoken`` for a pair nobody stored: charged to the caller, stored only on success."""
        self._charge(corp_id, caller)
        try:
            issue = await self._call_upstream(corp_id, secret, "first", None)
        except WeComError as exc:
            log.warning("gettoken refused unproven credentials for corp %s: errcode %s", corp_id, exc.errcode)
            self._remember_refusal(corp_id, key, exc.errcode, exc.errmsg)
            raise TokenUnavailable(exc.errcode, exc.errmsg) from None
        except Exception as exc:  # transport errors: unreachable, timeout, bad JSON
            errmsg = f"upstream unreachable: {type(exc).__name__}"
            self._remember_refusal(corp_id, key, SYSTEM_BUSY, errmsg)
            raise TokenUnavailable(SYSTEM_BUSY, errmsg) from None
        record = await self.store.save_proven(corp_id, secret, issue)
        log.info("first access token for corp %s (valid %d s)", corp_id, issue.expires_at - issue.fetched_at)
        return self._issue(record, self.clock())

    # -- proven pairs -----------------------------------------------------------------------
    async def _renew_under_lease(self, record: TokenRecord, *, forced: bool = False) -> IssuedToken:
        """Call upstream once while holding the lease; persist the outcome and release the lease."""
        try:
            reason = "forced" if forced else "renewal"
            issue = await self._call_upstream(record.corp_id, record.secret, reason, record.token)
        except WeComError as exc:
            return await self._record_failure(record, exc.errcode, exc.errmsg)
        except Exception as exc:  # transport errors: unreachable, timeout, bad JSON
            return await self._record_failure(record, SYSTEM_BUSY, f"upstream unreachable: {exc}")
        await self.store.save_token(record.key, issue, forced=forced)
        valid = issue.expires_at - issue.fetched_at
        if record.token is not None and hmac.compare_digest(issue.token.encode(), record.token.encode()):
            log.info(
                "gettoken returned corp %s's current token again (valid %d s more); renewing when it expires",
                record.corp_id,
                valid,
            )
        else:
            log.info("renewed access token for corp %s (valid %d s)", record.corp_id, valid)
        self._memory.put(record.key, _Cached(issue.token, issue.expires_at, issue.fetched_at))
        return IssuedToken(issue.token, issue.expires_at)

    async def _record_failure(self, record: TokenRecord, errcode: int, errmsg: str) -> IssuedToken:
        now = self.clock()
        if errcode in CREDENTIALS_REFUSED and record.valid_for(now) <= 0:
            # WeCom no longer accepts the pair and nothing valid is left: it is not proven any more.
            await self.store.delete(record.key)
            self._memory.pop(record.key)
            self._remember_refusal(record.corp_id, record.key, errcode, errmsg)
            log.warning(
                "WeCom refuses the credentials of corp %s (errcode %s); forgotten", record.corp_id, errcode
            )
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
