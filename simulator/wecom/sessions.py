"""One customer's session with one kf account: service state and the rules for sending.

Service states (``kf/service_state/get``):

====  ======================  ==========================================================
0     untreated               the customer wrote; the API may answer, queue or assign
1     smart assistant         the API is answering
2     queued                  waiting in the pool for a servicer
3     human servicer          a servicer (``servicer_userid``) is answering
4     ended / not started     nothing going on; the customer writing again makes it 0
====  ======================  ==========================================================

Allowed ``kf/service_state/trans`` targets are :data:`TRANSITIONS`; nothing leaves 4 through the API
(95013), and nothing enters 0 through it. A session lasts ``send_window`` (48 h) after the customer's
last message, then ends by itself.

Sending with ``kf/send_msg`` needs, in this order: the customer wrote within ``send_window`` (95002),
the session is one the API answers — state 0 or 1 (95018) — and fewer than ``send_limit`` (5)
messages were sent since the customer last wrote (95001).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simulator.wecom import errcodes as E
from simulator.wecom.errcodes import ApiError

UNTREATED, ASSISTANT, QUEUED, HUMAN, ENDED = 0, 1, 2, 3, 4

TRANSITIONS: dict[int, frozenset[int]] = {
    UNTREATED: frozenset({ASSISTANT, QUEUED, HUMAN, ENDED}),
    ASSISTANT: frozenset({QUEUED, HUMAN, ENDED}),
    QUEUED: frozenset({HUMAN, ENDED}),
    HUMAN: frozenset({HUMAN, ENDED}),  # 3 -> 3 hands the customer to another servicer
    ENDED: frozenset(),
}
API_MAY_SEND = frozenset({UNTREATED, ASSISTANT})

CodeKind = Literal["reply", "end"]


@dataclass
class Session:
    state: int = ENDED
    servicer_userid: str | None = None
    last_customer_msg_at: float | None = None
    sends_since_customer: int = 0
    reply_code_issued: bool = False  # a session gets a reply msg_code only on its first move to 2 or 3
    last_welcome_at: float | None = None
    last_sent_at: float | None = None  # anything sent to the customer (API or servicer)

    def _end(self) -> None:
        self.state = ENDED
        self.servicer_userid = None

    def expire(self, now: float, window: float) -> None:
        """End a session whose customer has been silent for longer than ``window``."""
        if self.state != ENDED and (
            self.last_customer_msg_at is None or now - self.last_customer_msg_at > window
        ):
            self._end()

    def customer_wrote(self, now: float, window: float) -> None:
        self.expire(now, window)
        if self.state == ENDED:
            self.state = UNTREATED
            self.reply_code_issued = False
        self.last_customer_msg_at = now
        self.sends_since_customer = 0

    def servicer_wrote(self, now: float, servicer_userid: str, window: float) -> None:
        """A servicer wrote from the WeCom client; in an ended session that takes the customer over."""
        self.expire(now, window)
        if self.state == ENDED:
            self.state = HUMAN
            self.servicer_userid = servicer_userid
        self.last_sent_at = now

    def check_send(self, now: float, window: float, limit: int) -> None:
        """Raise the errcode WeCom answers if ``kf/send_msg`` is not allowed now."""
        self.expire(now, window)
        if self.last_customer_msg_at is None or now - self.last_customer_msg_at > window:
            raise ApiError(E.SEND_WINDOW_EXPIRED, "customer has not written within the send window")
        if self.state not in API_MAY_SEND:
            raise ApiError(E.STATE_FORBIDS_SENDING, f"service_state {self.state} does not allow API sending")
        if self.sends_since_customer >= limit:
            raise ApiError(E.SEND_COUNT_LIMIT, f"{limit} messages sent since the customer last wrote")

    def sent_by_api(self, now: float) -> None:
        self.sends_since_customer += 1
        self.last_sent_at = now

    def transition(
        self, target: int, servicer_userid: str | None, servicers: list[str], now: float, window: float
    ) -> CodeKind | None:
        """Apply ``kf/service_state/trans``; return which msg_code it earns, if any."""
        if target not in TRANSITIONS:
            raise ApiError(E.INVALID_PARAMETER, f"invalid service_state {target}")
        self.expire(now, window)
        if self.state == ENDED:
            raise ApiError(E.SESSION_ENDED, "session has ended")
        if target not in TRANSITIONS[self.state]:
            raise ApiError(E.TRANSITION_NOT_ALLOWED, f"service_state {self.state} cannot change to {target}")
        if target == HUMAN:
            if not servicer_userid:
                raise ApiError(E.INVALID_PARAMETER, "servicer_userid is required for service_state 3")
            if servicer_userid not in servicers:
                raise ApiError(E.NOT_A_SERVICER, f"{servicer_userid} is not a servicer of this account")
        if target == ENDED:
            self._end()
            return "end"
        self.state = target
        self.servicer_userid = servicer_userid if target == HUMAN else None
        if target in (QUEUED, HUMAN) and not self.reply_code_issued:
            self.reply_code_issued = True
            return "reply"
        return None

    def welcome_due(self, now: float, quiet_period: float) -> bool:
        """WeCom offers a welcome_code if the customer got no welcome and no message recently."""
        recent = [at for at in (self.last_welcome_at, self.last_sent_at) if at is not None]
        return all(now - at > quiet_period for at in recent)
