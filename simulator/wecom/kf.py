"""The kf (WeChat Customer Service) rules: accounts, the message log, sync_msg, sending, sessions.

Methods named after an API (``sync_msg``, ``send_msg``...) take the calling :class:`App` and already
parsed arguments, and return the response fields; the HTTP layer only parses and serialises. Methods
that play the customer (``customer_writes``, ``customer_enters``) are what the control API calls.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from simulator.clock import Clock
from simulator.config import SimConfig
from simulator.ratelimit import Limits
from simulator.wecom import errcodes as E
from simulator.wecom import ids, messages
from simulator.wecom.directory import Account, App, Corp, Customer, Directory, LogEntry
from simulator.wecom.errcodes import ApiError
from simulator.wecom.media import MEDIA_TYPES, MediaStore
from simulator.wecom.sessions import HUMAN, CodeKind

CUSTOMER, SYSTEM, SERVICER = 3, 4, 5
MAX_ACCOUNT_NAME = 16
SCENE_PATTERN = re.compile(r"[0-9a-zA-Z_-]{0,32}\Z")


@dataclass(eq=False)
class MsgToken:
    """The ``Token`` of one kf callback: lets sync_msg skip its strict limit for ``msg_token_ttl``."""

    corp_id: str
    open_kfid: str
    issued_at: float


@dataclass(eq=False)
class EventCode:
    """A welcome_code or msg_code: one ``kf/send_msg_on_event`` call, within ``ttl``."""

    kind: str  # welcome | reply | end
    corp_id: str
    open_kfid: str
    external_userid: str
    issued_at: float
    ttl: float
    used: bool = False


class Kf:
    def __init__(self, directory: Directory, media: MediaStore, config: SimConfig, clock: Clock) -> None:
        self.directory = directory
        self.media = media
        self.config = config
        self.clock = clock
        self.msg_tokens: dict[str, MsgToken] = {}
        self.codes: dict[str, EventCode] = {}
        self._cursor_key = secrets.token_bytes(32)
        self._tokenless = Limits([config.sync_tokenless_rate] if config.sync_tokenless_rate else [], clock)

    # -- accounts ---------------------------------------------------------------------------
    def account_list(self, app: App, offset: int, limit: int) -> list[dict[str, Any]]:
        if offset < 0 or not 1 <= limit <= 100:
            raise ApiError(E.INVALID_PARAMETER, "offset must be >= 0 and limit 1..100")
        accounts = list(self.directory.corp(app.corp_id).accounts.values())[offset : offset + limit]
        return [
            {"open_kfid": a.open_kfid, "name": a.name, "avatar": a.avatar, "manage_privilege": a.managed(app)}
            for a in accounts
        ]

    def _avatar(self, corp: Corp, media_id: str) -> str:
        self.media.get(corp.corp_id, media_id)
        return f"https://wework.qpic.cn/wwpic/sim/{media_id}/0"

    @staticmethod
    def _check_name(name: str) -> None:
        if not name or len(name) > MAX_ACCOUNT_NAME:
            raise ApiError(E.INVALID_ACCOUNT_NAME, f"account name must be 1..{MAX_ACCOUNT_NAME} characters")

    def account_add(self, app: App, name: str, media_id: str) -> Account:
        corp = self.directory.corp(app.corp_id)
        self._check_name(name)
        avatar = self._avatar(corp, media_id)
        return self.directory.add_account(corp, name, avatar=avatar, managed_by=[app.agentid])

    def account_del(self, app: App, open_kfid: str) -> None:
        corp = self.directory.corp(app.corp_id)
        corp.managed_account(app, open_kfid)
        del corp.accounts[open_kfid]

    def account_update(self, app: App, open_kfid: str, name: str | None, media_id: str | None) -> None:
        corp = self.directory.corp(app.corp_id)
        account = corp.managed_account(app, open_kfid)
        if name is not None:
            self._check_name(name)
        avatar = self._avatar(corp, media_id) if media_id else None
        account.name = account.name if name is None else name
        account.avatar = avatar or account.avatar

    def add_contact_way(self, app: App, open_kfid: str, scene: str | None) -> str:
        corp = self.directory.corp(app.corp_id)
        corp.managed_account(app, open_kfid)
        if scene is not None and not SCENE_PATTERN.match(scene):
            raise ApiError(E.INVALID_PARAMETER, "scene: at most 32 characters of [0-9a-zA-Z_-]")
        url = f"https://work.weixin.qq.com/kfid/{open_kfid}"
        return f"{url}?enc_scene={scene}" if scene else url

    def customer_batchget(
        self, app: App, external_userids: list[str], with_context: bool
    ) -> tuple[list[dict[str, Any]], list[str]]:
        if not 1 <= len(external_userids) <= 100:
            raise ApiError(E.INVALID_PARAMETER, "external_userid_list must hold 1..100 ids")
        corp = self.directory.corp(app.corp_id)
        found = [corp.customers[uid] for uid in external_userids if uid in corp.customers]
        invalid = [uid for uid in external_userids if uid not in corp.customers]
        return [customer.describe(with_context) for customer in found], invalid

    # -- the customer's side (control API) --------------------------------------------------
    def _append(self, corp: Corp, account: Account, **fields: Any) -> LogEntry:
        msgid = fields.pop("msgid", None) or ids.msgid()
        entry = LogEntry(len(account.log), msgid, self.clock(), **fields)
        account.log.append(entry)
        corp.msgids.add(msgid)
        return entry

    def customer_writes(
        self,
        corp: Corp,
        account: Account,
        customer: Customer,
        msgtype: str,
        body: dict[str, Any],
        *,
        servicer_userid: str | None = None,
    ) -> LogEntry:
        """The customer (or, with ``servicer_userid``, a servicer in the WeCom client) sends a message."""
        body = dict(body)
        if msgtype in MEDIA_TYPES and not body.get("media_id"):
            body["media_id"] = self.media.placeholder(corp.corp_id, msgtype).media_id
        session = account.session(customer.external_userid)
        now = self.clock()
        if servicer_userid:
            session.servicer_wrote(now, servicer_userid, self.config.send_window)
            origin = SERVICER
        else:
            session.customer_wrote(now, self.config.send_window)
            origin = CUSTOMER
        return self._append(
            corp,
            account,
            origin=origin,
            msgtype=msgtype,
            body=body,
            external_userid=customer.external_userid,
            servicer_userid=servicer_userid,
        )

    def customer_enters(
        self,
        corp: Corp,
        account: Account,
        customer: Customer,
        *,
        scene: str = "",
        scene_param: str = "",
        wechat_channels: dict[str, Any] | None = None,
        welcome: bool | None = None,
    ) -> tuple[LogEntry, str | None]:
        """The customer opens the conversation; ``welcome=None`` lets WeCom's rule decide on a code."""
        now = self.clock()
        session = account.session(customer.external_userid)
        if welcome is None:
            welcome = session.welcome_due(now, self.config.welcome_quiet_period)
        event: dict[str, Any] = {
            "event_type": "enter_session",
            "open_kfid": account.open_kfid,
            "external_userid": customer.external_userid,
            "scene": scene,
            "scene_param": scene_param,
        }
        code = None
        if welcome:
            code = self._issue_code(
                "welcome", corp, account, customer.external_userid, self.config.welcome_code_ttl
            )
            event["welcome_code"] = code
        if wechat_channels is not None:
            event["wechat_channels"] = wechat_channels
        customer.enter_session_context = {
            "scene": scene,
            "scene_param": scene_param,
            **({"wechat_channels": wechat_channels} if wechat_channels is not None else {}),
        }
        return self.system_event(corp, account, event), code

    def system_event(self, corp: Corp, account: Account, event: dict[str, Any]) -> LogEntry:
        """Any event (``msgtype: event``, origin 4) into the account's log."""
        event = dict(event)
        event.setdefault("open_kfid", account.open_kfid)
        return self._append(
            corp,
            account,
            origin=SYSTEM,
            msgtype="event",
            body=event,
            external_userid=event.get("external_userid"),
        )

    def issue_msg_token(self, corp: Corp, account: Account) -> str:
        token = ids.msg_token()
        self.msg_tokens[token] = MsgToken(corp.corp_id, account.open_kfid, self.clock())
        return token

    # -- sync_msg ---------------------------------------------------------------------------
    def sync_msg(
        self,
        app: App,
        open_kfid: str,
        *,
        cursor: str | None = None,
        token: str | None = None,
        limit: int = 1000,
        voice_format: int = 0,
    ) -> dict[str, Any]:
        corp = self.directory.corp(app.corp_id)
        account = corp.managed_account(app, open_kfid)
        if not 1 <= limit <= 1000:
            raise ApiError(E.INVALID_PARAMETER, "limit must be 1..1000")
        if voice_format not in (0, 1):
            raise ApiError(E.INVALID_PARAMETER, "voice_format must be 0 (amr) or 1 (silk)")
        now = self.clock()
        if token:
            issued = self.msg_tokens.get(token)
            if (
                issued is None
                or issued.corp_id != corp.corp_id
                or issued.open_kfid != open_kfid
                or now - issued.issued_at > self.config.msg_token_ttl
            ):
                raise ApiError(E.INVALID_MSG_TOKEN, "invalid msg token")
        elif not self._tokenless.hit((corp.corp_id, open_kfid)):
            raise ApiError(E.RATE_LIMITED, "api freq out of limit: sync_msg without token")
        since = now - self.config.sync_readable
        if cursor:
            start = messages.decode_cursor(self._cursor_key, open_kfid, cursor)
        else:
            start = messages.first_readable(account.log, since)
        items, end, has_more = messages.read_page(account.log, start, limit, since, open_kfid)
        return {
            "next_cursor": messages.encode_cursor(self._cursor_key, open_kfid, end),
            "has_more": int(has_more),
            "msg_list": items,
        }

    # -- sending ----------------------------------------------------------------------------
    def _take_msgid(self, corp: Corp, msgid: str | None) -> str:
        if msgid is None:
            return ids.msgid()
        messages.check_msgid(msgid)
        if msgid in corp.msgids:
            raise ApiError(E.INVALID_PARAMETER, f"msgid {msgid} already used")
        return msgid

    def _check_body(self, corp: Corp, msgtype: str, body: Any, allowed: frozenset[str]) -> None:
        def media_exists(media_id: str) -> None:
            self.media.get(corp.corp_id, media_id)

        messages.check_outgoing(msgtype, body, media_exists, allowed)

    def send_msg(
        self, app: App, touser: str, open_kfid: str, msgtype: str, body: Any, msgid: str | None = None
    ) -> str:
        corp = self.directory.corp(app.corp_id)
        account = corp.managed_account(app, open_kfid)
        customer = corp.customer(touser)
        msgid = self._take_msgid(corp, msgid)
        self._check_body(corp, msgtype, body, messages.SEND_TYPES)
        session = account.session(customer.external_userid)
        now = self.clock()
        session.check_send(now, self.config.send_window, self.config.send_limit)
        session.sent_by_api(now)
        return self._sent_by_api(corp, account, msgid, msgtype, body, customer.external_userid)

    def _sent_by_api(
        self, corp: Corp, account: Account, msgid: str, msgtype: str, body: Any, external_userid: str
    ) -> str:
        """Log a message a servicer sent through the API (sync_msg never returns these)."""
        self._append(
            corp,
            account,
            msgid=msgid,
            origin=SERVICER,
            msgtype=msgtype,
            body=body,
            external_userid=external_userid,
            via_api=True,
        )
        return msgid

    def _issue_code(self, kind: str, corp: Corp, account: Account, external_userid: str, ttl: float) -> str:
        code = ids.event_code()
        self.codes[code] = EventCode(
            kind, corp.corp_id, account.open_kfid, external_userid, self.clock(), ttl
        )
        return code

    def send_msg_on_event(
        self, app: App, code: str, msgtype: str, body: Any, msgid: str | None = None
    ) -> str:
        corp = self.directory.corp(app.corp_id)
        issued = self.codes.get(code) if code else None
        now = self.clock()
        if (
            issued is None
            or issued.corp_id != corp.corp_id
            or issued.used
            or now - issued.issued_at > issued.ttl
        ):
            raise ApiError(E.INVALID_PARAMETER, "invalid code: unknown, already used or expired")
        account = corp.managed_account(app, issued.open_kfid)
        msgid = self._take_msgid(corp, msgid)
        self._check_body(corp, msgtype, body, messages.EVENT_REPLY_TYPES)
        issued.used = True
        session = account.session(issued.external_userid)
        session.last_sent_at = now
        if issued.kind == "welcome":
            session.last_welcome_at = now
        return self._sent_by_api(corp, account, msgid, msgtype, body, issued.external_userid)

    # -- sessions ---------------------------------------------------------------------------
    def service_state_get(self, app: App, open_kfid: str, external_userid: str) -> dict[str, Any]:
        corp = self.directory.corp(app.corp_id)
        account = corp.managed_account(app, open_kfid)
        corp.customer(external_userid)
        session = account.session(external_userid)
        session.expire(self.clock(), self.config.send_window)
        result: dict[str, Any] = {"service_state": session.state}
        if session.state == HUMAN:
            result["servicer_userid"] = session.servicer_userid
        return result

    def service_state_trans(
        self, app: App, open_kfid: str, external_userid: str, service_state: int, servicer_userid: str | None
    ) -> str | None:
        """Change the state; returns the msg_code (reply on the first move to 2/3, end on 4), if any."""
        corp = self.directory.corp(app.corp_id)
        account = corp.managed_account(app, open_kfid)
        corp.customer(external_userid)
        session = account.session(external_userid)
        kind: CodeKind | None = session.transition(
            service_state, servicer_userid, account.servicers, self.clock(), self.config.send_window
        )
        if kind is None:
            return None
        return self._issue_code(kind, corp, account, external_userid, self.config.msg_code_ttl)

    # -- what customers received (control API) ----------------------------------------------
    def received(
        self, corp: Corp, external_userid: str, open_kfid: str | None = None
    ) -> list[dict[str, Any]]:
        """Messages sent to the customer (API and servicers), oldest first, across accounts."""
        result = []
        for account in corp.accounts.values():
            if open_kfid is not None and account.open_kfid != open_kfid:
                continue
            for entry in account.log:
                if entry.external_userid == external_userid and entry.origin == SERVICER:
                    result.append({**entry.item(account.open_kfid), "via_api": entry.via_api, "at": entry.at})
        return sorted(result, key=lambda item: item["at"])
