"""A simulated corp: its spec for the simulator (``corp_spec``) and a test's handle on it (``Corp``).

Every test that needs a corp in the simulator builds it with :func:`corp_spec`: one kf app (agentid
1000002) with fresh credentials, the accounts and customers asked for. The spec is what
``POST /sim/corps`` takes and what a seed file's ``corps`` list holds.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.waiting import wait_until
from tests.support.wecom_callbacks import new_aes_key

AGENTID = 1000002


def corp_spec(
    accounts: Iterable[dict[str, Any]] = ({"open_kfid": "wkSUPPORT", "name": "Support"},),
    customers: Iterable[str] = ("wmBOB", "wmCAROL"),
    *,
    aes_key: str | None = None,
) -> dict[str, Any]:
    """A new corp (random corpid) with one kf app of fresh secret, token and AES key (``aes_key`` if
    given), the ``accounts`` (``AccountIn`` objects) and the customers named."""
    return {
        "corpid": "ww" + secrets.token_hex(8),
        "apps": [
            {
                "name": "kf",
                "agentid": AGENTID,
                "secret": "s-" + secrets.token_hex(16),
                "token": secrets.token_hex(8),
                "encoding_aes_key": aes_key or new_aes_key(),
            }
        ],
        "accounts": [dict(account) for account in accounts],
        "customers": [{"external_userid": customer} for customer in customers],
    }


@dataclass(frozen=True)
class CorpKeys:
    """What a puppet or a hub needs to serve the corp's app."""

    corpid: str
    secret: str
    token: str
    aes_key: str

    @classmethod
    def of(cls, spec: dict[str, Any]) -> CorpKeys:
        app = spec["apps"][0]
        return cls(spec["corpid"], app["secret"], app["token"], app["encoding_aes_key"])


async def create_corp(http: httpx.AsyncClient, sim_url: str, spec: dict[str, Any]) -> CorpKeys:
    """``POST /sim/corps`` with ``spec``; the app's keys."""
    created = await http.post(f"{sim_url}/sim/corps", json=spec)
    assert created.status_code == 201, created.text
    return CorpKeys.of(spec)


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike


@dataclass
class Corp:
    """A simulated corp: one app (``secret``, ``token``, ``aes_key``), account ``kf``."""

    sim_url: str
    http: httpx.AsyncClient
    corpid: str
    secret: str
    token: str
    aes_key: str
    kf: str = "wkSUPPORT"
    customer: str = "wmBOB"

    def control(self, path: str) -> str:
        return f"{self.sim_url}/sim/corps/{self.corpid}{path}"

    async def set_callback(self, url: str | None) -> None:
        response = await self.http.patch(self.control(f"/apps/{AGENTID}"), json={"callback_url": url})
        assert response.status_code == 200, response.text

    async def says(self, text: str, customer: str | None = None, *, wait: bool = False) -> None:
        await self.writes(
            {"msgtype": "text", "text": {"content": text}}, customer or self.customer, wait=wait
        )

    async def writes(
        self, item: dict[str, Any], customer: str | None, *, wait: bool = False
    ) -> dict[str, Any]:
        """``customer`` sends ``item`` (``{"msgtype": ..., <msgtype>: {...}}``) or, for an item with an
        ``event_type``, the account gets that event (about ``customer``, or the account's own with
        None); the simulator's answer (``msgid``, ``deliveries``)."""
        route = "/events" if "event_type" in item else "/messages"
        body = item | {"external_userid": customer} if customer else item
        response = await self.http.post(
            self.control(f"/accounts/{self.kf}{route}"), params={"wait": "true"} if wait else None, json=body
        )
        assert response.is_success, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def received_items(self, customer: str | None = None) -> list[dict[str, Any]]:
        """Everything the customer received, oldest first (``msgid``, ``msgtype``, body)."""
        response = await self.http.get(self.control(f"/customers/{customer or self.customer}/received"))
        assert response.is_success, response.text
        items: list[dict[str, Any]] = response.json()["messages"]
        return items

    async def received(self, customer: str | None = None) -> list[str]:
        """The texts the customer received, oldest first."""
        items = await self.received_items(customer)
        return [item["text"]["content"] for item in items if item["msgtype"] == "text"]

    async def wait_received(
        self, count: int, customer: str | None = None, timeout: float = 30.0
    ) -> list[str]:
        async def enough() -> list[str] | None:
            texts = await self.received(customer)
            return texts if len(texts) >= count else None

        result: list[str] = await wait_until(enough, timeout, f"{count} replies")
        return result

    def config_toml(self, port: int, **top: Any) -> str:
        lines = [f"port = {port}"]
        lines += [f"{key} = {toml_value(value)}" for key, value in top.items()]
        lines += [
            "[[apps]]",
            f'corp_id = "{self.corpid}"',
            'secret = { env = "TEST_KF_SECRET" }',
            f'token = "{self.token}"',
            f'encoding_aes_key = "{self.aes_key}"',
            f'accounts = ["{self.kf}"]',
        ]
        return "\n".join(lines) + "\n"
