"""Build the token service on a :class:`~wxkf.runtime.Runtime`."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette

from token_service.routes import token_routes
from token_service.service import TokenPolicy, TokenService
from token_service.store import TokenStore
from wecom.client import fetch_access_token
from wecom.tokens import AccessToken
from wxkf.http import common_routes
from wxkf.runtime import Runtime, open_runtime
from wxkf.server import serve
from wxkf.settings import Settings
from wxkf.tasks import stop_tasks


def build_token_service(runtime: Runtime, policy: TokenPolicy | None = None) -> TokenService:
    base = runtime.settings.api_base

    async def fetch(corp_id: str, secret: str) -> AccessToken:
        return await fetch_access_token(runtime.wecom, base, corp_id, secret)

    policy = policy or TokenPolicy(invalidate_interval=runtime.settings.wxkf_token_invalidate_interval)
    return TokenService(TokenStore(runtime.db, runtime.box), fetch, policy)


def token_app(service: TokenService) -> Starlette:
    return Starlette(routes=[*token_routes(service), *common_routes()])


async def run(settings: Settings) -> None:
    async with open_runtime(settings) as runtime:
        service = build_token_service(runtime)
        refresher = asyncio.create_task(service.run_refresher())
        try:
            await service.store.ensure_indexes()
            await serve(token_app(service), settings.host, settings.port, runtime=runtime)
        finally:
            await stop_tasks([refresher])
