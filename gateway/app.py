"""Assemble the gateway on a runtime: ``wxkf gateway`` serves it alone, ``wxkf up`` beside the others."""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.admin import admin_routes
from gateway.manager_link import HttpManagerSink, ManagerIntake
from gateway.routes import callback_routes
from gateway.service import Gateway, GatewayConfig
from wxkf.delivery import DeliveryClient
from wxkf.endpoints import parse_networks
from wxkf.http import common_routes
from wxkf.retry import RetrySchedule, parse_delays
from wxkf.runtime import Runtime, open_runtime
from wxkf.server import serve
from wxkf.settings import Settings


def gateway_config(runtime: Runtime) -> GatewayConfig:
    settings = runtime.settings
    return GatewayConfig(
        replica_id=runtime.replica_id("gateway"),
        max_body=settings.wxkf_max_body,
        schedule=RetrySchedule(parse_delays(settings.wxkf_retry_schedule)),
        allowed_networks=parse_networks(settings.wxkf_allowed_networks),
        retention=settings.wxkf_retention_days * 86400,
        replica_timeout=settings.wxkf_replica_timeout,
        # several heartbeats per timeout: with WXKF_REPLICA_TIMEOUT under the 5 s default interval,
        # live gateways took each other over as dead at every heartbeat
        heartbeat_interval=min(GatewayConfig.heartbeat_interval, settings.wxkf_replica_timeout / 4),
    )


def build_gateway(runtime: Runtime, manager_intake: ManagerIntake | None = None) -> Gateway:
    """A gateway handing kf events to an in-process ``manager_intake``, else forwarding them to
    ``MANAGER_ENDPOINT`` if set."""
    endpoint = runtime.settings.manager_endpoint
    config = gateway_config(runtime)
    deliveries = DeliveryClient(config.allowed_networks)
    manager_sink = None
    if manager_intake is None and endpoint is not None:
        token = runtime.settings.wxkf_gateway_token
        manager_sink = HttpManagerSink(
            deliveries, str(endpoint), token=token.get_secret_value() if token else None
        )
    return Gateway(
        runtime.db,
        runtime.box,
        runtime.http,
        config,
        manager_sink=manager_sink,
        manager_intake=manager_intake,
        deliveries=deliveries,
    )


def gateway_app(gateway: Gateway, admin_token: str | None) -> Starlette:
    return Starlette(
        routes=[*callback_routes(gateway), *admin_routes(gateway, admin_token), *common_routes()]
    )


async def run(settings: Settings) -> None:
    async with open_runtime(settings) as runtime:
        gateway = build_gateway(runtime)
        try:
            await gateway.start()
            await serve(
                gateway_app(gateway, runtime.admin_token), settings.host, settings.port, runtime=runtime
            )
        finally:
            await gateway.stop()
