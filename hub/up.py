"""Assemble the whole hub on one runtime and one port: token service, gateway and manager.

The manager cannot stand without the other two (its compat surface includes ``/callback/{corpId}``
and ``getToken``), so ``wxkf manager`` and ``wxkf up`` serve the same composition; the gateway hands
kf events to the manager in-process instead of over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.markup import escape
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
from manager.socket_routes import socket_routes
from token_service.app import build_token_service
from token_service.routes import token_routes
from token_service.service import TokenService
from wxkf.endpoints import parse_networks
from wxkf.http import common_routes
from wxkf.retry import RetrySchedule, parse_delays
from wxkf.runtime import ADMIN_TOKEN_FILE, Runtime, open_runtime
from wxkf.server import serve
from wxkf.settings import Settings
from wxkf.tasks import stop_tasks

log = logging.getLogger(__name__)

# Each service's stop (the manager's: its final checkpoint and lease release) gets this long; one that
# raises or overruns is logged and the next still runs. With uvicorn's graceful shutdown and the
# database's stop, a SIGTERM ends the process within about 25 s whatever state the database is in.
STOP_STEP_TIMEOUT = 5.0


def build_manager(
    runtime: Runtime, tokens: TokenService, apps: AppRegistry, dispatch: DispatchConfig | None = None
) -> Manager:
    settings = runtime.settings
    owner = runtime.replica_id("manager")
    registration_token = settings.wxkf_registration_token
    schedule = RetrySchedule(parse_delays(settings.wxkf_retry_schedule))
    config = ManagerConfig(
        owner=owner,
        dispatch=dispatch
        or DispatchConfig(
            owner=owner,
            schedule=schedule,
            idle_release=settings.wxkf_idle_release,
            housekeeping_interval=min(10.0, settings.wxkf_idle_release),
        ),
        registration_token=registration_token.get_secret_value() if registration_token else None,
        allowed_networks=parse_networks(settings.wxkf_allowed_networks),
        delivery_connections_per_host=settings.wxkf_delivery_connections_per_host,
        retention=settings.wxkf_retention_days * 86400,
        replica_timeout=settings.wxkf_replica_timeout,
    )
    return Manager(
        runtime.db, runtime.box, runtime.http, tokens, apps, settings.api_base, config, wecom=runtime.wecom
    )


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
        """Stop every service in reverse dependency order, each within ``STOP_STEP_TIMEOUT``."""
        assert self.manager is not None
        refresher = self._refresher

        async def stop_refresher() -> None:
            if refresher is not None:
                await stop_tasks([refresher])

        await stop_each(
            [
                ("token refresher", stop_refresher),
                ("gateway", self.gateway.stop),
                ("manager", self.manager.stop),
            ]
        )

    def app(self) -> Starlette:
        assert self.manager is not None
        admin_token = self.runtime.admin_token
        return Starlette(
            routes=[
                # the manager's /callback/decrypted/{corpId} must precede /callback/{corpId}/{app}
                *compat_routes(self.manager, admin_token, GatewayAuth.from_settings(self.runtime.settings)),
                *socket_routes(self.manager),
                *callback_routes(self.gateway),
                *token_routes(self.tokens),
                *gateway_admin_routes(
                    self.gateway, admin_token, [("manager_events", self.manager.mailboxes.event)]
                ),
                *manager_admin_routes(self.manager, admin_token),
                *common_routes(),
            ]
        )


async def stop_each(
    steps: list[tuple[str, Callable[[], Awaitable[None]]]], timeout: float = STOP_STEP_TIMEOUT
) -> None:
    """Run every step in order, each bounded by ``timeout``; a failure or overrun is logged, not raised,
    so one service's broken stop cannot skip the next one's."""
    for name, step in steps:
        try:
            async with asyncio.timeout(timeout):
                await step()
        except TimeoutError:
            log.error("stopping the %s took longer than %gs; abandoned", name, timeout)
        except Exception:
            log.exception("stopping the %s failed", name)


async def run(settings: Settings) -> None:
    async with open_runtime(settings) as runtime:
        hub = Hub(runtime)
        try:
            await hub.start()
            await serve(
                hub.app(), settings.host, settings.port, runtime=runtime, on_started=next_steps(runtime)
            )
        finally:
            await hub.stop()


def next_steps(runtime: Runtime) -> Callable[[str], None]:
    """What to print once the hub listens on ``url``: where WeCom sends callbacks, how to add a corp
    app, where the admin token is, how to try it all against the simulator."""
    from hub.cli import SIM_PORT  # the CLI imports this module lazily; no cycle at import time

    settings = runtime.settings

    def show(address: str) -> None:
        url = escape(address)
        if settings.wxkf_admin_token is not None:
            token = "WXKF_ADMIN_TOKEN (from the environment)"
        elif settings.mongo_uri is None:
            token = escape(str(settings.wxkf_data_dir / ADMIN_TOKEN_FILE))
        else:
            token = "none: admin API disabled until WXKF_ADMIN_TOKEN is set"
        server = "" if address.endswith(f":{settings.port}") and settings.port else f" --server {url}"
        lines = [
            f"[bold green]wxkf-hub is up[/] on {url}  (liveness {url}/healthz, readiness {url}/readyz)",
            "  WeCom callback URL:   https://<this host's public address>/callback/<CORP_ID>",
            f"  add a corp app:       wxkf corp add <CORP_ID> --token <TOKEN> --aes-key <AES_KEY>"
            f" --secret-stdin{server}",
            f"  admin token:          {token}",
            f"  no WeCom corp yet?    wxkf sim  (port {SIM_PORT}), then restart this with"
            f" WECOM_API_BASE=http://127.0.0.1:{SIM_PORT}/cgi-bin",
        ]
        console = Console(stderr=True, highlight=False, soft_wrap=True)
        for line in lines:
            console.print(line)

    return show
