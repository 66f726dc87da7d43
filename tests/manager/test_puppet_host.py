"""Deliveries to puppet hosts: a slow but alive host serving many accounts is not unreachable (issue 10,
item 12), and a puppet's redirect is never followed (item 2).

The host below answers no delivery until deliveries for all of its accounts are in flight at once,
so it only works if the manager opens a connection per delivering account. A pool that queued
them behind a few connections, with the queue counted in the delivery timeout, timed every queued
account out and parked its puppet as offline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.registry import AppRegistry
from manager.dispatcher import DispatchConfig
from manager.mailbox import account_key
from manager.service import Manager, ManagerConfig
from tests.manager.conftest import FAST, add_puppet
from tests.support.bystander import bystander
from tests.support.servers import serve_app
from token_service.service import TokenService
from token_service.store import TokenStore
from wecom.tokens import AccessToken
from wxkf.runtime import Runtime

CORP = "wwpuppethost00001"
ACCOUNTS = 40  # five times the pool of 8 connections per host that parked 92 of 100 accounts


class BusyHost:
    """A puppet host that holds every delivery until ``expected`` of them are in flight together."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.in_flight = 0
        self.all_in = asyncio.Event()
        self.delivered: dict[str, str] = {}
        self.all_answered = asyncio.Event()

    async def callback(self, request: Request) -> PlainTextResponse:
        body = json.loads(await request.body())
        self.in_flight += 1
        if self.in_flight >= self.expected:
            self.all_in.set()
        try:
            await self.all_in.wait()  # a slow puppet: nothing answers before everyone is waiting
            self.delivered[request.path_params["account"]] = body["token"]
            if len(self.delivered) >= self.expected:
                self.all_answered.set()
            return PlainTextResponse("success")
        finally:
            self.in_flight -= 1

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{account}/callback/decrypted", self.callback, methods=["POST"])])


async def _no_upstream(corp_id: str, secret: str) -> AccessToken:
    raise AssertionError("these tests never call WeCom")


def manager_for(runtime: Runtime, **config: Any) -> Manager:
    dispatch = DispatchConfig(owner="mgr-host", schedule=FAST, sweep_interval=0.05, probe_interval=60.0)
    manager_config = ManagerConfig(owner="mgr-host", dispatch=dispatch, delivery_timeout=5.0, **config)
    tokens = TokenService(TokenStore(runtime.db, runtime.box), _no_upstream)
    apps = AppRegistry(runtime.db, runtime.box)
    api = "http://127.0.0.1:9/cgi-bin"
    return Manager(runtime.db, runtime.box, runtime.http, tokens, apps, api, manager_config)


async def test_a_slow_puppet_host_serving_many_accounts_gets_them_all_at_once_and_stays_online(
    runtime: Runtime,
) -> None:
    host = BusyHost(ACCOUNTS)
    manager = manager_for(runtime)
    await manager.start()
    try:
        async with serve_app(host.app()) as url:
            kfs = [f"wkhost{i:03d}" for i in range(ACCOUNTS)]
            for kf in kfs:
                await add_puppet(manager, CORP, kf, f"{url}/{kf}")
            for kf in kfs:
                await manager.accept_decrypted(CORP, kf, f"tok-{kf}", None)
            async with asyncio.timeout(30):
                await host.all_answered.wait()
        assert host.delivered == {kf: f"tok-{kf}" for kf in kfs}
        for kf in kfs:
            puppet = await manager.puppets.get(account_key(CORP, kf))
            assert puppet is not None and puppet.live, f"{kf} was marked unreachable"
    finally:
        await manager.stop()


async def test_a_puppet_that_redirects_is_not_followed_and_the_failure_says_why(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """SSRF (item 2): the puppet's endpoint is allowed, the address its 307 names is not checked: the
    hub must not send the event, nor probe, there. A redirect is an answer, so the puppet backs off
    (it is not parked as unreachable)."""
    attempts: list[str] = []
    tried_twice = asyncio.Event()
    async with bystander("127.0.0.2") as (elsewhere, seen):

        async def redirect(request: Request) -> Response:
            await request.body()
            attempts.append(request.method)
            if attempts.count("POST") >= 2:
                tried_twice.set()
            return Response(status_code=307, headers={"location": elsewhere + "/callback/decrypted"})

        app = Starlette(routes=[Route("/callback/decrypted", redirect, methods=["POST"])])
        manager = manager_for(runtime, allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
        await manager.start()
        try:
            async with serve_app(app) as url:
                await add_puppet(manager, CORP, "wkredirect", url)
                with caplog.at_level(logging.WARNING):
                    await manager.accept_decrypted(CORP, "wkredirect", "tok-1", None)
                    async with asyncio.timeout(30):
                        await tried_twice.wait()  # failed, backed off, tried again
                puppet = await manager.puppets.get(account_key(CORP, "wkredirect"))
                assert puppet is not None and puppet.live
        finally:
            await manager.stop()
    assert seen == []
    assert any("307" in r.getMessage() and "not followed" in r.getMessage() for r in caplog.records)
