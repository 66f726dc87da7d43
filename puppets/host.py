"""Everything one ``wxkf puppet`` process runs for its accounts, started and stopped in order.

Start: indexes → per corp app one API client and token cache → each account resolved with
``kf/account/list`` (a refusal stops the start with one line) → its unfinished messages queued → its
start-up pull (token-less): at once without a manager; with one, right after the first registration
attempt (at most :data:`START_PULL_WAIT` later), and again after every later registration.

Stop (SIGTERM/SIGINT), :meth:`PuppetHost.stop`: finish what is being handled, then deregister —

1. stop pulling: no pull starts any more, and every delivery is answered 503 ``stopping``, so the
   manager keeps it in the account's mailbox (and WeCom retries a direct callback);
2. let the running handlers finish (their replies are sent) and their completions be recorded;
   nothing queued starts;
3. store the newest cursor;
4. deregister (the manager keeps new events until a puppet registers again), over HTTP or the socket.

Whatever was still queued or arrived meanwhile is recorded, or still in WeCom after the cursor, and
is handled at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
from starlette.applications import Starlette

from puppets.account import Account, AccountSpec, RuntimeOptions, list_accounts, resolve
from puppets.bot import Bot
from puppets.config import PuppetConfig
from puppets.manager_link import ManagerLink
from puppets.routes import Directory, callback_routes
from puppets.socket_link import SocketLink
from puppets.store import PuppetStore
from puppets.tokens import ServiceTokens
from wecom.client import KfAccount, WeComClient, fetch_access_token
from wecom.errors import WeComTransportError
from wecom.http import WeComHttp
from wecom.tokens import AccessToken, AccessTokenProvider, GetTokenProvider
from wxkf.database import Database
from wxkf.http import common_routes
from wxkf.retention import run_purger
from wxkf.tasks import log_failure, stop_tasks

log = logging.getLogger(__name__)

#: with a manager, the start-up pull waits for the first registration attempt at most this long
START_PULL_WAIT = 5.0
#: a link task that ended (it never should: see ManagerLink.run) is started again this much later
LINK_RESTART_DELAY = 1.0


class StartupError(RuntimeError):
    """An account cannot be served (unknown, no privilege, secret refused); one line says which."""


def token_source(config: PuppetConfig, api_base: str) -> tuple[str, str]:
    """``(base URL, api)`` answering gettoken: ``token_url``, else the manager's getToken, else WeCom."""
    if config.token_url:
        base, _, api = config.token_url.rpartition("/")
        return base, api
    if config.manager:
        return f"{config.manager}/puppetWxkfManager", "getToken"
    return api_base, "gettoken"


class PuppetHost:
    def __init__(
        self,
        config: PuppetConfig,
        bot: Bot,
        db: Database,
        http: httpx.AsyncClient,
        api_base: str,
        *,
        options: RuntimeOptions | None = None,
        wecom: WeComHttp | None = None,
    ) -> None:
        self.config = config
        self.bot = bot
        self.http = http  # the manager link's
        #: every WeCom call of the host's accounts; its own (closed by stop()) unless the caller's
        self.wecom = wecom if wecom is not None else WeComHttp()
        self._owns_wecom = wecom is None
        self.api_base = api_base.rstrip("/")
        self.store = PuppetStore(db, retention=config.retention_days * 86400)
        self.options = options or RuntimeOptions(
            safety_interval=config.safety_pull_interval, handler_timeout=config.handler_timeout
        )
        self.directory = Directory([], has_manager=config.manager is not None)
        self.accounts: list[Account] = []
        self.links: list[ManagerLink] = []
        self.socket_link: SocketLink | None = None  # --transport ws: one socket for every account
        self._clients: dict[tuple[str, str], WeComClient] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._link_tasks: list[asyncio.Task[Any]] = []
        self._leaving = False  # set by leave(): the link tasks end on purpose from then on

    def app(self) -> Starlette:
        if self.config.transport == "ws" and self.config.manager:  # deliveries come over the socket only
            return Starlette(routes=common_routes())
        return Starlette(routes=callback_routes(self.directory))

    def client_for(self, spec: AccountSpec) -> WeComClient:
        """One client and token cache per corp app, shared by its accounts."""
        key = (spec.corp_id, spec.corp_secret)
        client = self._clients.get(key)
        if client is None:
            base, api = token_source(self.config, self.api_base)

            async def fetch() -> AccessToken:
                try:
                    return await fetch_access_token(self.wecom, base, spec.corp_id, spec.corp_secret, api=api)
                except WeComTransportError as exc:
                    if base == self.api_base:
                        raise
                    # the token service is down: WeCom hands out the same still-valid token itself
                    log.warning("token service unreachable (%s); asking WeCom's gettoken directly", exc)
                    return await fetch_access_token(self.wecom, self.api_base, spec.corp_id, spec.corp_secret)

            cached = GetTokenProvider(fetch)
            tokens: AccessTokenProvider = cached
            if self.config.manager and not self.config.token_url:
                invalidate = f"{self.config.manager}/token/invalidate"
                tokens = ServiceTokens(cached, self.http, invalidate, spec.corp_id, spec.corp_secret)
            client = WeComClient(self.wecom, self.api_base, tokens)
            self._clients[key] = client
        return client

    def _spawn(self, work: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.append(task)
        return task

    async def prepare(self) -> None:
        """Indexes, and every account resolved (before anything is served or registered)."""
        await self.store.ensure_indexes()
        listings: dict[int, list[KfAccount]] = {}  # one kf/account/list per app, not per account
        for spec in self.config.accounts:
            client = self.client_for(spec)
            try:
                if id(client) not in listings:
                    listings[id(client)] = await list_accounts(client, spec.label)
                open_kfid, name = resolve(listings[id(client)], spec)
            except LookupError as exc:
                raise StartupError(str(exc)) from None
            if (spec.corp_id, open_kfid) in self.directory.accounts:
                raise StartupError(f"{spec.label}: the same account is configured twice")
            account = Account(spec, open_kfid, name, client, self.store, self.bot, self.options)
            self.directory.add(account)
            self.accounts.append(account)

    async def start(self) -> None:
        """Hand unfinished work to the bot, register, pull (after :meth:`prepare`)."""
        if not self.accounts:
            await self.prepare()
        for account in self.accounts:
            self.bot.attach(account)
            await account.start(self._spawn, pull=not self.config.manager)
            log.info("serving %s (%s)", account.key, account.name)
        if self.config.manager and self.config.transport == "ws":
            self.socket_link = SocketLink(
                self.config.manager,
                self.accounts,
                Starlette(routes=callback_routes(self.directory)),  # frames run through them in-process
                registration_token=self.config.registration_token,
            )
            self._start_link(self.socket_link.run, "manager socket")
        elif self.config.manager:
            for account in self.accounts:
                link = ManagerLink(
                    self.http,
                    self.config.manager,
                    self.config.endpoint,
                    account,
                    interval=self.config.heartbeat_interval,
                    registration_token=self.config.registration_token,
                )
                self.links.append(link)
                self._start_link(link.run, f"manager link {account.key}")
        if self.config.manager:
            self._spawn(self._start_pulling_after(START_PULL_WAIT), "start-up pulls")
        self._spawn(run_purger(self.store.purge, "puppet records"), "purger")

    def _start_link(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a link (registration loop or socket) until :meth:`leave`; one that ends before (a bug,
        a stray cancellation) is logged as an error and started again, so the accounts do not stay
        unregistered for good with nothing in the log."""
        task = asyncio.create_task(run(), name=name)
        self._link_tasks.append(task)

        def ended(task: asyncio.Task[None]) -> None:
            if self._leaving:
                return
            self._link_tasks.remove(task)
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, Exception):
                log_failure(name, exc, log)  # with its traceback
            how = "cancelled" if task.cancelled() else type(exc).__name__ if exc else "returned"
            log.error("%s ended (%s) while the puppet runs; starting it again", name, how)
            asyncio.get_running_loop().call_later(LINK_RESTART_DELAY, restart)

        def restart() -> None:
            if not self._leaving:
                self._start_link(run, name)

        task.add_done_callback(ended)

    async def _start_pulling_after(self, delay: float) -> None:
        """A manager slow to answer must not hold up the start-up pull for long."""
        await asyncio.sleep(delay)
        for account in self.accounts:
            account.start_pulling()

    async def stop(self) -> None:
        """Finish what is being handled, then deregister (the order in the module's docstring)."""
        try:
            await self.finish()
        finally:
            await self.leave()

    async def finish(self) -> None:
        """Stop pulling (deliveries are refused with a 503 from now on), let the running handlers
        finish and their completions be recorded, store the newest cursors."""
        await asyncio.gather(*(account.stop_pulling() for account in self.accounts))
        await stop_tasks(self._tasks)
        await asyncio.gather(*(account.drain() for account in self.accounts))
        await asyncio.gather(*(account.puller.flush() for account in self.accounts))

    async def leave(self) -> None:
        """Deregister every account (after :meth:`finish`), then stop the heartbeats and the socket."""
        self._leaving = True
        if self.socket_link is not None:
            await self.socket_link.leave()
        await stop_tasks(self._link_tasks)  # first: no heartbeat may register an account again
        await asyncio.gather(*(link.deregister() for link in self.links))
        for account in self.accounts:
            self.bot.detach(account)
        if self._owns_wecom:
            await self.wecom.aclose()
