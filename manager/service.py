"""The manager: event intake into per-account mailboxes, dispatch, liveness."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gateway.intake import CallbackEvent
from gateway.registry import AppRegistry
from manager import catch_up, delivery, metrics
from manager.account_state import Undelivered
from manager.dispatcher import DispatchConfig, Dispatcher
from manager.mailbox import DECRYPTED, RAW, Latest, MailboxStore, account_key
from manager.puppets import Puppet, PuppetRegistry
from manager.recovery import COLLECTION as REPLICAS
from manager.recovery import Recovery
from manager.registration import Registrar
from manager.sockets import TRY_LATER, PuppetSockets
from token_service.service import TokenService
from wecom.http import WeComHttp
from wxkf import retention, up_period
from wxkf.database import Database
from wxkf.delivery import DEFAULT_CONNECTIONS_PER_HOST, DeliveryClient
from wxkf.endpoints import IPNetwork
from wxkf.secretbox import SecretBox
from wxkf.tasks import log_failure, run_every, stop_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerConfig:
    owner: str
    dispatch: DispatchConfig
    delivery_timeout: float = 10.0
    delivery_connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST
    registration_token: str | None = field(default=None, repr=False)
    allowed_networks: tuple[IPNetwork, ...] = ()
    retention: float = 7 * 86400.0
    checkpoint_interval: float = 1.0
    replica_timeout: float = 30.0
    #: a start with no other replica alive gives recent callbacks again (manager/catch_up.py)
    catch_up_after_outage: bool = True


class Manager:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        http: httpx.AsyncClient,
        tokens: TokenService,
        apps: AppRegistry,
        api_base: str,
        config: ManagerConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wecom: WeComHttp | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.http = http  # the compat API's WeCom proxy
        #: kf/account/list for registrations: the process's WeCom session, or its own (closed by stop())
        self.wecom = wecom if wecom is not None else WeComHttp(timeout=10.0)
        self._owns_wecom = wecom is None
        self.tokens = tokens
        self.apps = apps
        self.api_base = api_base
        self.puppets = PuppetRegistry(db, box, clock=clock)
        self.mailboxes = MailboxStore(db, owner=config.owner, clock=clock, keep_for=config.retention)
        self.undelivered = Undelivered()
        self.recovery = Recovery(
            db,
            self.mailboxes,
            self.undelivered,
            config.owner,
            timeout=config.replica_timeout,
            clock=clock,
            monotonic=monotonic,
            on_taken_over=self.puppets.release_sockets,  # a dead life's puppet sockets are gone
        )
        self._clock = clock
        timeout = config.delivery_timeout

        self.puppet_http = DeliveryClient(
            config.allowed_networks,
            connections_per_host=config.delivery_connections_per_host,
            timeout=timeout,
        )

        self.sockets = PuppetSockets()  # puppets connected out to /puppetWxkfManager/ws

        async def deliver(puppet: Puppet, latest: Latest) -> None:
            await delivery.deliver(self.puppet_http, puppet, latest, timeout, self.sockets)

        async def probe(puppet: Puppet) -> bool:
            return await delivery.probe(self.puppet_http, puppet, sockets=self.sockets)

        self._tasks: list[asyncio.Task[None]] = []
        self.up_period: str | None = None  # see wxkf.up_period; set at start, followed at each checkpoint
        self._unroutable_warned: dict[str, float] = {}
        self.dispatcher = Dispatcher(
            self.mailboxes,
            self.puppets,
            deliver,
            probe,
            config.dispatch,
            undelivered=self.undelivered,
            liveness=self.recovery.liveness,
            clock=clock,
            monotonic=monotonic,
        )
        self.registration = Registrar(
            self.puppets,
            apps,
            tokens,
            self.wecom,
            api_base,
            on_registered=self.dispatcher.back_online,
            registration_token=config.registration_token,
            allowed_networks=config.allowed_networks,
            clock=clock,
        )

    async def start(self) -> None:
        await self.puppets.ensure_indexes()
        await self.mailboxes.ensure_indexes()
        await self.recovery.ensure_indexes()
        # before this replica's own checkpoint: were others alive to take WeCom's callbacks meanwhile?
        alone = not await up_period.others_alive(
            self.db[REPLICAS], self.config.owner, self.config.replica_timeout, clock=self._clock
        )
        self.up_period = await up_period.begin_unless_others_alive(
            self.db, self.db[REPLICAS], self.config.owner, self.config.replica_timeout, clock=self._clock
        )
        await self.recovery.recover_own()  # logs what it re-queued
        await self.puppets.release_sockets(self.config.owner)  # a new process holds no socket yet
        await self.dispatcher.start()
        await self.dispatcher.sweep()
        self._tasks = [
            asyncio.create_task(retention.run_purger(self.mailboxes.purge_expired, "manager events")),
            asyncio.create_task(run_every(self._liveness, self.checkpoint_interval, "manager checkpoint")),
            asyncio.create_task(  # not inside _liveness: that waits on the database
                run_every(self._close_sockets_if_fenced, self.checkpoint_interval, "socket fence")
            ),
        ]
        if alone and self.config.catch_up_after_outage:  # callbacks may have been lost: puppets
            # that ignore upPeriod get one to catch up
            self._tasks.append(asyncio.create_task(self._catch_up(), name="manager:catch-up"))

    @property
    def checkpoint_interval(self) -> float:
        """Often enough that the lease fence (0.75 x the replica timeout) outlasts a few checkpoints."""
        return min(self.config.checkpoint_interval, self.config.replica_timeout / 4)

    async def _liveness(self) -> None:
        self.up_period = await up_period.current(self.db) or self.up_period  # a gateway may begin one
        if not await self.recovery.checkpoint():
            await self.dispatcher.lost_all_leases()
            # so are its sockets' claims (see Recovery): their puppets reconnect and prove again
            await self.sockets.close_all(TRY_LATER, "manager replica taken over; reconnect")
        await self.recovery.take_over_dead()

    async def _catch_up(self) -> None:
        try:
            await catch_up.redeliver_recent(self.db, self.mailboxes, clock=self._clock)
        except Exception as exc:
            log_failure("the catch-up after an outage", exc)

    async def _close_sockets_if_fenced(self) -> None:
        await self.sockets.close_if_fenced(lambda: not self.recovery.liveness.valid())

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        await self.dispatcher.stop()
        try:
            await self.recovery.checkpoint()
        except Exception:
            log.warning("could not record the final checkpoint; a restart rescans from the last one")
        await self.puppet_http.aclose()
        if self._owns_wecom:
            await self.wecom.aclose()

    # -- intake -----------------------------------------------------------------------------
    async def accept(
        self,
        corp_id: str,
        open_kfid: str,
        event_id: str,
        mode: str,
        *,
        token: str | None,
        body: str | None = None,
        query: str | None = None,
    ) -> bool:
        """Queue durably; returns once stored. Unknown or offline accounts are kept (parked).

        A live account's event is only logged and kept as undelivered (:mod:`manager.account_state`);
        the dispatcher delivers it from memory. Otherwise the mailbox holds it, written in the same
        round, and the puppet is looked up again afterwards (the cache may not know of a registration
        through another replica yet).
        """
        key = account_key(corp_id, open_kfid)
        puppet = await self.puppets.get(key)
        # no await from minting to adding: a checkpoint in between could pass the new arrival
        latest = Latest(event_id, self.undelivered.mint(self._clock(), event_id), mode, token, body, query)
        if puppet is None or not puppet.live:
            new = await self.mailboxes.accept(corp_id, open_kfid, latest, parked=True)
            current = await self.puppets.fresh(key)
            if current is not None and current.live:  # registered (elsewhere) since the cache looked
                await self.dispatcher.back_online(key)
        else:
            self.undelivered.add(key, latest)
            try:
                new = await self.mailboxes.log(corp_id, open_kfid, latest)
            except BaseException:
                # Cancelled or failed, the write may still have gone through (group commit writes on
                # for a caller that went away), and WeCom's retry would then be a duplicate: deliver it.
                self.dispatcher.notify(key, latest)
                raise
            if new:
                self.dispatcher.notify(key, latest)
            else:  # a retry of an event logged before: whoever logged it delivers it
                self.undelivered.discard(key, latest)
        metrics.ACCEPTED.labels("unroutable" if puppet is None else "new" if new else "duplicate").inc()
        if puppet is None and new:
            self._warn_unroutable(key)
        return new

    async def accept_decrypted(self, corp_id: str, open_kfid: str, token: str, event_id: str | None) -> bool:
        """``/callback/decrypted/{corpId}`` from an upstream gateway."""
        event_id = event_id or hashlib.sha256(f"{corp_id}\n{open_kfid}\n{token}".encode()).hexdigest()[:32]
        return await self.accept(corp_id, open_kfid, event_id, DECRYPTED, token=token)

    def _warn_unroutable(self, key: str) -> None:
        """Once a minute per account: a busy unregistered account must not flood the log."""
        now = self._clock()
        if now - self._unroutable_warned.get(key, float("-inf")) < 60.0:
            return
        if len(self._unroutable_warned) > 10_000:
            self._unroutable_warned.clear()
        self._unroutable_warned[key] = now
        log.warning(
            "events for unregistered account %s are stored as unroutable "
            "(see /admin/accounts?unroutable=1; logged once a minute)",
            key,
        )

    async def accept_callback(self, event: CallbackEvent) -> bool:
        """In-process intake from the gateway (``wxkf up``): durable when this returns, so the gateway
        may answer WeCom. The puppet gets the original encrypted XML and query (compat)."""
        if event.open_kf_id is None:
            raise ValueError(f"kf event {event.id} has no OpenKfId")
        return await self.accept(
            event.corp_id,
            event.open_kf_id,
            event.id,
            RAW,
            token=event.token,
            body=event.body,
            query=event.query,
        )

    async def heartbeat(self, puppet: Puppet) -> None:
        if await self.puppets.mark_online(puppet.key):
            log.info("puppet %s is back online", puppet.key)
            await self.dispatcher.back_online(puppet.key)
