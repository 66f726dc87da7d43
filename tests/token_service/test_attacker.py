"""gettoken as an amplifier (issue 10, item 4): what unauthenticated callers with random corpids or
secrets can make the token service do. Nothing stored, every map bounded, upstream calls budgeted
per caller, per corpid and in total, and never at the expense of proven pairs or in-process callers."""

from __future__ import annotations

import secrets

import pytest

from tests.token_service.fakes import CORP, SECRET, documents, make_service
from token_service.service import OverBudget, TokenUnavailable

ATTACKER = "203.0.113.7"


async def attempt(service, corp_id: str, secret: str, caller: str) -> int:
    """The errcode a gettoken for this pair gets (0: a token)."""
    try:
        await service.get(corp_id, secret, caller=caller)
    except TokenUnavailable as exc:
        return exc.errcode
    return 0


async def test_random_secrets_cost_a_bounded_number_of_upstream_calls_and_store_nothing(
    db, box, upstream, clock
):
    service = make_service(db, box, upstream, clock)
    answers = [await attempt(service, CORP, secrets.token_hex(16), ATTACKER) for _ in range(50)]
    assert upstream.calls == service.policy.caller_burst == 10
    assert answers == [40001] * 10 + [45009] * 40
    assert await documents(db) == 0
    # the budget refills slowly: one more call per 1 / caller_rate seconds
    clock.advance(1 / service.policy.caller_rate)
    assert await attempt(service, CORP, secrets.token_hex(16), ATTACKER) == 40001
    assert await attempt(service, CORP, secrets.token_hex(16), ATTACKER) == 45009
    assert upstream.calls == 11


async def test_a_refused_pair_is_answered_from_the_refusal_cache(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    assert await attempt(service, CORP, "wrong", ATTACKER) == 40001
    assert await attempt(service, "wwnosuchcorp", "any", ATTACKER) == 40013
    for caller in (f"198.51.100.{i}" for i in range(30)):
        assert await attempt(service, CORP, "wrong", caller) == 40001
        assert await attempt(service, "wwnosuchcorp", secrets.token_hex(8), caller) == 40013  # by corpid
    assert upstream.calls == 2
    clock.advance(service.policy.refusal_ttl)
    assert await attempt(service, CORP, "wrong", ATTACKER) == 40001
    assert upstream.calls == 3


async def test_random_corpids_from_many_addresses_hit_the_total_budget_and_bounded_maps(
    db, box, upstream, clock
):
    service = make_service(db, box, upstream, clock, max_entries=64)
    answers = [
        await attempt(
            service, "ww" + secrets.token_hex(8), secrets.token_hex(16), f"10.{i // 250}.{i % 250}.1"
        )
        for i in range(200)
    ]
    assert upstream.calls == service.policy.total_burst == 100
    assert answers.count(40013) == 100 and answers.count(45009) == 100
    assert await documents(db) == 0
    assert max(service.entries().values()) <= 64


async def test_invalidate_with_random_pairs_is_budgeted_the_same_way(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    refused = []
    for _ in range(30):
        try:
            await service.invalidate(CORP, secrets.token_hex(16), "some-token", caller=ATTACKER)
        except TokenUnavailable as exc:
            refused.append(exc.errcode)
    assert upstream.calls == 10
    assert refused == [40001] * 10 + [45009] * 20
    assert await documents(db) == 0


async def test_an_exhausted_budget_never_starves_proven_pairs_or_in_process_callers(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    proven = (await service.get(CORP, SECRET, caller=ATTACKER)).token
    for _ in range(30):  # the attacker shares the legitimate caller's address
        await attempt(service, CORP, secrets.token_hex(16), ATTACKER)
    with pytest.raises(OverBudget):
        await service.get(CORP, secrets.token_hex(16), caller=ATTACKER)
    calls = upstream.calls
    # a proven pair is served, and renewed when due, whatever the address's budget
    assert (await service.get(CORP, SECRET, caller=ATTACKER)).token == proven
    clock.advance(7201)
    assert (await service.get(CORP, SECRET, caller=ATTACKER)).token != proven
    assert upstream.calls == calls + 1
    # an in-process caller proving a new pair is not charged at all
    upstream.valid_secrets.add("second-app-secret")
    for _ in range(200):
        await attempt(service, CORP, secrets.token_hex(16), f"192.0.2.{secrets.randbelow(250)}")
    assert (await service.get(CORP, "second-app-secret")).token


async def test_a_proven_secret_that_wecom_stops_accepting_is_forgotten(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    await service.get(CORP, SECRET)
    assert await documents(db) == 1
    upstream.valid_secrets.clear()  # the secret was reset in WeCom's console
    clock.advance(7201)
    with pytest.raises(TokenUnavailable) as refused:
        await service.get(CORP, SECRET)
    assert refused.value.errcode == 40001
    assert await documents(db) == 0
    calls = upstream.calls
    assert await attempt(service, CORP, SECRET, ATTACKER) == 40001  # cached refusal
    assert upstream.calls == calls


async def test_ipv6_callers_are_budgeted_per_64_not_per_address(db, box, upstream, clock):
    service = make_service(db, box, upstream, clock)
    callers = [f"2001:db8:1:2::{i:x}" for i in range(1, 31)]  # one host picks a new address each time
    answers = [await attempt(service, CORP, secrets.token_hex(16), caller) for caller in callers]
    assert upstream.calls == 10
    assert answers.count(45009) == 20
    assert await attempt(service, CORP, secrets.token_hex(16), "2001:db8:1:3::1") == 40001  # another /64
