"""Access tokens: ``gettoken`` and the check every other API starts with.

As in WeCom, asking again while a token is valid returns that same token (``token_reuse``); a token
the control API invalidated early is refused with 40014 and the next ``gettoken`` issues a new one;
an expired one gets 42001. Every ``gettoken`` call is counted per app, and calls beyond
``gettoken_rate`` get 45009, so a token cache that calls too often shows up in tests. All calls,
refused ones included, are also counted by outcome (:attr:`AccessTokens.counts`, ``GET /sim/tokens``):
``reused`` counts the calls that got back a token issued earlier, i.e. asked before it expired.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from simulator.clock import Clock
from simulator.config import SimConfig
from simulator.ratelimit import Limits
from simulator.wecom import errcodes as E
from simulator.wecom import ids
from simulator.wecom.directory import App, Directory
from simulator.wecom.errcodes import ApiError


@dataclass(eq=False)
class IssuedToken:
    token: str = field(repr=False)
    corp_id: str
    agentid: int
    expires_at: float
    revoked: bool = False

    def expires_in(self, now: float) -> int:
        return max(0, math.ceil(self.expires_at - now))


class AccessTokens:
    def __init__(self, directory: Directory, config: SimConfig, clock: Clock) -> None:
        self.directory = directory
        self.config = config
        self.clock = clock
        self.issued: dict[str, IssuedToken] = {}
        self._current: dict[tuple[str, int], IssuedToken] = {}
        self._limits = Limits([config.gettoken_rate] if config.gettoken_rate else [], clock)
        self.counts: Counter[str] = Counter({"requests": 0, "refused": 0, "issued": 0, "reused": 0})

    def gettoken(self, corpid: str | None, corpsecret: str | None) -> IssuedToken:
        self.counts["requests"] += 1
        try:
            issued, reused = self._gettoken(corpid, corpsecret)
        except ApiError:
            self.counts["refused"] += 1
            raise
        self.counts["reused" if reused else "issued"] += 1
        return issued

    def _gettoken(self, corpid: str | None, corpsecret: str | None) -> tuple[IssuedToken, bool]:
        """The token to answer, and whether it was issued before this call."""
        if not corpid:
            raise ApiError(E.MISSING_CORPID, "corpid missing")
        corp = self.directory.corps.get(corpid)
        if corp is None:
            raise ApiError(E.INVALID_CORPID, f"invalid corpid {corpid}")
        if not corpsecret:
            raise ApiError(E.MISSING_SECRET, "corpsecret missing")
        app = corp.app_by_secret(corpsecret)
        if app is None:
            raise ApiError(E.INVALID_CREDENTIAL, "invalid credential: corpsecret does not match")
        app.gettoken_calls += 1
        if not self._limits.hit((corpid, app.agentid)):
            raise ApiError(E.RATE_LIMITED, "api freq out of limit: gettoken")
        now = self.clock()
        current = self._current.get((corpid, app.agentid))
        if (
            self.config.token_reuse
            and current is not None
            and not current.revoked
            and now < current.expires_at
        ):
            return current, True
        issued = IssuedToken(ids.access_token(), corpid, app.agentid, now + self.config.token_ttl)
        self.issued[issued.token] = issued
        self._current[(corpid, app.agentid)] = issued
        return issued, False

    def authenticate(self, access_token: str | None) -> App:
        """The app ``access_token`` belongs to, or the errcode WeCom answers for it."""
        if not access_token:
            raise ApiError(E.MISSING_ACCESS_TOKEN, "access_token missing")
        issued = self.issued.get(access_token)
        if issued is None or issued.revoked:
            raise ApiError(E.INVALID_ACCESS_TOKEN, "invalid access_token")
        if self.clock() >= issued.expires_at:
            raise ApiError(E.ACCESS_TOKEN_EXPIRED, "access_token expired")
        corp = self.directory.corps.get(issued.corp_id)
        app = corp.apps.get(issued.agentid) if corp is not None else None
        if app is None:
            raise ApiError(E.INVALID_ACCESS_TOKEN, "invalid access_token: app no longer exists")
        return app

    def invalidate(
        self, access_token: str | None = None, corp_id: str | None = None, agentid: int | None = None
    ) -> int:
        """Revoke one token, or every token of an app (or of a corp); returns how many were live."""
        count = 0
        for issued in self.issued.values():
            if issued.revoked:
                continue
            if access_token is not None:
                hit = issued.token == access_token
            else:
                hit = issued.corp_id == corp_id and (agentid is None or issued.agentid == agentid)
            if hit:
                issued.revoked = True
                count += 1
        return count
