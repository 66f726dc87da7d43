"""A simulator per test, on a fake clock and a real socket, with a corp ready to use.

``sim`` serves :func:`simulator.create_app` with uvicorn on 127.0.0.1; tests talk to it over HTTP
exactly as production code would, and reach into ``sim.state`` only to arrange things or to move the
clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from simulator import SimConfig, SimState, create_app
from simulator.wecom.directory import Account, App, Corp, Customer
from simulator.wecom.schemas import AccountIn, AppIn, CorpIn, CustomerIn
from tests.support.clock import FakeClock
from tests.support.servers import serve_app

# Callbacks in tests: no pauses between retries, and a listener that never answers costs 0.3 s.
FAST = SimConfig(callback_timeout=0.3, callback_retry_delays=(0.0, 0.0, 0.0))


@dataclass
class Acme:
    """One corp with one app, one account (servicer alice) and one customer."""

    corp: Corp
    app: App
    account: Account
    customer: Customer

    @property
    def corpid(self) -> str:
        return self.corp.corp_id

    @property
    def open_kfid(self) -> str:
        return self.account.open_kfid

    @property
    def userid(self) -> str:
        return self.customer.external_userid


@dataclass
class Sim:
    url: str
    http: httpx.AsyncClient
    state: SimState
    clock: FakeClock

    async def token(self, app: App) -> str:
        payload = await self.get("gettoken", params={"corpid": app.corp_id, "corpsecret": app.secret})
        assert payload["errcode"] == 0, payload
        token: str = payload["access_token"]
        return token

    async def get(self, api: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.http.get(f"/cgi-bin/{api}", **kwargs)
        assert response.status_code == 200
        payload: dict[str, Any] = response.json()
        return payload

    async def call(self, app: App, api: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a WeCom API as ``app`` (fetching its token); returns the payload, errcode and all."""
        response = await self.http.post(
            f"/cgi-bin/{api}", params={"access_token": await self.token(app)}, json=body
        )
        assert response.status_code == 200
        payload: dict[str, Any] = response.json()
        return payload

    async def control(self, method: str, path: str, json: Any = None, status: int | None = None) -> Any:
        response = await self.http.request(method, f"/sim{path}", json=json)
        if status is not None:
            assert response.status_code == status, response.text
        else:
            assert response.is_success, response.text
        return response.json()

    async def customer_writes(self, acme: Acme, text: str = "hello", *, wait: bool = True) -> dict[str, Any]:
        path = f"/corps/{acme.corpid}/accounts/{acme.open_kfid}/messages" + ("?wait=true" if wait else "")
        body = {"external_userid": acme.userid, "msgtype": "text", "text": {"content": text}}
        result: dict[str, Any] = await self.control("POST", path, body)
        return result


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config() -> SimConfig:
    return FAST


@pytest.fixture
def state(config: SimConfig, clock: FakeClock) -> SimState:
    return SimState(config, clock)


@pytest.fixture
def acme(state: SimState) -> Acme:
    corp = state.wecom.add_corp(
        CorpIn(
            name="Acme",
            apps=[AppIn(name="kf")],
            accounts=[AccountIn(name="Support", servicers=["alice"])],
            customers=[CustomerIn(nickname="Bob")],
        )
    )
    [app], [account], [customer] = corp.apps.values(), corp.accounts.values(), corp.customers.values()
    return Acme(corp, app, account, customer)


@pytest.fixture
async def sim(state: SimState, clock: FakeClock) -> AsyncIterator[Sim]:
    async with (
        serve_app(create_app(state), lifespan="on") as url,
        httpx.AsyncClient(base_url=url, trust_env=False) as http,
    ):
        yield Sim(url, http, state, clock)
