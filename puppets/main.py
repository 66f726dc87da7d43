"""``wxkf puppet``: load the bot and the configuration, open the database, serve until a stop signal.

The callback socket is bound before anything registers, so the manager's first delivery waits in
the listen backlog instead of being refused. SIGTERM/SIGINT start the orderly stop of
:class:`~puppets.host.PuppetHost` while the HTTP server still answers; then the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from puppets.bot import Bot
from puppets.config import ConfigError, PuppetConfig, load_env, load_file
from puppets.host import PuppetHost
from wecom.http import WeComHttp
from wxkf import health
from wxkf.database import DatabaseError, connect
from wxkf.server import uvicorn_config
from wxkf.settings import Settings

log = logging.getLogger(__name__)


class BotError(ValueError):
    """``--bot`` does not name an importable :class:`~puppets.Bot`; one line says why."""


def load_bot(target: str) -> Bot:
    """``"package.module:attr"`` → the Bot, importable from the working directory."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise BotError(f"--bot {target}: expected MODULE:ATTR, e.g. examples.echo:bot")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: any failure is the bot's
        raise BotError(f"--bot {target}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    bot = getattr(module, attr, None)
    if bot is None:
        raise BotError(f"--bot {target}: {module_name} has no attribute {attr!r}")
    if not isinstance(bot, Bot):
        raise BotError(f"--bot {target}: {attr} is a {type(bot).__name__}, not a puppets.Bot")
    return bot


def load_config(path: Path | None) -> PuppetConfig:
    """``--config`` if given, else the ``PUPPET_WXKF_*`` variables. Raises :class:`ConfigError`."""
    return load_file(path) if path is not None else load_env()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # run() owns the stop signals
        yield


async def run(config: PuppetConfig, bot: Bot, settings: Settings) -> None:
    """Serve ``config``'s accounts with ``bot`` until SIGTERM/SIGINT."""
    sock = bind(config.host, config.port)
    db_settings = settings.model_copy(update={"wxkf_data_dir": config.data_dir})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with (
            connect(db_settings) as (db, database),
            httpx.AsyncClient(timeout=30.0) as http,
            WeComHttp() as wecom,
        ):
            host = PuppetHost(config, bot, db, http, settings.api_base, wecom=wecom)
            await host.prepare()
            app = host.app()
            health.install(app, database)  # /healthz and /readyz say when the database is the problem
            server = _Server(uvicorn_config(app))
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            try:
                await host.start()
                log.info(
                    "puppet listening on %s:%s (%d account(s))",
                    config.host,
                    sock.getsockname()[1],
                    len(host.accounts),
                )
                stopped = asyncio.create_task(stop.wait())
                # the embedded database lost for good ends serving too: exit 1, a supervisor restarts us
                ends: set[asyncio.Future[Any]] = {serving, stopped, database.failure}
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                then = ", then deregistering" if config.manager else ""
                log.info("stopping: finishing running handlers%s", then)
            finally:
                await host.stop()
                server.should_exit = True
                await serving
            if database.failure.done():
                raise DatabaseError(database.failure.result())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        sock.close()
