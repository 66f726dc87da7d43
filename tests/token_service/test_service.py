"""TokenService: single flight in-process and across replicas, invalidation, failures, secrecy at rest."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest

from tests.support.clock import FakeClock
from token_service.service import TokenPolicy, TokenService, TokenUnavailable
from token_service.store import COLLECTION, TokenStore
from wecom.errors import error_for
from wecom.tokens import AccessToken
from wxkf.database import Database
from wxkf.secretbox import SecretBox

CORP = "ww0000000000000001"
SECRET = "app-secret-" + "x" * 32


class Upstream:
    """Stands in for WeCom's gettoken: counts calls, can be gated, failed or made to reject secrets."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail_with: int | None = None
        self.valid_secrets = {SECRET}

    async def fetch(self, corp_id: str, secret: str) -> AccessToken:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if secret not in self.valid_secrets:
            raise error_for(40001, "invalid credential", "gettoken")
        if self.fail_with is not None:
            raise error_for(self.fail_with, "simulated failure", "gettoken")
        return AccessToken(token=f"tok-{self.calls}-{secrets.token_hex(4)}", expires_at=self.clock() + 7200)


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(secrets.token_bytes(32))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstream(clock: FakeClock) -> Upstream:
    return Upstream(clock)


def make_service(
    db: Database, box: SecretBox, upstream: Upstream, clock: FakeClock, **policy: float
) -> TokenService:
    return TokenService(
        TokenStore(db, box), upstream.fetch, TokenPolicy(poll_interval=0.005, **policy), clock=clock
    )


async def test_concurrent_requests_in_one_process_cost_one_upstream_call(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    upstream.gate = asyncio.Event()
    callers = [asyncio.create_task(service.get(CORP, SECRET)) for _ in range(200)]
    await asyncio.sleep(0)
    upstream.gate.set()
    tokens = {issued.token for issued in await asyncio.gather(*callers)}
    assert upstream.calls == 1
    assert len(tokens) == 1


async def test_two_replicas_share_one_upstream_call(db, box, upstream, clock):
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    upstream.gate = asyncio.Event()
    callers = [asyncio.create_task(s.get(CORP, SECRET)) for s in (first, second) for _ in range(100)]
    await upstream.entered.wait()  # one replica is inside gettoken, holding the lease
    upstream.gate.set()
    tokens = {issued.token for issued in await asyncio.gather(*callers)}
    assert upstream.calls == 1
    assert len(tokens) == 1


async def test_replica_that_read_before_anothers_refresh_does_not_call_upstream_again(
    db, box, upstream, clock
):
    """The race behind a once-seen flake: A reads "no token", B refreshes and frees the lease, then A
    tries to lease on what it read. A must be refused and find B's token on re-reading."""
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    key = await first.store.ensure(CORP, SECRET)
    read_by_first = await first.store.load(key)
    assert read_by_first is not None and read_by_first.token is None

    issued = await second.get(CORP, SECRET)
    assert upstream.calls == 1

    assert not await first.store.try_lease(read_by_first, first.owner, clock(), 30.0)
    assert (await first.get(CORP, SECRET)).token == issued.token
    assert upstream.calls == 1


async def test_replica_that_read_before_anothers_failure_waits_for_the_backoff(db, box, upstream, clock):
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    await second.get(CORP, SECRET)
    key = first.store.key_for(CORP, SECRET)
    clock.advance(7200)  # expired
    read_by_first = await first.store.load(key)
    assert read_by_first is not None

    upstream.fail_with = 45009
    with pytest.raises(TokenUnavailable):
        await second.get(CORP, SECRET)
    assert upstream.calls == 2

    assert not await first.store.try_lease(read_by_first, first.owner, clock(), 30.0)


async def test_cached_token_is_served_until_close_to_expiry(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    clock.advance(7000)
    assert (await service.get(CORP, SECRET)).token == token
    clock.advance(150)  # less than min_remaining (60 s) left
    assert (await service.get(CORP, SECRET)).token != token
    assert upstream.calls == 2


async def test_wrong_secret_gets_40001_never_the_cached_token(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    await service.get(CORP, SECRET)
    with pytest.raises(TokenUnavailable) as refused:
        await service.get(CORP, "not-the-secret")
    assert refused.value.errcode == 40001
    # refused locally for a while: a flood of bad secrets costs one upstream call
    calls = upstream.calls
    for _ in range(20):
        with pytest.raises(TokenUnavailable):
            await service.get(CORP, "not-the-secret")
    assert upstream.calls == calls


async def test_invalidate_storm_costs_one_refresh_and_stragglers_none(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    old = (await service.get(CORP, SECRET)).token
    clock.advance(120)
    fresh = await asyncio.gather(*(service.invalidate(CORP, SECRET, old) for _ in range(50)))
    assert upstream.calls == 2
    assert {issued.token for issued in fresh} != {old}
    # reports about the old token after the refresh do nothing
    await asyncio.gather(*(service.invalidate(CORP, SECRET, old) for _ in range(50)))
    assert upstream.calls == 2


async def test_invalidate_is_rate_limited_per_app(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock, invalidate_interval=60)
    token = (await service.get(CORP, SECRET)).token
    await service.invalidate(CORP, SECRET, token)  # refreshed 0 s ago: a straggler, ignored
    assert upstream.calls == 1
    clock.advance(61)
    await service.invalidate(CORP, SECRET, token)
    assert upstream.calls == 2


async def test_upstream_down_keeps_serving_the_valid_token_and_backs_off(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    upstream.fail_with = -1
    clock.advance(7200 - 30)  # needs a refresh, but the old token is still valid for 30 s
    assert (await service.get(CORP, SECRET)).token == token
    calls = upstream.calls
    clock.advance(1)
    for _ in range(10):  # within the backoff: no further upstream calls
        assert (await service.get(CORP, SECRET)).token == token
    assert upstream.calls == calls


async def test_no_valid_token_is_reported_with_the_upstream_error(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    await service.get(CORP, SECRET)
    upstream.fail_with = 45009
    clock.advance(7300)
    with pytest.raises(TokenUnavailable) as failure:
        await service.get(CORP, SECRET)
    assert failure.value.errcode == 45009
    assert "upstream gettoken failed" in failure.value.errmsg
    upstream.fail_with = None
    clock.advance(600)  # past the backoff
    assert (await service.get(CORP, SECRET)).token.startswith("tok-")


async def test_proactive_refresh_renews_tokens_before_expiry(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock, refresh_ahead=600, refresh_jitter=0)
    token = (await service.get(CORP, SECRET)).token
    assert await service.refresh_due() == 0
    clock.advance(7200 - 500)
    assert await service.refresh_due() == 1
    assert (await service.get(CORP, SECRET)).token != token
    assert upstream.calls == 2


async def test_secret_and_token_are_sealed_at_rest(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    raw = str([doc async for doc in db[COLLECTION].find({})])
    assert SECRET not in raw
    assert token not in raw
    assert base64.b64encode(SECRET.encode()).decode() not in raw
