"""Sending exactly once in effect: deterministic msgids, WeCom's refusal of a repeat, careful retries.

Every send made while a handler runs carries ``msgid = derive_msgid(account, message msgid, n)``,
``n`` counting the handler's sends from 0. A handler run again after a crash makes the same sends
with the same msgids; the puppet first looks each up in its own store (a redelivery only) and WeCom
refuses any it already accepted (``send_msg`` takes each msgid once per account), which
:func:`is_repeated_msgid` reads as "already sent". So the customer receives each reply once.

Retries happen only where WeCom's answer says a later attempt may succeed (system busy, concurrency
limit, no answer at all); a refusal (48 h window, 5-message limit, session state...) is raised at once
as its typed :class:`~wecom.errors.WeComError`. Retrying a send whose answer was lost is safe for the
same reason as above: it carries the same msgid.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from wecom.errors import WeComError

log = logging.getLogger(__name__)

#: errcodes after which the same send may succeed a moment later
RETRYABLE_ERRCODES = frozenset({-1, 45033})
RETRY_DELAYS = (0.5, 2.0)
#: WeCom's refusal of a msgid it already accepted: 40058 (invalid parameter) naming the msgid, as the
#: simulator answers. WeCom documents no dedicated code, so the errmsg must also say so.
REPEATED_MSGID_ERRCODES = frozenset({40058})
_REPEATED_WORDS = ("already", "repeat", "duplicate", "exist", "used")


@dataclass(frozen=True)
class Sent:
    """The answer to a send. ``already_sent``: this msgid had been sent before (a re-run handler)."""

    msgid: str
    already_sent: bool = False


def derive_msgid(account: str, msgid: str, position: int) -> str:
    """32 characters of ``[A-Za-z0-9_-]`` (WeCom's limit), the same for the same inputs."""
    digest = hashlib.sha256(f"{account}\n{msgid}\n{position}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:32]


def is_repeated_msgid(exc: WeComError) -> bool:
    """Whether WeCom refused a send because its msgid was already used (so it was sent before)."""
    text = exc.errmsg.lower()
    return (
        exc.errcode in REPEATED_MSGID_ERRCODES and "msgid" in text and any(w in text for w in _REPEATED_WORDS)
    )


@dataclass
class Handling:
    """The message whose handler is running (a context variable): its sends get derived msgids."""

    account: str
    msgid: str
    redelivery: bool
    _positions: itertools.count[int] = field(default_factory=itertools.count)

    def next_msgid(self) -> str:
        return derive_msgid(self.account, self.msgid, next(self._positions))


current_handling: contextvars.ContextVar[Handling | None] = contextvars.ContextVar(
    "puppets_current_handling", default=None
)


async def call_with_retries(send: Callable[[], Awaitable[str]], what: str) -> str:
    """Call ``send`` again after a transient failure, at most ``len(RETRY_DELAYS)`` times."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        last = attempt == len(RETRY_DELAYS)
        try:
            return await send()
        except WeComError as exc:
            if last or exc.errcode not in RETRYABLE_ERRCODES:
                raise
            reason = f"errcode {exc.errcode}"
        except httpx.TransportError as exc:
            if last:
                raise
            reason = type(exc).__name__
        log.info("%s failed (%s); retrying in %.1f s", what, reason, RETRY_DELAYS[attempt])
        await asyncio.sleep(RETRY_DELAYS[attempt])
    raise AssertionError("unreachable")
