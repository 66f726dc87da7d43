"""TokenService: single flight in-process and across replicas, invalidation, failures, secrecy at rest."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.token_service.fakes import CORP, SECRET, documents, make_service
from token_service.service import TokenUnavailable
from token_service.store import COLLECTION


def upstream_calls_metric(reason: str, result: str) -> float:
    labels = {"reason": reason, "result": result}
    return REGISTRY.get_sample_value("wxkf_token_upstream_calls_total", labels) or 0.0


RENEW_AT = 7200 + 1.0  # renew_grace (1 s) after a 7200 s token expires


async def test_concurrent_requests_in_one_process_cost_one_upstream_call(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    upstream.gate = asyncio.Event()
    callers = [asyncio.create_task(service.get(CORP, SECRET)) for _ in range(200)]
    await asyncio.sleep(0)
    upstream.gate.set()
    tokens = {issued.token for issued in await asyncio.gather(*callers)}
    assert upstream.calls == 1
    assert len(tokens) == 1


async def test_two_replicas_share_one_renewal(db, box, upstream, clock):
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    old = (await first.get(CORP, SECRET)).token
    clock.advance(RENEW_AT)
    upstream.gate = asyncio.Event()
    callers = [asyncio.create_task(s.get(CORP, SECRET)) for s in (first, second) for _ in range(100)]
    await upstream.entered.wait()  # one replica is inside gettoken, holding the lease
    upstream.gate.set()
    tokens = {issued.token for issued in await asyncio.gather(*callers)}
    assert upstream.calls == 2  # the first token, then one renewal for both replicas
    assert len(tokens) == 1 and old not in tokens


async def test_replicas_proving_a_pair_at_once_store_one_document(db, box, upstream, clock):
    """Nothing is stored before WeCom answers, so each replica may call once for a new pair; the
    first to store wins and WeCom (reuse) gave both the same token anyway."""
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    upstream.gate = asyncio.Event()
    callers = [asyncio.create_task(s.get(CORP, SECRET)) for s in (first, second) for _ in range(50)]
    await upstream.entered.wait()
    upstream.gate.set()
    tokens = {issued.token for issued in await asyncio.gather(*callers)}
    assert upstream.calls <= 2
    assert len(tokens) == 1
    assert await documents(db) == 1


async def test_the_background_renewal_and_a_caller_in_one_process_share_one_call(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    old = (await service.get(CORP, SECRET)).token
    clock.advance(RENEW_AT)
    upstream.gate = asyncio.Event()
    upstream.entered.clear()
    leases: list[bool] = []
    both_tried = asyncio.Event()
    take_lease = service.store.try_lease

    async def recorded_lease(*args: Any) -> bool:
        leases.append(await take_lease(*args))
        if len(leases) == 2:
            both_tried.set()
        return leases[-1]

    service.store.try_lease = recorded_lease
    background = asyncio.create_task(service.renew_due())
    await upstream.entered.wait()  # the pass holds the lease and is inside gettoken
    caller = asyncio.create_task(service.get(CORP, SECRET))
    await asyncio.wait_for(both_tried.wait(), timeout=10)  # the caller asked for the lease too
    assert leases == [True, False]
    upstream.gate.set()
    assert (await background).renewed == 1
    assert (await caller).token != old
    assert upstream.calls == 2


async def test_replica_that_read_before_anothers_renewal_does_not_call_upstream_again(
    db, box, upstream, clock
):
    """The race behind a once-seen flake: A reads "expired", B renews and frees the lease, then A
    tries to lease on what it read. A must be refused and find B's token on re-reading."""
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    await first.get(CORP, SECRET)
    clock.advance(RENEW_AT)
    read_by_first = await first.store.load(first.store.key_for(CORP, SECRET))
    assert read_by_first is not None

    issued = await second.get(CORP, SECRET)
    assert upstream.calls == 2

    assert not await first.store.try_lease(read_by_first, first.owner, clock(), 30.0)
    assert (await first.get(CORP, SECRET)).token == issued.token
    assert upstream.calls == 2


async def test_replica_that_read_before_anothers_failure_waits_for_the_backoff(db, box, upstream, clock):
    first = make_service(db, box, upstream, clock)
    second = make_service(db, box, upstream, clock)
    await second.get(CORP, SECRET)
    key = first.store.key_for(CORP, SECRET)
    clock.advance(7200)  # expired
    read_by_first = await first.store.load(key)
    assert read_by_first is not None

    upstream.fail_with = 45009
    clock.advance(1.5)
    with pytest.raises(TokenUnavailable):
        await second.get(CORP, SECRET)
    assert upstream.calls == 2

    assert not await first.store.try_lease(read_by_first, first.owner, clock(), 30.0)


# -- item 15: WeCom returns the current token until it expires ------------------------------------


async def test_token_is_served_until_it_expires_and_renewed_once_just_after(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    for left in (900, 600, 300, 60, 30, 3):  # asking WeCom early would get this same token back
        clock.now = upstream.call_times[0] + 7200 - left
        assert (await service.get(CORP, SECRET)).token == token
    assert upstream.calls == 1
    clock.now = upstream.call_times[0] + RENEW_AT
    renewed = (await service.get(CORP, SECRET)).token
    assert renewed != token
    assert upstream.calls == 2
    assert upstream.reused == 0  # no call was wasted on the still-valid token


async def test_renewal_pass_wakes_at_expiry_not_before(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    issued_at = upstream.call_times[0]
    for left in (900, 600, 300, 60, 3):
        clock.now = issued_at + 7200 - left
        assert (await service.renew_due()).renewed == 0
    assert upstream.calls == 1
    clock.now = issued_at + 7200 - 10  # within refresh_check_interval (30 s) of the renewal
    assert (await service.renew_due()).next_at == issued_at + RENEW_AT
    clock.now = issued_at + RENEW_AT
    assert (await service.renew_due()).renewed == 1
    assert (await service.get(CORP, SECRET)).token != token
    assert (upstream.calls, upstream.reused) == (2, 0)


async def test_renewal_that_gets_the_same_token_back_waits_for_its_new_expiry(db, box, upstream, clock):
    """WeCom's copy outlives the expires_in it answered by 30 s: the renewal at our expiry gets the
    same token with 29 s left; the next call waits for those 29 s instead of asking again."""
    upstream.skew = 30.0
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    issued_at = upstream.call_times[0]
    clock.now = issued_at + RENEW_AT
    wasted = upstream_calls_metric("renewal", "same")
    assert (await service.renew_due()).renewed == 1
    assert upstream.reused == 1
    assert upstream_calls_metric("renewal", "same") == wasted + 1  # visible to the operator
    assert (await service.get(CORP, SECRET)).token == token  # valid 29 s more
    for seconds in (5, 10, 20, 27.5):
        clock.now = issued_at + RENEW_AT + seconds
        assert (await service.renew_due()).renewed == 0
        assert (await service.get(CORP, SECRET)).token == token
    assert upstream.calls == 2
    clock.now = issued_at + 7200 + 30 + RENEW_AT - 7200 + 0.5
    assert (await service.get(CORP, SECRET)).token != token
    assert (upstream.calls, upstream.reused) == (3, 1)


async def test_a_caller_just_before_expiry_waits_for_the_renewal(db, box, upstream, clock):
    """In the second between serving stops (expiry - serve_margin) and renew_at, a caller waits for
    the renewal at renew_at rather than asking WeCom early for the same token."""
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    issued_at = upstream.call_times[0]
    clock.now = issued_at + 7200 - 0.5
    waiting = asyncio.create_task(service.get(CORP, SECRET))
    clock.now = issued_at + RENEW_AT  # the fake clock moves; the waiting caller sees it on its next look
    renewed = await asyncio.wait_for(waiting, timeout=10)
    assert renewed.token != token
    assert upstream.calls == 2
    assert upstream.call_times[1] >= issued_at + RENEW_AT


# -- refusals and invalidation --------------------------------------------------------------------


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
    assert await documents(db) == 1


async def test_invalidate_storm_costs_one_refresh_and_stragglers_none(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    old = (await service.get(CORP, SECRET)).token
    clock.advance(120)
    upstream.revoke()  # WeCom ended the token early
    fresh = await asyncio.gather(*(service.invalidate(CORP, SECRET, old) for _ in range(50)))
    assert upstream.calls == 2
    assert {issued.token for issued in fresh} != {old}
    # reports about the old token after the refresh do nothing
    await asyncio.gather(*(service.invalidate(CORP, SECRET, old) for _ in range(50)))
    assert upstream.calls == 2


async def test_invalidate_is_rate_limited_per_app(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock, invalidate_interval=60)
    token = (await service.get(CORP, SECRET)).token
    upstream.revoke()
    token = (await service.invalidate(CORP, SECRET, token)).token  # the first report is believed
    assert upstream.calls == 2
    clock.advance(30)
    assert (await service.invalidate(CORP, SECRET, token)).token == token  # 30 s later: ignored
    assert upstream.calls == 2
    clock.advance(31)
    await service.invalidate(CORP, SECRET, token)
    assert upstream.calls == 3


async def test_a_renewal_does_not_hold_back_an_invalidation(db, box, upstream, clock):
    """The interval counts from the last forced refresh: a token revoked moments after its renewal
    is refreshed at the first report (with short tokens, a renewal is always "moments ago")."""
    service = make_service(db, box, upstream, clock, invalidate_interval=60)
    await service.get(CORP, SECRET)
    clock.advance(RENEW_AT)
    renewed = (await service.get(CORP, SECRET)).token
    clock.advance(5)
    upstream.revoke()
    assert (await service.invalidate(CORP, SECRET, renewed)).token != renewed
    assert upstream.calls == 3


async def test_upstream_down_keeps_serving_the_valid_token_and_backs_off(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock, invalidate_interval=0)
    token = (await service.get(CORP, SECRET)).token
    upstream.fail_with = -1
    clock.advance(60)
    # a forced refresh fails, but the old token is still valid: it keeps being served
    assert (await service.invalidate(CORP, SECRET, token)).token == token
    calls = upstream.calls
    clock.advance(1)
    for _ in range(10):  # within the backoff: no further upstream calls
        assert (await service.invalidate(CORP, SECRET, token)).token == token
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


async def test_secret_and_token_are_sealed_at_rest(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    token = (await service.get(CORP, SECRET)).token
    raw = str([doc async for doc in db[COLLECTION].find({})])
    assert SECRET not in raw
    assert token not in raw
    assert base64.b64encode(SECRET.encode()).decode() not in raw
