"""Per-origin HTTP clients: one per puppet origin, bounded, all closed on shutdown."""

from __future__ import annotations

from wxkf.origin_clients import OriginClients


async def test_one_client_per_origin_reused_across_paths_and_queries() -> None:
    clients = OriginClients()
    first = clients.for_url("http://10.0.0.1:8080/callback?x=1")
    assert clients.for_url("http://10.0.0.1:8080/callback/decrypted") is first
    assert clients.for_url("http://10.0.0.1:8081/callback") is not first
    assert clients.for_url("https://10.0.0.1:8080/callback") is not first
    assert len(clients) == 3
    await clients.aclose()
    assert first.is_closed


async def test_least_recently_used_origin_is_evicted_and_still_closed_on_shutdown() -> None:
    clients = OriginClients(max_origins=2)
    a = clients.for_url("http://a.example/callback")
    b = clients.for_url("http://b.example/callback")
    clients.for_url("http://a.example/callback")  # a is now the most recently used
    clients.for_url("http://c.example/callback")
    assert len(clients) == 2
    assert clients.for_url("http://a.example/x") is a
    assert clients.for_url("http://b.example/x") is not b  # b was evicted: a fresh client
    assert not b.is_closed  # not yet: a request may still be running on it
    await clients.aclose()
    assert a.is_closed and b.is_closed
