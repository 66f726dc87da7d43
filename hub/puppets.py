"""``wxkf up --puppets puppets.toml``: the hub and the configured kf accounts in one process and database.

The in-process puppets are the same :class:`~puppets.host.PuppetHost` a ``wxkf puppet`` runs, and the
hub's manager reaches them the way it reaches any puppet: each account registers over HTTP, keeps the
``webhookSecret`` it is given, and receives signed deliveries on its own listener. That listener is
bound to an ephemeral port on 127.0.0.1, so the puppet routes never face the network the hub's port
faces. One code path means the same guarantees as a separate process: the manager's mailbox is
durable and ordered, the puppet records each pulled message before its cursor, every delivery is
signed, and tokens come from the hub's token service through its ``getToken``.

Start: config and bot checked before anything opens (one line, exit 2) → both listeners bound (a
registration or a delivery that comes early waits in the listen backlog) → runtime → the hub's services,
served → the accounts resolved, started and registered (then the ready line).

Stop (SIGTERM/SIGINT): the puppets stop pulling (deliveries are answered 503: the manager keeps them)
and finish their running handlers, then deregister, all while the hub still answers → the puppet
listener closes → the hub's listener closes → the manager and gateway stop → the
database closes. Each step is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import socket
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import typer
import uvicorn
from starlette.applications import Starlette

from hub.up import Hub
from puppets.bot import Bot
from puppets.config import ConfigError, PuppetConfig, load_file
from puppets.host import PuppetHost, StartupError
from puppets.main import BotError, bind, load_bot
from wxkf import health
from wxkf.database import DatabaseError
from wxkf.endpoints import parse_networks
from wxkf.runtime import open_runtime
from wxkf.server import uvicorn_config
from wxkf.settings import Settings

log = logging.getLogger(__name__)

#: keys of a ``wxkf puppet`` file that place a separate process; inside the hub they are the hub's
PLACEMENT_KEYS = ("manager", "self_endpoint", "host", "port", "data_dir", "token_url", "registration_token")
PUPPET_HOST = "127.0.0.1"
#: how long the in-process puppets get to finish their handlers (each handler has 30 s)
PUPPETS_STOP_TIMEOUT = 45.0
DEREGISTER_TIMEOUT = 10.0
REGISTER_TIMEOUT = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class InHubPuppets:
    """What ``--puppets`` asked for, checked: the accounts, the bot, and the file keys set aside."""

    config: PuppetConfig
    bot: Bot
    ignored: tuple[str, ...] = ()


def load_puppets(path: Path, bot: str | None, settings: Settings) -> InHubPuppets:
    """Read ``path`` and import the bot (``--bot``, else the file's ``bot``). Raises
    :class:`~puppets.config.ConfigError` or :class:`~puppets.main.BotError` with one line."""
    config = load_file(path)
    target = bot or config.bot
    if not target:
        raise ConfigError(f'{path}: no bot: give --bot MODULE:ATTR or bot = "MODULE:ATTR" in the file')
    if settings.wxkf_allowed_networks:
        address = ipaddress.ip_address(PUPPET_HOST)
        if not any(address in network for network in parse_networks(settings.wxkf_allowed_networks)):
            raise ConfigError(
                f"--puppets: WXKF_ALLOWED_NETWORKS must include {PUPPET_HOST}, where the hub's puppets listen"
            )
    given = tomllib.loads(path.read_text())  # load_file has just read and parsed it
    ignored = tuple(key for key in PLACEMENT_KEYS if key in given)
    return InHubPuppets(config, load_bot(target), ignored)


def loopback_url(host: str, port: int) -> str:
    """Where this process reaches a listener bound to ``host:port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def in_hub_config(config: PuppetConfig, settings: Settings, manager: str, endpoint: str) -> PuppetConfig:
    """``config`` placed inside the hub: this hub as manager and token service, its registration token."""
    token = settings.wxkf_registration_token
    return replace(
        config,
        manager=manager,
        self_endpoint=endpoint,
        host=PUPPET_HOST,
        token_url=None,
        registration_token=token.get_secret_value() if token else None,
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # run() owns the stop signals
        yield


@contextlib.asynccontextmanager
async def serving(app: Starlette, sock: socket.socket) -> AsyncIterator[asyncio.Task[None]]:
    """Serve ``app`` on the bound ``sock`` for the duration of the block; on leaving, finish the
    requests in flight (bounded) and close."""
    server = _Server(uvicorn_config(app, timeout_graceful_shutdown=10))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield task
    finally:
        server.should_exit = True
        await task


async def stop_puppets(host: PuppetHost) -> None:
    """Let the running handlers finish (at most :data:`PUPPETS_STOP_TIMEOUT`), then deregister (at most
    :data:`DEREGISTER_TIMEOUT`): the hub's manager keeps what arrives meanwhile."""
    try:
        async with asyncio.timeout(PUPPETS_STOP_TIMEOUT):
            await host.finish()
    except TimeoutError:
        log.warning("puppets did not finish within %g s; deregistering anyway", PUPPETS_STOP_TIMEOUT)
    try:
        async with asyncio.timeout(DEREGISTER_TIMEOUT):
            await host.leave()
    except TimeoutError:
        log.warning("puppets did not deregister within %g s; stopping the hub anyway", DEREGISTER_TIMEOUT)


async def registered(host: PuppetHost, stop: asyncio.Event) -> None:
    """Until every account is registered with the hub's manager (so the hub's ready line means its
    accounts take deliveries), a stop is asked for, or :data:`REGISTER_TIMEOUT` passes."""
    waits = {asyncio.ensure_future(link.registered.wait()) for link in host.links}
    stopping = asyncio.ensure_future(stop.wait())
    pending = set(waits)
    try:
        async with asyncio.timeout(REGISTER_TIMEOUT):
            while pending and not stop.is_set():
                _, pending = await asyncio.wait(pending | {stopping}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopping)
    except TimeoutError:
        log.warning("%d puppet account(s) not registered yet; they keep trying", len(pending))
    finally:
        for task in (*waits, stopping):
            task.cancel()


async def run(settings: Settings, puppets: InHubPuppets) -> None:
    """The hub and ``puppets`` until SIGTERM/SIGINT, then the orderly stop described above."""
    if puppets.ignored:
        log.warning(
            "--puppets: %s ignored: the hub's own puppets use this hub and its database",
            ", ".join(puppets.ignored),
        )
    hub_sock = bind(settings.host, settings.port)
    puppet_sock = bind(PUPPET_HOST, 0)
    stop = asyncio.Event()
    failure: asyncio.Future[str] | None = None
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        # unwound in reverse: puppets, their listener, the hub's listener, the hub, the database
        async with contextlib.AsyncExitStack() as stack:
            runtime = await stack.enter_async_context(open_runtime(settings))
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=30.0))
            hub = Hub(runtime)
            stack.push_async_callback(hub.stop)  # as hub.up.run: also after a failed start
            await hub.start()
            hub_app = hub.app()
            health.install(hub_app, runtime.database)  # /healthz, /readyz and 503s, as wxkf up's
            hub_server = await stack.enter_async_context(serving(hub_app, hub_sock))
            port = hub_sock.getsockname()[1]
            manager = loopback_url(settings.host, port)
            endpoint = loopback_url(PUPPET_HOST, puppet_sock.getsockname()[1])
            config = in_hub_config(puppets.config, settings, manager, endpoint)
            host = PuppetHost(config, puppets.bot, runtime.db, http, settings.api_base, wecom=runtime.wecom)
            puppet_server = await stack.enter_async_context(serving(host.app(), puppet_sock))
            stack.push_async_callback(stop_puppets, host)
            await host.start()
            await registered(host, stop)
            gc.collect()
            gc.freeze()  # as wxkf.server does: long-lived objects out of full collections
            log.info(
                "hub listening on %s:%s with %d puppet account(s)", settings.host, port, len(host.accounts)
            )
            stopped = asyncio.ensure_future(stop.wait())
            servers = {hub_server, puppet_server}  # a listener ending by itself ends the hub too
            failure = runtime.database.failure  # the embedded database lost for good: exit 1, as wxkf up
            ends: set[asyncio.Future[Any]] = {stopped, failure, *servers}
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            log.info("stopping: the puppets finish their running handlers, then deregister")
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        hub_sock.close()
        puppet_sock.close()
    if failure is not None and failure.done():
        raise DatabaseError(failure.result())


def up_with_puppets(path: Path, bot: str | None, host: str | None, port: int | None) -> None:
    """``wxkf up --puppets``: a bad file or bot is one line and exit status 2, before anything opens."""
    from hub.cli import (
        EXIT_BAD_SETTINGS,
        EXIT_INTERRUPTED,
        bind_overrides,
        fail,
        fast_event_loop,
        friendly_errors,
        startup,
    )

    with friendly_errors():
        settings = bind_overrides(startup(), host, port)
        try:
            puppets = load_puppets(path, bot, settings)
        except (ConfigError, BotError) as exc:
            fail(str(exc), EXIT_BAD_SETTINGS)
        try:
            with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
                runner.run(run(settings, puppets))
        except (ConfigError, StartupError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
