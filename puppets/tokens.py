"""Access tokens for a puppet's corp apps: WeCom's gettoken, or a token service (the hub's) in front of it.

With a token service, a token WeCom rejects (40001/40014/42001) is reported to it too
(``POST /token/invalidate``), because otherwise the service would hand back the same cached token and
the client's one retry would be wasted. The hub refreshes only if the reported token is still its
current one, so many puppets reporting one token cost one refresh.
"""

from __future__ import annotations

import logging

import httpx

from wecom.tokens import GetTokenProvider

log = logging.getLogger(__name__)


class ServiceTokens:
    """A :class:`GetTokenProvider` whose invalidations also reach the token service."""

    def __init__(
        self,
        cached: GetTokenProvider,
        http: httpx.AsyncClient,
        invalidate_url: str,
        corp_id: str,
        secret: str,
    ) -> None:
        self.cached = cached
        self._http = http
        self._url = invalidate_url
        self._corp_id = corp_id
        self._secret = secret

    def __repr__(self) -> str:
        return f"ServiceTokens({self._url!r}, corp_id={self._corp_id!r})"

    async def get(self) -> str:
        return await self.cached.get()

    async def invalidate(self, token: str) -> None:
        body = {"corpid": self._corp_id, "corpsecret": self._secret, "access_token": token}
        try:
            response = await self._http.post(self._url, json=body)
            if not response.is_success:
                log.info("token service did not take the invalidation: HTTP %s", response.status_code)
        except httpx.HTTPError as exc:
            log.warning("cannot report a rejected token to the token service: %s", type(exc).__name__)
        await self.cached.invalidate(token)
