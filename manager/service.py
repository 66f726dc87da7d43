"""The manager: registration by proof, event intake into per-account mailboxes, dispatch, liveness."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gateway.intake import CallbackEvent
from gateway.registry import AppRegistry
from manager import delivery, metrics
from manager.account_state import Undelivered
from manager.dispatcher import DispatchConfig, Dispatcher
from manager.mailbox import DECRYPTED, RAW, Latest, MailboxStore, account_key
from manager.puppets import Puppet, PuppetRegistry
from manager.recovery import Recovery
from token_service.service import TokenService, TokenUnavailable
from wecom.client import KfAccount, WeComClient
from wecom.crypto import MsgCrypt
from wecom.errors import WeComError
from wxkf import retention, webhooks
from wxkf.database import Database
from wxkf.endpoints import EndpointError, IPNetwork, validate_endpoint
from wxkf.outbound import Outbound
from wxkf.secretbox import SecretBox
from wxkf.single_flight import SingleFlight
from wxkf.tasks import run_every, stop_tasks

log = logging.getLogger(__name__)

ACCOUNT_LIST_TTL = 60.0
ACCOUNT_LIST_RECHECK = 5.0  # an unknown kfId refetches the listing at most this often


@dataclass(frozen=True)
class AccountListing:
    """One app's ``kf/account/list``, indexed for the lookups registration makes."""

    fetched_at: float
    by_id: dict[str, KfAccount]
    by_name: dict[str, KfAccount]

    @classmethod
    def of(cls, fetched_at: float, accounts: list[KfAccount]) -> AccountListing:
        by_name: dict[str, KfAccount] = {}
        for account in accounts:
            by_name.setdefault(account.name, account)  # the first, as a linear search would find
        return cls(fetched_at, {account.open_kfid: account for account in accounts}, by_name)

    def find(self, kf_id: str, kf_name: str) -> KfAccount | None:
        if kf_id:
            return self.by_id.get(kf_id)
        return self.by_name.get(kf_name) if kf_name else None


class RegistrationRefused(Exception):
    """Registration denied; ``status`` is the HTTP status and the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Registration:
    """A register request (compat field names live in the route)."""

    corp_id: str
    corp_secret: str = field(repr=False)
    kf_id: str
    kf_name: str
    endpoint: str
    token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)


@dataclass(frozen=True)
class ManagerConfig:
    owner: str
    dispatch: DispatchConfig
    delivery_timeout: float = 10.0
    registration_token: str | None = field(default=None, repr=False)
    allowed_networks: tuple[IPNetwork, ...] = ()
    retention: float = 7 * 86400.0
    checkpoint_interval: float = 1.0
    replica_timeout: float = 30.0


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
    ) -> None:
        self.config = config
        self.http = http
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
        )
        self._clock = clock
        self._account_lists: dict[str, AccountListing] = {}
        self._listing_fetches: SingleFlight[AccountListing] = SingleFlight()
        timeout = config.delivery_timeout

        self.puppet_http = Outbound(config.allowed_networks, timeout=timeout)

        async def deliver(puppet: Puppet, latest: Latest) -> None:
            await delivery.deliver(self.puppet_http, puppet, latest, timeout)

        async def probe(puppet: Puppet) -> bool:
            return await delivery.probe(self.puppet_http, puppet)

        self._tasks: list[asyncio.Task[None]] = []
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

    async def start(self) -> None:
        await self.puppets.ensure_indexes()
        await self.mailboxes.ensure_indexes()
        await self.recovery.ensure_indexes()
        await self.recovery.recover_own()  # logs what it re-queued
        await self.dispatcher.start()
        await self.dispatcher.sweep()
        self._tasks = [
            asyncio.create_task(retention.run_purger(self.mailboxes.purge_expired, "manager events")),
            asyncio.create_task(run_every(self._liveness, self.checkpoint_interval, "manager checkpoint")),
        ]

    @property
    def checkpoint_interval(self) -> float:
        """Often enough that the lease fence (0.75 x the replica timeout) outlasts a few checkpoints."""
        return min(self.config.checkpoint_interval, self.config.replica_timeout / 4)

    async def _liveness(self) -> None:
        if not await self.recovery.checkpoint():
            await self.dispatcher.lost_all_leases()
        await self.recovery.take_over_dead()

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        await self.dispatcher.stop()
        try:
            await self.recovery.checkpoint()
        except Exception:
            log.warning("could not record the final checkpoint; a restart rescans from the last one")
        await self.puppet_http.aclose()

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

    # -- registration -----------------------------------------------------------------------
    def registration_token_ok(self, presented: str | None) -> bool:
        expected = self.config.registration_token
        if not expected:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())

    async def register(self, reg: Registration) -> tuple[Puppet, str]:
        """Verify by proof, store, un-park; returns the puppet and its new webhook secret."""
        try:
            MsgCrypt(reg.token, reg.encoding_aes_key, reg.corp_id)
        except ValueError as exc:
            raise RegistrationRefused(400, f"token/encodingAESKey: {exc}") from None
        try:
            endpoint = await validate_endpoint(reg.endpoint, self.config.allowed_networks)
        except EndpointError as exc:
            raise RegistrationRefused(400, f"endpoint refused: {exc}") from None
        open_kfid, name = await self._prove_account(reg)
        app = self.apps.find_by_credentials(reg.corp_id, reg.token, reg.encoding_aes_key)
        if app is None:
            app_name = "kf-" + hashlib.sha256(reg.token.encode()).hexdigest()[:8]
            app = await self.apps.add(reg.corp_id, app_name, reg.token, reg.encoding_aes_key, reg.corp_secret)
        secret = webhooks.generate_secret()
        key = account_key(reg.corp_id, open_kfid)
        puppet = await self.puppets.register(
            key,
            corp_id=reg.corp_id,
            open_kfid=open_kfid,
            kf_name=name,
            endpoint=endpoint,
            app=app.key,
            corp_secret=reg.corp_secret,
            webhook_secret=secret,
        )
        log.info("registered puppet for %s (%s) at app %s", key, name, app.key)
        await self.dispatcher.back_online(key)
        return puppet, secret

    async def _accounts(self, corp_id: str, secret: str, max_age: float) -> AccountListing:
        """``kf/account/list`` as this secret sees it, at most ``max_age`` seconds old. Remembered, and
        fetched once for all concurrent callers: a fleet of puppets of one app registering at once (a
        deploy, a restart) costs one listing, not one per puppet (10,000 accounts are 100 pages)."""
        key = self.tokens.store.key_for(corp_id, secret)
        cached = self._account_lists.get(key)
        if cached is not None and self._clock() - cached.fetched_at < max_age:
            return cached

        async def fetch() -> AccountListing:
            client = WeComClient(self.http, self.api_base, self.tokens.provider(corp_id, secret))
            listing = AccountListing.of(self._clock(), await client.kf_accounts_all())
            self._account_lists[key] = listing
            return listing

        return await self._listing_fetches.run(key, fetch)

    async def _prove_account(self, reg: Registration) -> tuple[str, str]:
        """The secret must fetch a token and list the account with manage_privilege."""
        try:
            listing = await self._accounts(reg.corp_id, reg.corp_secret, ACCOUNT_LIST_TTL)
            found = listing.find(reg.kf_id, reg.kf_name)
            if found is None:  # maybe created since the listing was fetched: look again, not too often
                listing = await self._accounts(reg.corp_id, reg.corp_secret, ACCOUNT_LIST_RECHECK)
                found = listing.find(reg.kf_id, reg.kf_name)
        except TokenUnavailable as exc:
            raise RegistrationRefused(403, f"corpSecret refused by WeCom (errcode {exc.errcode})") from None
        except WeComError as exc:
            raise RegistrationRefused(403, f"kf/account/list failed: errcode {exc.errcode}") from None
        except httpx.HTTPError:
            raise RegistrationRefused(503, "WeCom unreachable; retry later") from None
        if found is None:
            which = f"kfId {reg.kf_id}" if reg.kf_id else f"kfName {reg.kf_name!r}"
            raise RegistrationRefused(403, f"{which} is not an account this corpSecret manages")
        if not found.manage_privilege:
            raise RegistrationRefused(403, "this secret's app has no manage_privilege on that account")
        return found.open_kfid, found.name

    async def deregister(self, corp_id: str, open_kfid: str) -> bool:
        return await self.puppets.deregister(account_key(corp_id, open_kfid))

    async def authenticate_puppet(self, corp_id: str, open_kfid: str, secret: str | None) -> Puppet | None:
        """The registered puppet if ``secret`` is its webhook secret or its corp secret."""
        if not secret:
            return None
        puppet = await self.puppets.get(account_key(corp_id, open_kfid))
        if puppet is None:
            return None
        for candidate in (puppet.webhook_secret, puppet.corp_secret):
            if hmac.compare_digest(candidate.encode(), secret.encode()):
                return puppet
        return None

    async def heartbeat(self, puppet: Puppet) -> None:
        if await self.puppets.mark_online(puppet.key):
            log.info("puppet %s is back online", puppet.key)
            await self.dispatcher.back_online(puppet.key)
