"""One kf account served by this process: its puller, its per-customer handlers, its sends.

Life of a message: the :class:`~puppets.pulling.Puller` records it (``new``) → it waits in its
customer's queue → ``handling`` is written → the bot's handler runs with a
:class:`~puppets.sending.Handling` context (so its sends get derived msgids) → ``done``, or
``failed`` with the exception logged under the msgid; the account goes on either way. At start-up the
unfinished messages are queued first, those that were ``handling`` marked as redeliveries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from puppets import metrics
from puppets.handling import CustomerQueues
from puppets.messages import (
    EnterSession,
    Incoming,
    MediaMessage,
    MsgSendFail,
    SessionStatusChange,
    parse_item,
)
from puppets.outgoing import Content, render
from puppets.pulling import Page, Puller
from puppets.sending import Handling, Sent, call_with_retries, current_handling, is_repeated_msgid
from puppets.store import SEND_FAILED, SENT, Pending, PuppetStore, customer_of
from wecom.client import KfAccount, KfCustomer, WeComClient
from wecom.crypto import MsgCrypt
from wecom.errors import WeComError
from wxkf.tasks import stop_tasks

if TYPE_CHECKING:
    from puppets.bot import Bot

log = logging.getLogger(__name__)

#: WeCom keeps uploaded media 3 days; reuse an upload for a little less than that
MEDIA_REUSE = 3 * 86400 - 3600
PROFILE_TTL = 600.0


@dataclass(frozen=True)
class AccountSpec:
    """What serving an account needs: the corp app's credentials and the account (id or name)."""

    corp_id: str
    corp_secret: str = field(repr=False)
    token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)
    open_kfid: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        return f"{self.corp_id}/{self.open_kfid or self.name}"


@dataclass
class RuntimeOptions:
    safety_interval: float = 600.0
    tokenless_backoff: tuple[float, float] = (10.0, 300.0)
    drain_timeout: float = 30.0
    #: a handler still running after this long is cancelled and its message marked failed
    handler_timeout: float = 300.0


class Account:
    """A resolved account (``open_kfid`` known) and everything running for it."""

    def __init__(
        self,
        spec: AccountSpec,
        open_kfid: str,
        name: str,
        client: WeComClient,
        store: PuppetStore,
        bot: Bot,
        options: RuntimeOptions,
    ) -> None:
        self.spec = spec
        self.corp_id = spec.corp_id
        self.open_kfid = open_kfid
        self.name = name
        self.key = f"{spec.corp_id}/{open_kfid}"
        self.crypt = MsgCrypt(spec.token, spec.encoding_aes_key, spec.corp_id)
        self.client = client
        self.store = store
        self.bot = bot
        self.options = options
        #: the manager's webhookSecret for this account, and the one before it (deliveries in flight)
        self.webhook_secrets: list[str] = []
        self.signed_deliveries = False  # set once the manager answered with a webhookSecret
        self.registered = False  # the manager answered a registration (a Node one issues no secret)
        self.puller = Puller(
            self.key,
            self._fetch,
            store,
            self._deliver,
            safety_interval=options.safety_interval,
            tokenless_backoff=options.tokenless_backoff,
        )
        self.queues: CustomerQueues[Pending] = CustomerQueues(self._handle, self.key)
        self._profiles: dict[str, tuple[float, KfCustomer]] = {}
        self._finishing: dict[str, asyncio.Task[None]] = {}  # customer -> completion being written
        self._spawn: Callable[[Awaitable[None], str], asyncio.Task[None]] | None = None
        self._pulling: asyncio.Task[None] | None = None
        #: set when the process stops: no pull starts, and deliveries are refused with a 503 so that
        #: the manager keeps them (the next start pulls everything after the cursor anyway)
        self.stopping = False
        self.handled = 0

    def __repr__(self) -> str:
        return f"Account({self.key!r})"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(
        self, spawn: Callable[[Awaitable[None], str], asyncio.Task[None]], *, pull: bool = True
    ) -> None:
        """Queue what an earlier run left unfinished; then start pulling (the first pull is token-less:
        the start-up catch-up), or, with ``pull=False``, leave that to the first :meth:`catch_up` (a
        puppet with a manager pulls once its first registration was tried, so that one pull covers
        everything before it)."""
        for pending in await self.store.pending(self.key):
            self.queues.put(customer_of(pending.item), pending)
        self._spawn = spawn
        if pull:
            self.start_pulling()

    def start_pulling(self) -> None:
        """Start the pull loop unless it runs (or the process stops); its first pull is token-less."""
        if self._pulling is None and not self.stopping:
            assert self._spawn is not None, "start() first"
            self._pulling = self._spawn(self.puller.run(), f"pull {self.key}")

    def catch_up(self) -> None:
        """Pull everything after the cursor, without a token unless a callback brings one: at start-up
        and whenever the manager (re-)registered this account, since callbacks it could not deliver
        before (WeCom gave up on them while it was unreachable) are never coming."""
        if self._pulling is None:
            self.start_pulling()
        elif not self.stopping:
            self.puller.catch_up()

    async def stop_pulling(self) -> None:
        """The first step of stopping: deliveries are refused from now on and no pull starts again (one
        cut off is harmless: its items are recorded before the cursor past them)."""
        self.stopping = True
        if self._pulling is not None:
            await stop_tasks([self._pulling])

    async def drain(self) -> None:
        """Let the running handlers finish and their completions be recorded; what is still queued is
        handled at the next start."""
        await self.queues.close(self.options.drain_timeout)
        if self._finishing:  # bounded: with the database away, a completion is retried at the next start
            _, unwritten = await asyncio.wait(
                set(self._finishing.values()), timeout=self.options.drain_timeout
            )
            if unwritten:
                log.warning("%s: %d completion(s) not recorded before stopping", self.key, len(unwritten))
                await stop_tasks(unwritten)
        await self.store.settle(self.options.drain_timeout)

    def set_webhook_secret(self, secret: str | None) -> None:
        self.registered = True
        if secret:
            self.webhook_secrets = [secret, *self.webhook_secrets[:1]]
            self.signed_deliveries = True

    # -- pulling ----------------------------------------------------------------------------
    async def _fetch(self, cursor: str | None, token: str | None) -> Page:
        body: dict[str, Any] = {"open_kfid": self.open_kfid, "limit": 1000}
        if cursor:
            body["cursor"] = cursor
        if token:
            body["token"] = token
        return Page.of(await self.client.call("POST", "kf/sync_msg", json=body))

    def _deliver(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.queues.put(customer_of(item), Pending(item, redelivery=False))

    # -- handling ---------------------------------------------------------------------------
    async def _handle(self, pending: Pending) -> None:
        message = parse_item(pending.item, redelivery=pending.redelivery)
        message._account = self
        customer = customer_of(pending.item)
        if isinstance(message, MsgSendFail) and message.fail_msgid:
            fail_msgid, fail_type = message.fail_msgid, message.fail_type
            await self._until_written(
                lambda: self.store.mark_not_delivered(self.key, fail_msgid, fail_type), "msg_send_fail"
            )
        handler = self.bot.handler_for(message)
        if handler is None:  # recorded for the conversation; nothing to run, so no "handling" write
            self._finish(customer, message.msgid, None)
            return
        # The previous message's end and this one's start share a database round (one batch of inserts
        # into the handler log): the handler starts once both are durable.
        started = self._until_written(
            lambda: self.store.mark_handling(self.key, message.msgid), "handling state"
        )
        previous = self._finishing.get(customer)
        if previous is not None:
            await asyncio.gather(asyncio.shield(previous), started)
        else:
            await started
        context = current_handling.set(Handling(self.key, message.msgid, pending.redelivery))
        error: str | None = None
        try:
            async with asyncio.timeout(self.options.handler_timeout):
                await handler(message)
        except TimeoutError:
            log.error(
                "%s: handler for msgid %s (%s) still running after %g s; cancelled",
                self.key, message.msgid, message.msgtype, self.options.handler_timeout,
            )  # fmt: skip
            error = f"timed out after {self.options.handler_timeout:g} s"
        except Exception as exc:
            log.exception("%s: handler failed for msgid %s (%s)", self.key, message.msgid, message.msgtype)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            current_handling.reset(context)
        self._finish(customer, message.msgid, error)
        self.handled += 1
        metrics.HANDLED.labels("failed" if error else "done").inc()
        if pending.redelivery:
            metrics.HANDLED.labels("redelivered").inc()

    def _finish(self, customer: str, msgid: str, error: str | None) -> None:
        """Record the completion behind the handler: the customer's next message waits for it."""
        write = self._until_written(lambda: self.store.mark_finished(self.key, msgid, error), "completion")
        task = asyncio.create_task(write)
        self._finishing[customer] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._finishing.get(customer) is done:
                del self._finishing[customer]

        task.add_done_callback(forget)

    async def _until_written(self, write: Callable[[], Awaitable[object]], what: str) -> None:
        """A state write the exactly-once rules rest on: retried until the database takes it."""
        delay = 0.1
        while True:
            try:
                await write()
                return
            except Exception as exc:
                log.warning("%s: writing the %s failed (%s); retrying in %.1f s", self.key, what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- sending ----------------------------------------------------------------------------
    async def reply(self, message: Incoming, content: Content) -> Sent:
        code = message.event_code if isinstance(message, EnterSession | SessionStatusChange) else ""
        if not message.external_userid and not code:
            raise ValueError(f"{message.msgtype} {message.msgid} has no customer to reply to")
        return await self.send(message.external_userid, content, code=code or None)

    async def send(self, customer: str, content: Content, *, code: str | None = None) -> Sent:
        """Send to ``customer`` (``send_msg``), or answer an event ``code`` (``send_msg_on_event``).

        Raises the typed :class:`~wecom.errors.WeComError` WeCom answered (``SendWindowExpired``,
        ``SendCountLimit``, ``StateForbidsSending``...) after recording the failed send.
        """
        msgtype, body = await render(content, self)
        handling = current_handling.get()
        if handling is not None and handling.account == self.key:
            msgid = handling.next_msgid()
            for_msgid: str | None = handling.msgid
            if handling.redelivery:
                earlier = await self.store.sent(self.key, msgid)
                if earlier is not None and earlier.get("state") == SENT:
                    metrics.SENDS.labels("already_sent").inc()
                    return Sent(msgid, already_sent=True)
        else:
            msgid, for_msgid = secrets.token_urlsafe(24)[:32], None

        async def attempt() -> str:
            if code:
                return await self.client.kf_send_msg_on_event(code, msgtype, body, msgid=msgid)
            return await self.client.kf_send_msg(customer, self.open_kfid, msgtype, body, msgid=msgid)

        def record(state: str, errcode: int | None = None) -> Awaitable[None]:
            return self.store.record_send(
                self.key, customer, msgid, msgtype, body, state=state, for_msgid=for_msgid, errcode=errcode
            )

        try:
            await call_with_retries(attempt, f"{self.key}: {msgtype} to {customer}")
        except WeComError as exc:
            if not is_repeated_msgid(exc):
                metrics.SENDS.labels("refused").inc()
                errcode = exc.errcode
                await self._until_written(lambda: record(SEND_FAILED, errcode), "failed send")
                raise
            sent = Sent(msgid, already_sent=True)
        else:
            sent = Sent(msgid)
        metrics.SENDS.labels("already_sent" if sent.already_sent else "sent").inc()
        await self._until_written(lambda: record(SENT), "send")
        return sent

    async def upload(self, media_type: str, content: bytes, filename: str) -> str:
        """``media/upload``, reused by content hash while WeCom keeps it (3 days)."""
        key = f"{self.corp_id}/{media_type}/{hashlib.sha256(content).hexdigest()}"
        media_id = await self.store.media_id(key)
        if media_id is None:
            uploaded = await self.client.media_upload(media_type, filename, content)
            media_id = uploaded.media_id
            await self.store.save_media(key, media_id, time.time() + MEDIA_REUSE)
        return media_id

    async def download(self, message: MediaMessage) -> bytes:
        return await self.client.media_get(message.media_id)

    # -- sessions and customers -------------------------------------------------------------
    async def profile(self, customer: str) -> KfCustomer | None:
        """The customer's profile (``kf/customer/batchget``), cached for 10 minutes."""
        cached = self._profiles.get(customer)
        if cached is not None and time.monotonic() - cached[0] < PROFILE_TTL:
            return cached[1]
        found, _ = await self.client.kf_customer_batchget([customer])
        if not found:
            return None
        if len(self._profiles) > 10_000:
            self._profiles.clear()
        self._profiles[customer] = (time.monotonic(), found[0])
        return found[0]

    async def service_state(self, customer: str) -> tuple[int, str | None]:
        """``(state, servicer_userid)``: 0 new, 1 bot, 2 waiting pool, 3 human, 4 ended."""
        return await self.client.kf_service_state_get(self.open_kfid, customer)

    async def transfer(self, customer: str, state: int, servicer_userid: str | None = None) -> str | None:
        """Move the session (2 to the waiting pool, 3 to ``servicer_userid``, 4 end it); returns the
        msg_code for one closing message, if WeCom gives one."""
        return await self.client.kf_service_state_trans(self.open_kfid, customer, state, servicer_userid)


async def list_accounts(client: WeComClient, label: str) -> list[KfAccount]:
    """Every account of the client's app (``kf/account/list``, all pages); LookupError with a reason."""
    try:
        return await client.kf_accounts_all()
    except WeComError as exc:
        raise LookupError(f"{label}: kf/account/list refused: {exc}") from None
    except httpx.HTTPError as exc:
        raise LookupError(f"{label}: kf/account/list failed: {exc}") from None


def resolve(accounts: list[KfAccount], spec: AccountSpec) -> tuple[str, str]:
    """``(open_kfid, name)`` of ``spec``'s account in its app's listing; LookupError with a reason."""
    for account in accounts:
        if (spec.open_kfid and account.open_kfid == spec.open_kfid) or (
            not spec.open_kfid and spec.name and account.name == spec.name
        ):
            if not account.manage_privilege:
                raise LookupError(f"{spec.label}: this app has no manage_privilege on the account")
            return account.open_kfid, account.name
    raise LookupError(f"{spec.label}: no such kf account for this corp app")
