"""Registration by proof: a puppet proves it serves a kf account before the manager routes to it.

The proof is the corp app's own credentials: the ``corpSecret`` must fetch a token and list the
account (``kf/account/list``) with ``manage_privilege``, and the Token/EncodingAESKey must be a usable
callback key pair. A registered puppet later authenticates with the webhook secret it got back (or its
corp secret). Nothing here delivers events; :class:`Registrar` only tells the caller which account
became reachable (``on_registered``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from gateway.registry import AppRegistry
from manager.mailbox import account_key
from manager.puppets import Puppet, PuppetRegistry
from manager.sockets import SOCKET_ENDPOINT
from token_service.service import OverBudget, TokenService, TokenUnavailable
from wecom.client import KfAccount, WeComClient
from wecom.crypto import MsgCrypt
from wecom.errors import WeComError
from wecom.http import WeComHttp
from wecom.models import CORP_ID, OPEN_KFID
from wxkf import webhooks
from wxkf.endpoints import IPNetwork, validate_endpoint
from wxkf.http import Refusal
from wxkf.single_flight import SingleFlight

log = logging.getLogger(__name__)

ACCOUNT_LIST_TTL = 60.0
ACCOUNT_LIST_RECHECK = 5.0  # an unknown kfId refetches the listing at most this often
APPS_PER_CORP = 20  # callback credentials (corp apps) registrations may create per corp
ACCOUNT_LISTS_KEPT = 1_000  # listings remembered (one per corp app secret), least recent forgotten


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
    caller: str | None = None
    """The client address: proving a corpSecret the token service has never seen work costs an
    upstream ``gettoken``, charged to this caller's budget (``None``: an in-process caller)."""


class Registrar:
    """Register, authenticate and deregister puppets."""

    def __init__(
        self,
        puppets: PuppetRegistry,
        apps: AppRegistry,
        tokens: TokenService,
        wecom: WeComHttp,
        api_base: str,
        *,
        on_registered: Callable[[str], Awaitable[None]],
        registration_token: str | None = None,
        allowed_networks: tuple[IPNetwork, ...] = (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.puppets = puppets
        self.apps = apps
        self.tokens = tokens
        self.wecom = wecom
        self.api_base = api_base
        self._on_registered = on_registered
        self._registration_token = registration_token
        self._allowed_networks = allowed_networks
        self._clock = clock
        self._sleep = sleep
        self.listing_recheck = ACCOUNT_LIST_RECHECK
        self._account_lists: OrderedDict[str, AccountListing] = OrderedDict()
        self._listing_fetches: SingleFlight[AccountListing] = SingleFlight()

    def registration_token_ok(self, presented: str | None) -> bool:
        expected = self._registration_token
        if not expected:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())

    async def register(self, reg: Registration) -> tuple[Puppet, str]:
        """Verify by proof, store, un-park; returns the puppet and its new webhook secret.

        Raises :class:`~wxkf.http.Refusal` saying which part of the proof failed.
        """
        try:
            MsgCrypt(reg.token, reg.encoding_aes_key, reg.corp_id)
        except ValueError as exc:
            raise Refusal(400, "bad_keys", f"token/encodingAESKey: {exc}") from None
        try:
            endpoint = (  # a socket puppet (manager.sockets) is reached over its own connection
                SOCKET_ENDPOINT
                if reg.endpoint == SOCKET_ENDPOINT
                else await validate_endpoint(reg.endpoint, self._allowed_networks)
            )
        except ValueError as exc:  # EndpointError, or any parse error it does not yet wrap
            raise Refusal(400, "bad_endpoint", f"endpoint refused: {exc}") from None
        open_kfid, name = await self._prove_account(reg)
        app = self.apps.find_by_credentials(reg.corp_id, reg.token, reg.encoding_aes_key)
        if app is None:
            if len(self.apps.apps(reg.corp_id)) >= APPS_PER_CORP:
                # each new pair of callback credentials is a corp app: bounded, whoever holds the secret
                raise Refusal(
                    409,
                    "too_many_apps",
                    f"corp {reg.corp_id} already has {APPS_PER_CORP} apps (callback Token/EncodingAESKey "
                    "pairs); register with one it has, or remove one through the admin API",
                )
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
        await self._on_registered(key)
        return puppet, secret

    async def _accounts(self, corp_id: str, secret: str, max_age: float) -> AccountListing:
        """``kf/account/list`` as this secret sees it, at most ``max_age`` seconds old. Remembered, and
        fetched once for all concurrent callers: a fleet of puppets of one app registering at once (a
        deploy, a restart) costs one listing, not one per puppet (10,000 accounts are 100 pages)."""
        key = self.tokens.store.key_for(corp_id, secret)
        cached = self._account_lists.get(key)
        if cached is not None and self._clock() - cached.fetched_at < max_age:
            self._account_lists.move_to_end(key)
            return cached

        async def fetch() -> AccountListing:
            client = WeComClient(self.wecom, self.api_base, self.tokens.provider(corp_id, secret))
            listing = AccountListing.of(self._clock(), await client.kf_accounts_all())
            self._account_lists[key] = listing
            self._account_lists.move_to_end(key)
            while len(self._account_lists) > ACCOUNT_LISTS_KEPT:
                self._account_lists.popitem(last=False)
            return listing

        return await self._listing_fetches.run(key, fetch)

    async def _prove_account(self, reg: Registration) -> tuple[str, str]:
        """The secret must fetch a token and list the account with manage_privilege.

        An account missing from the remembered listing may have been created since: the listing is
        fetched again, at most once per ``listing_recheck`` seconds, so a registration waits for the
        next allowed fetch (less than ``listing_recheck``) rather than being refused.
        """
        try:
            # the secret proves itself under the caller's budget first (random secrets cost the
            # attacker, not WeCom's gettoken limit); the listing then finds the pair proven
            await self.tokens.get(reg.corp_id, reg.corp_secret, caller=reg.caller)
            listing = await self._accounts(reg.corp_id, reg.corp_secret, ACCOUNT_LIST_TTL)
            found = listing.find(reg.kf_id, reg.kf_name)
            if found is None:
                wait = listing.fetched_at + self.listing_recheck - self._clock()
                if wait > 0:
                    await self._sleep(wait)
                listing = await self._accounts(reg.corp_id, reg.corp_secret, self.listing_recheck)
                found = listing.find(reg.kf_id, reg.kf_name)
        except OverBudget as exc:
            raise Refusal(429, "over_budget", exc.errmsg) from None
        except TokenUnavailable as exc:
            raise Refusal(
                403, "secret_refused", f"corpSecret refused by WeCom (errcode {exc.errcode})"
            ) from None
        except WeComError as exc:
            raise Refusal(403, "list_failed", f"kf/account/list failed: errcode {exc.errcode}") from None
        except httpx.HTTPError:
            raise Refusal(503, "wecom_unreachable", "WeCom unreachable; retry later") from None
        if found is None:
            which = f"kfId {reg.kf_id}" if reg.kf_id else f"kfName {reg.kf_name!r}"
            raise Refusal(
                403,
                "not_managed",
                f"{which} is not an account this corpSecret manages (kf/account/list, fetched again "
                "just now, does not list it)",
            )
        if not found.manage_privilege:
            raise Refusal(403, "no_privilege", "this secret's app has no manage_privilege on that account")
        return found.open_kfid, found.name

    async def deregister(self, corp_id: str, open_kfid: str) -> bool:
        return await self.puppets.deregister(account_key(corp_id, open_kfid))

    async def authenticate(self, corp_id: str, open_kfid: str, secret: str | None) -> Puppet | None:
        """The registered puppet if ``secret`` is its webhook secret or its corp secret. Ids of the
        wrong shape are never looked up (each lookup of a new key costs a query and a cache entry)."""
        if not secret or not CORP_ID.fullmatch(corp_id) or not OPEN_KFID.fullmatch(open_kfid):
            return None
        puppet = await self.puppets.get(account_key(corp_id, open_kfid))
        if puppet is None:
            return None
        for candidate in (puppet.webhook_secret, puppet.corp_secret):
            if hmac.compare_digest(candidate.encode(), secret.encode()):
                return puppet
        return None
