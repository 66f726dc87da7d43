"""Staying registered with the manager (the compat API), one loop per account.

*unregistered* → ``POST /puppetWxkfManager/register`` (the Node body) → *registered* (keeps the
``webhookSecret``; heartbeats every ``interval``) → a heartbeat refused or unanswered → *lost* →
re-register with jittered exponential backoff (1 s up to 60 s) → *registered* again.

Every registration, the first included, is followed by a pull without a token (:meth:`Account.catch_up
<puppets.account.Account.catch_up>`): callbacks WeCom gave up on while the manager could not be
reached are never coming, so the puppet catches up by itself. So does a heartbeat whose answer carries a
new ``upPeriod`` (:mod:`wxkf.up_period`): the hub went down and came back between two heartbeats, still
knowing the registration. The account's start-up pull waits for
the first attempt (made at once; whether it succeeds or not) so that one pull serves as both.
:meth:`ManagerLink.deregister` ends it on shutdown, once the account's handlers have finished.

A manager that issues no secret (the Node one) is accepted: the account then takes unsigned
deliveries, as a Node puppet does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from puppets.account import Account
from wxkf.retry import JITTER, backoff

log = logging.getLogger(__name__)

PREFIX = "/puppetWxkfManager"
BACKOFF = (1.0, 60.0)
#: the longest one registration or heartbeat may take, whatever it waits on (httpx's timeouts bound each
#: phase, a connection from the pool, a connect, each read, not the whole request)
ATTEMPT_TIMEOUT = 30.0
DEREGISTER_TIMEOUT = 5.0  # a manager that does not answer must not hold up the stop


class Refused(Exception):
    """The manager answered with a non-zero code."""


class ManagerLink:
    def __init__(
        self,
        http: httpx.AsyncClient,
        manager: str,
        endpoint: str,
        account: Account,
        *,
        interval: float = 15.0,
        registration_token: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self.http = http
        self.manager = manager.rstrip("/")
        self.endpoint = endpoint
        self.account = account
        self.interval = interval
        self._registration_token = registration_token
        self._sleep = sleep
        self._attempt_timeout = attempt_timeout
        self.registered = asyncio.Event()
        self.registrations = 0
        self.up_period: str | None = None  # the manager's (upPeriod in its answers; wxkf.up_period)
        self.catch_ups = 0  # pulls asked for because the up period changed under a heartbeat

    def _body(self) -> dict[str, str]:
        """The Node puppet's registration body (plus the hub's registration token, if configured)."""
        spec = self.account.spec
        body = {
            "kfId": self.account.open_kfid,
            "kfName": self.account.name,
            "endpoint": self.endpoint,
            "corpId": spec.corp_id,
            "corpSecret": spec.corp_secret,
            "token": spec.token,
            "encodingAESKey": spec.encoding_aes_key,
        }
        if self._registration_token:
            body["registrationToken"] = self._registration_token
        return body

    async def _post(self, route: str, body: dict[str, Any], bearer: str | None = None) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        response = await self.http.post(f"{self.manager}{PREFIX}/{route}", json=body, headers=headers)
        try:
            answer = response.json()
        except ValueError:
            raise Refused(f"{route}: HTTP {response.status_code}, not JSON") from None
        if not isinstance(answer, dict) or answer.get("code") != 0:
            message = answer.get("message") if isinstance(answer, dict) else None
            raise Refused(f"{route}: HTTP {response.status_code}: {message}")
        return answer

    async def register(self) -> None:
        answer = await self._post("register", self._body())
        secret = answer.get("webhookSecret")
        self.account.set_webhook_secret(secret if isinstance(secret, str) else None)
        self._note_up_period(answer)  # the caller pulls after every registration anyway
        self.registrations += 1
        self.registered.set()
        log.info("%s: registered with the manager at %s", self.account.key, self.manager)

    async def heartbeat(self) -> None:
        if self.account.stopping:  # no sign of life: it would only bring a delivery we refuse (503)
            return
        body = {"corpId": self.account.corp_id, "kfId": self.account.open_kfid}
        secret = self.account.webhook_secrets[0] if self.account.webhook_secrets else None
        if secret is None:  # a Node manager has no heartbeat: registering again is its sign of life
            await self.register()
            return
        answer = await self._post("heartbeat", body, bearer=secret)
        if self._note_up_period(answer):
            log.warning(
                "%s: the hub was down since the last heartbeat (a new up period); catching up",
                self.account.key,
            )
            self.catch_ups += 1
            self.account.catch_up()

    def _note_up_period(self, answer: dict[str, Any]) -> bool:
        """Remember the answer's ``upPeriod``; True if it replaced a different one (a Node manager
        sends none: nothing changes)."""
        period = answer.get("upPeriod")
        if not isinstance(period, str) or not period:
            return False
        changed = self.up_period is not None and period != self.up_period
        self.up_period = period
        return changed

    async def run(self) -> None:
        """Register, heartbeat; on loss re-register with backoff; catch up after each registration.

        Nothing but this task's own cancellation ends the loop: every attempt is bounded by the attempt
        timeout, and any failure, of whatever type, counts as the manager being unreachable (a puppet
        whose link ended would stay unregistered for good, with nothing in its log).
        """
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    if self.registered.is_set():
                        await self.heartbeat()
                    else:
                        await self.register()
                        self.account.catch_up()  # callbacks may have been lost while we were not registered
                failures = 0
                delay = self.interval * JITTER.uniform(0.9, 1.1)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # a cancellation not aimed at this task (a future it awaited was cancelled elsewhere)
                failures, delay = self._failed("stray cancellation", failures)
            except (httpx.HTTPError, Refused, TimeoutError) as exc:
                failures, delay = self._failed(str(exc) or type(exc).__name__, failures)
            except Exception as exc:  # a bug or a library's unexpected error: log it, keep trying
                log.error("%s: unexpected failure talking to the manager", self.account.key, exc_info=exc)
                failures, delay = self._failed(type(exc).__name__, failures)
            await self._sleep(delay)

    def _failed(self, reason: str, failures: int) -> tuple[int, float]:
        """Log a failed attempt; the failures in a row and the wait before the next attempt."""
        failures += 1
        if self.registered.is_set():
            log.warning("%s: lost the manager (%s); registering again", self.account.key, reason)
            self.registered.clear()
            return failures, 0.0
        self.account.start_pulling()  # the start-up pull does not wait for the manager
        delay = backoff(BACKOFF, failures)
        log.warning("%s: registration failed (%s); next try in %.0f s", self.account.key, reason, delay)
        return failures, delay

    async def deregister(self, timeout: float = DEREGISTER_TIMEOUT) -> None:
        """Tell the manager this account is gone (it keeps new events until a puppet registers), waiting
        at most ``timeout`` s. Call it after :meth:`run` was stopped, so that no heartbeat registers the
        account again."""
        if not self.registered.is_set():
            return
        body = {"corpId": self.account.corp_id, "kfId": self.account.open_kfid, "kfName": self.account.name}
        secret = self.account.webhook_secrets[0] if self.account.webhook_secrets else None
        if secret is None:
            body["corpSecret"] = self.account.spec.corp_secret
        try:
            async with asyncio.timeout(timeout):
                await self._post("deregister", body, bearer=secret)
            log.info("%s: deregistered", self.account.key)
        except (httpx.HTTPError, Refused, TimeoutError) as exc:
            log.warning("%s: deregistration failed: %s", self.account.key, str(exc) or type(exc).__name__)
        self.registered.clear()
