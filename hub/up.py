"""Assemble the whole hub on one runtime and one port: token service, gateway and manager.

The manager cannot stand without the other two (its compat surface includes ``/callback/{corpId}``
and ``getToken``), so ``wxkf manager`` and ``wxkf up`` serve the same composition; the gateway hands
kf events to the manager in-process instead of over HTTP.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette

from gateway.admin import admin_routes as gateway_admin_routes
from gateway.app import build_gateway
from gateway.intake import CallbackEvent
from gateway.registry import AppRegistry
from gateway.routes import callback_routes
from manager.admin import admin_routes as manager_admin_routes
from manager.dispatcher import DispatchConfig
from manager.forwarded import GatewayAuth
from manager.routes import compat_routes
from manager.service import Manager, ManagerConfig
from token_service.app import build_token_service
from token_service.routes import token_routes
from token_service.service import TokenService
from wxkf.endpoints import parse_networks
from wxkf.http import common_routes
from wxkf.retry import RetrySchedule, parse_delays
from wxkf.runtime import Runtime, open_runtime
from wxkf.server import serve
from wxkf.settings import Settings
from wxkf.tasks import stop_tasks


def build_manager(
    runtime: Runtime, tokens: TokenService, apps: AppRegistry, dispatch: DispatchConfig | None = None
) -> Manager:
    settings = runtime.settings
    owner = runtime.replica_id("manager")
    registration_token = settings.wxkf_registration_token
    schedule = RetrySchedule(parse_delays(settings.wxkf_retry_schedule))
    config = ManagerConfig(
        owner=owner,
        dispatch=dispatch or DispatchConfig(owner=owner, schedule=schedule),
        registration_token=registration_token.get_secret_value() if registration_token else None,
        allowed_networks=parse_networks(settings.wxkf_allowed_networks),
        delivery_connections_per_host=settings.wxkf_delivery_connections_per_host,
        retention=settings.wxkf_retention_days * 86400,
        replica_timeout=settings.wxkf_replica_timeout,
    )
    return Manager(runtime.db, runtime.box, runtime.http, tokens, apps, settings.api_base, config)


class Hub:
    """Everything ``wxkf up`` runs, started and stopped in dependency order."""

    def __init__(self, runtime: Runtime, *, dispatch: DispatchConfig | None = None) -> None:
        self.runtime = runtime
        self.tokens = build_token_service(runtime)
        self.manager: Manager | None = None
        self.gateway = build_gateway(runtime, self._accept)
        self.manager = build_manager(runtime, self.tokens, self.gateway.registry, dispatch)
        self._refresher: asyncio.Task[None] | None = None

    async def _accept(self, event: CallbackEvent) -> bool:
        assert self.manager is not None
        return await self.manager.accept_callback(event)

    async def start(self) -> None:
        assert self.manager is not None
        await self.tokens.store.ensure_indexes()
        await self.manager.start()
        await self.gateway.start()
        self._refresher = asyncio.create_task(self.tokens.run_refresher())

    async def stop(self) -> None:
        assert self.manager is not None
        if self._refresher is not None:
            await stop_tasks([self._refresher])
        await self.gateway.stop()
        await self.manager.stop()

    def app(self) -> Starlette:
        assert self.manager is not None
        admin_token = self.runtime.admin_token
        return Starlette(
            routes=[
                # the manager's /callback/decrypted/{corpId} must precede /callback/{corpId}/{app}
                *compat_routes(self.manager, admin_token, GatewayAuth.from_settings(self.runtime.settings)),
                *callback_routes(self.gateway),
                *token_routes(self.tokens),
                *gateway_admin_routes(
                    self.gateway, admin_token, [("manager_events", self.manager.mailboxes.event)]
                ),
                *manager_admin_routes(self.manager, admin_token),
                *common_routes(),
            ]
        )


async def run(settings: Settings) -> None:
    async with open_runtime(settings) as runtime:
        hub = Hub(runtime)
        try:
            await hub.start()
            await serve(hub.app(), settings.host, settings.port)
        finally:
            await hub.stop()
