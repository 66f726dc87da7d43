"""The puppet's callback routes (the Node puppet's contract), authenticated.

* ``GET /callback`` — WeCom's URL verification, for running as WeCom's direct callback target. The
  request names no corp, so the app is the one whose callback Token makes ``msg_signature``: one
  SHA-1 per distinct Token, over parameters whose shape and length are checked first, and only that
  app decrypts; a forgery costs no decryption and gets ``403 bad_signature``.
* ``POST /callback`` — the encrypted XML exactly as WeCom sent it (directly, or relayed by the
  manager with the original query). WeCom's ``msg_signature`` is checked and the payload decrypted
  with the app whose corp is ``ToUserName``; the event's ``OpenKfId`` picks the account.
* ``POST /callback/decrypted`` — ``{"token", "openKfId"}`` from a manager; answers ``roger``.

With a manager, a delivery for an account this process does not serve (its corp, or the account in it)
gets ``404 account_not_served``: the manager's registration is stale, and it keeps the events until a
puppet registers the account. Without one, WeCom's callback for an account of the app that no puppet
here serves is answered ``success``: WeCom calls the one URL for all of an app's accounts, and would
only retry an error. A Node manager gets ``roger``/``success`` too (see
:attr:`Directory.honest_about_unserved`).

When the manager gave the account a ``webhookSecret``, every delivery must carry a valid Standard
Webhooks signature made with it (or with the previous one, for deliveries in flight across a
re-registration): a forged or replayed delivery gets a 401 and changes nothing. Without a manager,
``/callback/decrypted`` is refused: only WeCom's signed XML is accepted. A Node manager issues no
secret; its unsigned deliveries are accepted, as the Node puppet accepts them.

A callback only hands its token to the account's puller and is answered at once; the pull runs
behind the answer (WeCom waits at most 5 s, the manager 10 s). While the process stops, an
authenticated callback is answered 503 ``stopping``, so that its sender keeps it. The same
authenticated request again (WeCom's retry, or a captured callback replayed while its token still
works) is answered as the first was, without another pull: a replay flood cannot spend the corp's
``sync_msg`` budget. Nothing a caller sends creates state beyond the one newest token per account and
a bounded memory of the authenticated requests taken.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from puppets import metrics
from puppets.account import Account
from wecom.crypto import CryptoError, MsgCrypt, signature
from wecom.models import CallbackEnvelope, EventError, KfMsgOrEvent, parse_event
from wecom.xml import XMLError
from wxkf import webhooks
from wxkf.http import Refusal, common_routes, read_body
from wxkf.logging import warn_limited

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
#: requests taken that are remembered, to answer a repeat of one without pulling again
REQUESTS_REMEMBERED = 10_000


class DecryptedIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = Field(min_length=1, max_length=512)
    openKfId: str = Field(min_length=1, max_length=128)


def refuse(status: int, reason: str, detail: str = "") -> Response:
    metrics.REFUSED.labels(reason).inc()
    warn_limited(log, reason, "callback refused: %s%s", reason, f" ({detail})" if detail else "")
    return PlainTextResponse(reason, status_code=status)


def not_served(detail: str) -> Response:
    """``404 account_not_served``, to a manager's delivery for an account this process does not serve:
    the registration it delivered to is stale (this process was restarted without the account). The
    manager keeps the events until a puppet registers the account; ``roger``/``success`` would have
    told it they were taken. Says nothing but "not served here": no account list, no secret."""
    return refuse(
        404, "account_not_served", f"{detail}: not served here; the manager's registration is stale"
    )


def take(directory: Directory, account: Account, token: str, answer: str, request_id: str | None) -> Response:
    """Hand an authenticated callback's token to the account's puller; while the process stops, a 503
    instead: the sender keeps the callback (the manager's mailbox; WeCom retries), and the next start
    pulls everything after the cursor in any case.

    ``request_id`` names this exact request (see :meth:`Directory.taken_before`): the same request
    again — WeCom's retry, or a captured one replayed — is answered as before without a new pull."""
    if account.stopping:
        metrics.REFUSED.labels("stopping").inc()
        log.info("callback for %s refused: stopping (the sender keeps it)", account.key)
        return PlainTextResponse("stopping", status_code=503)
    if request_id is not None and directory.taken_before(request_id):
        metrics.REFUSED.labels("repeated").inc()
        warn_limited(log, "repeated", "callback for %s taken before: answered, not pulled again", account.key)
        return PlainTextResponse(answer)
    account.puller.callback(token)
    return PlainTextResponse(answer)


def request_id(account: Account, request: Request, msg_signature: str | None = None) -> str | None:
    """What tells this request from every other one for ``account``: with webhook signatures, its
    (verified) ``webhook-id`` and ``webhook-timestamp`` (a redelivery by the manager is signed anew);
    else WeCom's ``msg_signature``, over the timestamp, nonce and ciphertext. None for an unsigned
    ``{token, openKfId}`` (a Node manager's)."""
    if account.signed_deliveries:
        headers = request.headers
        event_id, stamp = headers.get("webhook-id", "")[:128], headers.get("webhook-timestamp", "")[:32]
        return f"{account.key}|{event_id}|{stamp}"
    if msg_signature is not None:
        return f"{account.key}|wecom|{msg_signature.lower()}"
    return None


class Directory:
    """The accounts this process serves, found by corp and open_kfid; one crypt per distinct app."""

    def __init__(self, accounts: Iterable[Account], *, has_manager: bool) -> None:
        self.accounts: dict[tuple[str, str], Account] = {}
        self._crypts: dict[str, list[MsgCrypt]] = {}  # corp -> its apps' crypts
        self._by_open_kfid: dict[str, list[Account]] = {}
        self._by_token: dict[str, list[MsgCrypt]] = {}  # an app's callback Token -> its crypts
        self._taken: OrderedDict[str, None] = OrderedDict()  # ids of requests taken, oldest first
        self.has_manager = has_manager
        for account in accounts:
            self.add(account)

    def add(self, account: Account) -> None:
        self.accounts[(account.corp_id, account.open_kfid)] = account
        self._by_open_kfid.setdefault(account.open_kfid, []).append(account)
        crypts = self._crypts.setdefault(account.corp_id, [])
        if not any(c.token == account.crypt.token and c.same_key(account.crypt) for c in crypts):
            crypts.append(account.crypt)
            self._by_token.setdefault(account.crypt.token, []).append(account.crypt)

    def taken_before(self, request_id: str) -> bool:
        """True if a request with this id was taken before; else remember it (the newest
        :data:`REQUESTS_REMEMBERED`, across accounts: only authenticated requests are remembered)."""
        if request_id in self._taken:
            self._taken.move_to_end(request_id)
            return True
        self._taken[request_id] = None
        while len(self._taken) > REQUESTS_REMEMBERED:
            self._taken.popitem(last=False)
        return False

    def signed_by(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> list[MsgCrypt]:
        """The crypts whose app's Token makes ``msg_signature`` (usually one; none for a forgery): one
        SHA-1 per distinct Token over bounded input, and no decryption, whoever calls."""
        wanted = msg_signature.lower().encode()
        return [
            crypt
            for token, crypts in self._by_token.items()
            if hmac.compare_digest(signature(token, timestamp, nonce, encrypt).encode(), wanted)
            for crypt in crypts
        ]

    @property
    def honest_about_unserved(self) -> bool:
        """Answer a delivery for an account not served here ``404 account_not_served``: with a manager,
        unless it is a Node ``wxkf-manager`` (it answered a registration without a webhookSecret),
        which keeps nothing it could not deliver and whose forward of a decrypted callback throws on
        a non-2xx; it gets the Node puppet's ``roger``/``success``, as before."""
        accounts = self.accounts.values()
        return self.has_manager and not any(a.registered and not a.signed_deliveries for a in accounts)

    @property
    def stopping(self) -> bool:
        """Every account is stopping (the process stops them all at once)."""
        return bool(self.accounts) and all(account.stopping for account in self.accounts.values())

    def crypts(self, corp_id: str) -> list[MsgCrypt]:
        """The crypts of ``corp_id``'s apps."""
        return self._crypts.get(corp_id, [])

    def by_open_kfid(self, open_kfid: str) -> list[Account]:
        """Usually one; the same open_kfid in two corps is told apart by the delivery's signature."""
        return self._by_open_kfid.get(open_kfid, [])


SIGNATURE = re.compile(r"[0-9a-fA-F]{40}")
TIMESTAMP = re.compile(r"[0-9]{1,20}")
NONCE = re.compile(r"[!-~]{1,64}")  # printable ASCII
ECHOSTR = re.compile(r"[A-Za-z0-9+/=]{1,1024}")  # base64 of a short plaintext (WeCom's is ~100 chars)


def signed_query(request: Request, *, with_echostr: bool = False) -> tuple[str, ...]:
    """WeCom's ``msg_signature``, ``timestamp``, ``nonce`` (and ``echostr``), each checked for its shape
    and length before any crypto runs; a :class:`~wxkf.http.Refusal` (400) names the first one wrong."""
    rules = {"msg_signature": SIGNATURE, "timestamp": TIMESTAMP, "nonce": NONCE}
    if with_echostr:
        rules["echostr"] = ECHOSTR
    values = []
    for name, shape in rules.items():
        value = request.query_params.get(name)
        if value is None:
            raise Refusal(400, "missing_parameter", name)
        if not shape.fullmatch(value):
            raise Refusal(400, "bad_parameter", f"{name}: {len(value)} characters, not of its shape")
        values.append(value)
    return tuple(values)


def signature_ok(account: Account, request: Request, body: bytes) -> bool:
    """True if the delivery needs no signature (no secret was issued) or one of ours matches."""
    if not account.signed_deliveries:
        return True
    for secret in account.webhook_secrets:
        try:
            webhooks.verify(secret, request.headers, body)
        except webhooks.WebhookVerificationError:
            continue
        return True
    return False


def refuse_unsigned(accounts: list[Account], request: Request, body: bytes) -> Response:
    """The 401 for a delivery none of ``accounts``' secrets verifies. Signed with one of them but outside
    the tolerance says so, with the offset: the manager's clock and this one disagree (or the delivery
    was captured and replayed), and "bad signature" alone would send an operator looking for a key."""
    stamp = request.headers.get("webhook-timestamp", "")
    for account in accounts:
        for secret in account.webhook_secrets:
            try:
                webhooks.verify(secret, request.headers, body, tolerance=2**62)
            except webhooks.WebhookVerificationError:
                continue
            offset = int(stamp) - int(time.time())
            detail = f"{account.key}: signed {offset:+d} s from this clock; are both clocks right?"
            return refuse(401, "stale_webhook_timestamp", detail)
    return refuse(401, "bad_webhook_signature", accounts[0].key)


def callback_routes(directory: Directory) -> list[BaseRoute]:
    async def verify_url(request: Request) -> Response:
        if directory.stopping:  # the manager's probe reads this as "gone", not as alive
            return PlainTextResponse("stopping", status_code=503)
        try:
            signature, timestamp, nonce, echostr = signed_query(request, with_echostr=True)
        except Refusal as exc:
            return refuse(exc.status, exc.reason, exc.message)
        for crypt in directory.signed_by(signature, timestamp, nonce, echostr):
            try:
                return Response(crypt.decrypt(echostr), media_type="text/plain")
            except CryptoError:  # signed with this app's Token, yet not its ciphertext: a forgery
                continue
        return refuse(403, "bad_signature", "URL verification")

    async def raw(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY)
        except Refusal as exc:  # too large, a bad length, or too slow to arrive
            return refuse(exc.status, exc.reason, exc.message)
        except ClientDisconnect:  # the sender gave up (WeCom after 5 s) and will retry: nothing to do
            log.info("callback sender disconnected before its body was read")
            return Response(status_code=400)
        try:
            parts = signed_query(request)
            envelope = CallbackEnvelope.from_xml(body)
        except Refusal as exc:
            return refuse(exc.status, exc.reason, exc.message)
        except XMLError as exc:
            return refuse(400, f"xml_{exc.reason}", str(exc))
        except EventError as exc:
            return refuse(400, exc.reason, str(exc))
        crypts = directory.crypts(envelope.to_user_name)
        if not crypts and directory.honest_about_unserved:  # no account of that corp is served here
            return not_served(envelope.to_user_name[:64])
        plaintext: bytes | None = None
        for crypt in crypts:
            try:
                plaintext = crypt.open(parts[0], parts[1], parts[2], envelope.encrypt)
                break
            except CryptoError:
                continue
        if plaintext is None:
            return refuse(403, "bad_signature", f"corp {envelope.to_user_name[:64]}")
        try:
            event = parse_event(plaintext)
        except XMLError as exc:
            return refuse(400, f"xml_{exc.reason}", str(exc))
        except EventError as exc:
            return refuse(400, exc.reason, str(exc))
        if not isinstance(event, KfMsgOrEvent):
            return PlainTextResponse("success")  # not a kf event: nothing to pull
        account = directory.accounts.get((event.to_user_name, event.open_kf_id))
        if account is None:
            if directory.honest_about_unserved:
                return not_served(f"{event.to_user_name[:64]}/{event.open_kf_id[:64]}")
            # direct mode: WeCom calls this one URL for every account of the app, served or not; an
            # error would only make it retry, and nothing here would ever take the callback. A Node
            # manager would relay the error to WeCom, which retries into the same registration.
            warn_limited(
                log,
                "unserved",
                "callback for an account this puppet does not serve: %s",
                event.open_kf_id[:64],
            )
            return PlainTextResponse("success")
        if directory.has_manager and not account.registered:
            return refuse(503, "not_registered", f"{account.key}: its signature cannot be checked yet")
        if not signature_ok(account, request, body):
            return refuse_unsigned([account], request, body)
        return take(directory, account, event.token, "success", request_id(account, request, parts[0]))

    async def decrypted(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY)
        except Refusal as exc:  # too large, a bad length, or too slow to arrive
            return refuse(exc.status, exc.reason, exc.message)
        except ClientDisconnect:  # the sender gave up (WeCom after 5 s) and will retry: nothing to do
            log.info("callback sender disconnected before its body was read")
            return Response(status_code=400)
        if not directory.has_manager:
            return refuse(403, "no_manager", "decrypted callbacks come only from a manager")
        try:
            parsed = DecryptedIn.model_validate_json(body)
        except ValidationError as exc:
            return refuse(400, "bad_request", f"{exc.error_count()} error(s) in the JSON body")
        candidates = directory.by_open_kfid(parsed.openKfId)
        if not candidates:
            if directory.honest_about_unserved:  # the id is the caller's, unauthenticated: not logged
                return not_served("a decrypted callback")
            warn_limited(log, "unserved", "decrypted callback for an account this puppet does not serve")
            return PlainTextResponse("roger")
        if not any(account.registered for account in candidates):
            return refuse(503, "not_registered", f"{candidates[0].key}: its signature cannot be checked yet")
        for account in candidates:
            if account.registered and signature_ok(account, request, body):
                return take(directory, account, parsed.token, "roger", request_id(account, request))
        return refuse_unsigned(candidates, request, body)

    return [
        Route("/callback", verify_url, methods=["GET"]),
        Route("/callback", raw, methods=["POST"]),
        Route("/callback/decrypted", decrypted, methods=["POST"]),
        *common_routes(),
    ]
