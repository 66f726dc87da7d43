"""Events an upstream gateway forwards: ``POST /callback/decrypted/{corpId}`` with ``{token, openKfId}``.

A forwarded event carries no WeCom signature, and the manager delivers it to the account's real
puppet signed with that puppet's own webhook secret, so a forgery would look genuine. The caller is
therefore what is checked (:class:`GatewayAuth`): a bearer ``WXKF_GATEWAY_TOKEN``, a caller address
inside ``WXKF_GATEWAY_NETWORKS``, or both when both are set; with neither set the route is closed.

What a forwarded event may create is bounded too: its corp must be one the hub has an app for, and
per corp at most :data:`UNREGISTERED_LIMIT` accounts that never had a puppet may hold events
(:class:`UnregisteredAccounts`); every id in the request is validated before anything is stored.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.registry import AppRegistry
from manager.mailbox import MAILBOXES, MailboxStore, account_key
from manager.puppets import COLLECTION as PUPPETS
from manager.puppets import PuppetRegistry
from wecom.models import CORP_ID, OPEN_KFID, SYNC_TOKEN
from wxkf.database import Database
from wxkf.endpoints import IPNetwork, parse_networks
from wxkf.http import Refusal, bearer_matches, check_id
from wxkf.settings import Settings
from wxkf.single_flight import SingleFlight

EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the hub's event ids (and a Node gateway's webhook-id)
UNREGISTERED_LIMIT = 100  # accounts per corp without a puppet that forwarded events may create
CORPS_REMEMBERED = 10_000


@dataclass(frozen=True)
class GatewayAuth:
    """Who may forward events. Every condition that is configured must hold."""

    token: str | None = field(default=None, repr=False)
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayAuth:
        token = settings.wxkf_gateway_token
        return cls(
            token.get_secret_value() if token else None, parse_networks(settings.wxkf_gateway_networks)
        )

    def check(self, request: Request) -> None:
        """Raise a :class:`Refusal` unless the caller of ``request`` may forward events."""
        caller = request.client.host if request.client else None
        if not self.token and not self.networks:
            raise Refusal(
                403,
                "gateway_auth_disabled",
                "forwarded events are refused until the manager knows its gateways: set "
                "WXKF_GATEWAY_TOKEN (wxkf gateway sends it as a bearer token) and/or "
                "WXKF_GATEWAY_NETWORKS (CIDRs of the gateways' addresses)",
            )
        if self.networks and not _inside(caller, self.networks):
            raise Refusal(403, "gateway_address", f"caller {caller} is not inside WXKF_GATEWAY_NETWORKS")
        if self.token and not bearer_matches(request, self.token):
            raise Refusal(401, "gateway_token", "missing or wrong bearer token (WXKF_GATEWAY_TOKEN)")


def _inside(host: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in networks)


class UnregisteredAccounts:
    """Per corp, the accounts without any puppet record that hold events; at most ``limit`` of them.

    Known to this process from the database once per corp (the corp's mailboxes minus its puppets),
    then kept in memory; a corp's set never exceeds ``limit`` and at most ``CORPS_REMEMBERED`` corps
    are remembered (the least recent is forgotten, and read again when needed).
    """

    def __init__(
        self,
        db: Database,
        puppets: PuppetRegistry,
        mailboxes: MailboxStore,
        limit: int = UNREGISTERED_LIMIT,
    ) -> None:
        self._db = db
        self._puppets = puppets
        self._mailboxes = mailboxes
        self.limit = limit
        self._by_corp: OrderedDict[str, set[str]] = OrderedDict()
        self._reads: SingleFlight[set[str]] = SingleFlight()

    async def admit(self, corp_id: str, open_kfid: str) -> None:
        """Return if an event for this account may be stored; else raise a 403 :class:`Refusal`."""
        key = account_key(corp_id, open_kfid)
        if await self._puppets.get(key) is not None:
            return
        unregistered = await self._of(corp_id)
        if key in unregistered:
            return
        if len(unregistered) >= self.limit and await self._mailboxes.get(key) is None:
            raise Refusal(
                403,
                "unknown_account",
                f"corp {corp_id} already holds events for {self.limit} accounts that never had a "
                f"puppet; register the puppet of {open_kfid} first",
            )
        if len(unregistered) < self.limit:
            unregistered.add(key)

    async def _of(self, corp_id: str) -> set[str]:
        known = self._by_corp.get(corp_id)
        if known is not None:
            self._by_corp.move_to_end(corp_id)
            return known

        async def read() -> set[str]:
            boxes = self._db[MAILBOXES].find({"corp_id": corp_id}, projection={"_id": 1})
            puppets = self._db[PUPPETS].find({"corp_id": corp_id}, projection={"_id": 1})
            with_puppet = {doc["_id"] async for doc in puppets}
            found = {doc["_id"] async for doc in boxes if doc["_id"] not in with_puppet}
            self._by_corp[corp_id] = found
            while len(self._by_corp) > CORPS_REMEMBERED:
                self._by_corp.popitem(last=False)
            return found

        return await self._reads.run(corp_id, read)


async def check_forwarded(
    apps: AppRegistry,
    accounts: UnregisteredAccounts,
    corp_id: str,
    open_kfid: str,
    token: str,
    event_id: str | None,
) -> None:
    """Every id valid, the corp known, the account admitted; else a :class:`Refusal`."""
    check_id(corp_id, CORP_ID, "corpId")
    check_id(open_kfid, OPEN_KFID, "openKfId")
    check_id(token, SYNC_TOKEN, "token")
    if event_id is not None:
        check_id(event_id, EVENT_ID, "eventId")
    if not await apps.knows_corp(corp_id):
        raise Refusal(404, "unknown_corp", f"no corp app registered for corp {corp_id}")
    await accounts.admit(corp_id, open_kfid)
