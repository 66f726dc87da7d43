"""Who exists: corps, their apps, kf accounts and customers.

Plain dataclasses with lookups that raise :class:`ApiError` carrying the errcode WeCom would answer,
so every API rule resolves "the account this app may use" the same way. Conversation state (message
log, sessions) hangs off :class:`Account`; its rules live in :mod:`simulator.wecom.kf`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.wecom import errcodes as E
from simulator.wecom import ids
from simulator.wecom.errcodes import ApiError
from simulator.wecom.sessions import Session
from wecom.crypto import MsgCrypt

FIRST_AGENTID = 1000002


@dataclass(eq=False)
class App:
    """A self-built app: its secret gets access tokens; token and AES key sign and encrypt callbacks."""

    corp_id: str
    agentid: int
    name: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)
    callback_url: str | None = None
    gettoken_calls: int = 0

    def crypt(self) -> MsgCrypt:
        return MsgCrypt(self.token, self.encoding_aes_key, self.corp_id)

    def describe(self) -> dict[str, Any]:
        """Everything, secrets included: the control API is a developer tool for simulated corps."""
        return {
            "corpid": self.corp_id,
            "agentid": self.agentid,
            "name": self.name,
            "secret": self.secret,
            "token": self.token,
            "encoding_aes_key": self.encoding_aes_key,
            "callback_url": self.callback_url,
            "gettoken_calls": self.gettoken_calls,
        }


@dataclass(eq=False)
class Customer:
    external_userid: str
    nickname: str = ""
    avatar: str = ""
    gender: int = 0
    unionid: str | None = None
    enter_session_context: dict[str, Any] | None = None

    def describe(self, with_context: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "external_userid": self.external_userid,
            "nickname": self.nickname,
            "avatar": self.avatar,
            "gender": self.gender,
        }
        if self.unionid is not None:
            data["unionid"] = self.unionid
        if with_context and self.enter_session_context is not None:
            data["enter_session_context"] = self.enter_session_context
        return data


@dataclass(eq=False)
class LogEntry:
    """One message or event in an account's stream, in the shape ``kf/sync_msg`` returns it."""

    position: int
    msgid: str
    at: float
    origin: int  # 3 customer, 4 system event, 5 servicer
    msgtype: str
    body: dict[str, Any]
    external_userid: str | None = None
    servicer_userid: str | None = None
    via_api: bool = False  # sent with send_msg / send_msg_on_event: never returned by sync_msg

    def item(self, open_kfid: str) -> dict[str, Any]:
        data: dict[str, Any] = {"msgid": self.msgid}
        if self.msgtype != "event":  # event items carry open_kfid/external_userid inside the event
            data["open_kfid"] = open_kfid
            data["external_userid"] = self.external_userid
        data["send_time"] = int(self.at)
        data["origin"] = self.origin
        if self.servicer_userid:
            data["servicer_userid"] = self.servicer_userid
        data["msgtype"] = self.msgtype
        data[self.msgtype] = self.body
        return data


@dataclass(eq=False)
class Account:
    open_kfid: str
    name: str
    avatar: str = ""
    managed_by: set[int] = field(default_factory=set)  # agentids with manage_privilege
    servicers: list[str] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list, repr=False)
    sessions: dict[str, Session] = field(default_factory=dict, repr=False)

    def managed(self, app: App) -> bool:
        return app.agentid in self.managed_by

    def session(self, external_userid: str) -> Session:
        return self.sessions.setdefault(external_userid, Session())

    def describe(self) -> dict[str, Any]:
        return {
            "open_kfid": self.open_kfid,
            "name": self.name,
            "avatar": self.avatar,
            "managed_by": sorted(self.managed_by),
            "servicers": list(self.servicers),
        }


@dataclass(eq=False)
class Corp:
    corp_id: str
    name: str = ""
    apps: dict[int, App] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    msgids: set[str] = field(default_factory=set, repr=False)  # every kf msgid used, for uniqueness

    def app(self, agentid: int) -> App:
        try:
            return self.apps[agentid]
        except KeyError:
            raise LookupError(f"corp {self.corp_id} has no app {agentid}") from None

    def app_by_secret(self, secret: str) -> App | None:
        return next((app for app in self.apps.values() if app.secret == secret), None)

    def account(self, open_kfid: str) -> Account:
        """The account, or 95000 for an empty id and 95004 for one this corp does not have."""
        if not open_kfid:
            raise ApiError(E.INVALID_OPEN_KFID, "invalid open_kfid")
        account = self.accounts.get(open_kfid)
        if account is None:
            raise ApiError(E.OPEN_KFID_NOT_FOUND, f"open_kfid not found: {open_kfid}")
        return account

    def managed_account(self, app: App, open_kfid: str) -> Account:
        """The account, if ``app`` may operate it through the API."""
        account = self.account(open_kfid)
        if not account.managed(app):
            raise ApiError(E.INVALID_OPEN_KFID, f"open_kfid {open_kfid} is not managed by this app")
        return account

    def customer(self, external_userid: str) -> Customer:
        customer = self.customers.get(external_userid) if external_userid else None
        if customer is None:
            raise ApiError(E.INVALID_EXTERNAL_USERID, f"invalid external_userid: {external_userid}")
        return customer

    def describe(self) -> dict[str, Any]:
        return {
            "corpid": self.corp_id,
            "name": self.name,
            "apps": [app.describe() for app in self.apps.values()],
            "accounts": [account.describe() for account in self.accounts.values()],
            "customers": [customer.describe() for customer in self.customers.values()],
        }


class Directory:
    """All corps, and the constructors that fill in generated ids and credentials."""

    def __init__(self) -> None:
        self.corps: dict[str, Corp] = {}

    def corp(self, corp_id: str) -> Corp:
        try:
            return self.corps[corp_id]
        except KeyError:
            raise LookupError(f"no corp {corp_id}") from None

    def add_corp(self, corp_id: str | None = None, name: str = "") -> Corp:
        corp_id = corp_id or ids.corp_id()
        if corp_id in self.corps:
            raise ValueError(f"corp {corp_id} already exists")
        corp = self.corps[corp_id] = Corp(corp_id, name)
        return corp

    def add_app(
        self,
        corp: Corp,
        name: str = "kf",
        *,
        agentid: int | None = None,
        secret: str | None = None,
        token: str | None = None,
        encoding_aes_key: str | None = None,
        callback_url: str | None = None,
    ) -> App:
        if agentid is None:
            agentid = max([FIRST_AGENTID - 1, *corp.apps]) + 1
        if agentid in corp.apps:
            raise ValueError(f"corp {corp.corp_id} already has app {agentid}")
        secret = secret or ids.secret()
        if corp.app_by_secret(secret) is not None:
            raise ValueError("another app of this corp has that secret")
        app = App(
            corp.corp_id,
            agentid,
            name,
            secret=secret,
            token=token or ids.callback_token(),
            encoding_aes_key=encoding_aes_key or ids.encoding_aes_key(),
            callback_url=callback_url,
        )
        app.crypt()  # refuse a malformed EncodingAESKey now rather than at the first callback
        corp.apps[agentid] = app
        return app

    def add_account(
        self,
        corp: Corp,
        name: str,
        *,
        open_kfid: str | None = None,
        avatar: str = "",
        managed_by: list[int] | None = None,
        servicers: list[str] | None = None,
    ) -> Account:
        """``managed_by=None`` means every app the corp has now."""
        open_kfid = open_kfid or ids.open_kfid()
        if open_kfid in corp.accounts:
            raise ValueError(f"account {open_kfid} already exists")
        agentids = set(corp.apps) if managed_by is None else set(managed_by)
        unknown = agentids - set(corp.apps)
        if unknown:
            raise ValueError(f"corp {corp.corp_id} has no app {sorted(unknown)[0]}")
        account = Account(open_kfid, name, avatar, agentids, list(servicers or []))
        corp.accounts[open_kfid] = account
        return account

    def add_customer(self, corp: Corp, external_userid: str | None = None, **profile: Any) -> Customer:
        external_userid = external_userid or ids.external_userid()
        if external_userid in corp.customers:
            raise ValueError(f"customer {external_userid} already exists")
        customer = corp.customers[external_userid] = Customer(external_userid, **profile)
        return customer

    def ensure_customer(self, corp: Corp, external_userid: str | None) -> Customer:
        """The customer with that id, created on first contact (a new id if ``None``)."""
        if external_userid and external_userid in corp.customers:
            return corp.customers[external_userid]
        return self.add_customer(corp, external_userid)
