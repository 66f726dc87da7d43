"""Test doubles for the token service: a gettoken stand-in with WeCom's reuse semantics, and the
service built on the test database with a fake clock."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from tests.support.clock import FakeClock
from token_service.service import TokenPolicy, TokenService
from token_service.store import COLLECTION, TokenStore
from wecom.errors import error_for
from wecom.tokens import AccessToken
from wxkf.database import Database
from wxkf.secretbox import SecretBox

CORP = "ww0000000000000001"
SECRET = "app-secret-" + "x" * 32


class Upstream:
    """Stands in for WeCom's gettoken: counts calls, can be gated, failed or made to reject secrets.

    Like WeCom it returns the current token until that expires (``reused`` counts those answers);
    ``skew`` makes WeCom's copy outlive the ``expires_in`` it answers by that many seconds, and
    ``revoke()`` ends the current token early, as WeCom may."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0
        self.reused = 0
        self.call_times: list[float] = []
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail_with: int | None = None
        self.valid_corps = {CORP}
        self.valid_secrets = {SECRET}
        self.skew = 0.0
        self._current: AccessToken | None = None

    def revoke(self) -> None:
        self._current = None

    async def fetch(self, corp_id: str, secret: str) -> AccessToken:
        self.calls += 1
        self.call_times.append(self.clock())
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if corp_id not in self.valid_corps:
            raise error_for(40013, "invalid corpid", "gettoken")
        if secret not in self.valid_secrets:
            raise error_for(40001, "invalid credential", "gettoken")
        if self.fail_with is not None:
            raise error_for(self.fail_with, "simulated failure", "gettoken")
        now = self.clock()
        current = self._current
        if current is not None and now < current.expires_at + self.skew:
            self.reused += 1
            return AccessToken(current.token, current.expires_at + self.skew)
        self._current = AccessToken(f"tok-{self.calls}-{secrets.token_hex(4)}", now + 7200)
        return self._current


def make_service(
    db: Database, box: SecretBox, upstream: Upstream, clock: FakeClock, **policy: Any
) -> TokenService:
    return TokenService(
        TokenStore(db, box), upstream.fetch, TokenPolicy(poll_interval=0.005, **policy), clock=clock
    )


async def documents(db: Database) -> int:
    return await db[COLLECTION].count_documents({})
