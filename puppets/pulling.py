"""One account's ``kf/sync_msg`` loop: one pull at a time, always with the newest callback token.

A callback only says "something is new, pull with this Token"; whatever pull runs next reads
everything after the stored cursor, so callbacks that arrive during a pull are absorbed by it: the
pull keeps its page loop going while ``has_more`` is set *or* a newer token came in, then sleeps.
Two pulls never run on one cursor, however long a sync takes.

Without a token, ``sync_msg`` is strictly rate-limited, so the puller pulls token-less only when it
must (:meth:`Puller.catch_up`): at start-up, when the puppet re-registered after losing its manager,
after WeCom refused a token as expired (95007), and as a safety net when no pull has happened for
``safety_interval`` (jittered). A 45009 answer to a token-less pull backs off exponentially; a
callback token arriving meanwhile is used at once.

States (one task, one loop): *idle* (waiting for a token, a catch-up or the safety timer) → *pulling*
(pages until nothing more and no newer token) → *idle*; failures go to *backing off* (waiting, but a
new token ends the wait) → *pulling*.

Ordering of writes: each page's items are recorded before the cursor past them is stored
(:class:`~puppets.store.PuppetStore`); the cursor is stored behind the pull, newest value first and at
most once per ``cursor_interval`` (one durable update each: while callbacks come one by one, a write a
pull cost the database a synced commit per message), so a page costs one durable write on the pull's
path. A stored cursor that lags costs only re-reading pages whose items are recognised as duplicates;
:meth:`Puller.flush` stores the newest at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from puppets import metrics
from wecom.errors import ApiRateLimited, InvalidMsgToken, WeComError
from wxkf.logging import warn_limited
from wxkf.retry import JITTER
from wxkf.tasks import finished_within, stop_tasks

log = logging.getLogger(__name__)

Item = dict[str, Any]
EXPIRED_TOKENS = 64  # per account; a replay needs a new capture per token once WeCom refused it


class Records(Protocol):
    async def cursor(self, account: str) -> str | None: ...
    async def save_cursor(self, account: str, cursor: str) -> None: ...
    async def record(self, account: str, items: Sequence[Item]) -> list[Item]: ...


@dataclass(frozen=True)
class Page:
    """One ``sync_msg`` answer. Items stay plain dicts: one WeCom shapes oddly must not fail the page."""

    items: list[Item]
    next_cursor: str = ""
    has_more: bool = False

    @classmethod
    def of(cls, payload: dict[str, Any]) -> Page:
        items = payload.get("msg_list")
        cursor = payload.get("next_cursor")
        return cls(
            [item for item in items if isinstance(item, dict)] if isinstance(items, list) else [],
            cursor if isinstance(cursor, str) else "",
            bool(payload.get("has_more")),
        )


Fetch = Callable[[str | None, str | None], Awaitable[Page]]


class Puller:
    """Pulls for ``account`` through ``fetch(cursor, token)``; hands new items to ``deliver``."""

    def __init__(
        self,
        account: str,
        fetch: Fetch,
        records: Records,
        deliver: Callable[[list[Item]], None],
        *,
        safety_interval: float = 600.0,
        tokenless_backoff: tuple[float, float] = (10.0, 300.0),
        error_backoff: tuple[float, float] = (1.0, 60.0),
        cursor_interval: float = 1.0,
    ) -> None:
        self.account = account
        self._fetch = fetch
        self._records = records
        self._deliver = deliver
        self.safety_interval = safety_interval
        self._tokenless_backoff = tokenless_backoff
        self._error_backoff = error_backoff
        self._token: str | None = None
        #: tokens WeCom called expired: a callback replayed with one is ignored, not pulled with again
        #: (made at the first 95007: an idle account does not pay for it)
        self._expired: deque[str] | None = None
        self._catch_up = False
        self._wake = asyncio.Event()
        self._cursor: str | None = None
        self._cursor_loaded = False
        self._saved_cursor: str | None = None
        self._saver: asyncio.Task[None] | None = None
        self.cursor_interval = cursor_interval
        self._cursor_saved_at = -math.inf  # monotonic
        self._save_now = asyncio.Event()  # flush(): no more waiting between cursor writes
        self.pulls = 0  # sync_msg calls made
        self.tokenless_pulls = 0
        self.caught_up = asyncio.Event()  # set after each pull that found nothing more

    def callback(self, token: str) -> None:
        """A kf callback for this account: pull with ``token`` (the newest one wins)."""
        if self._expired is not None and token in self._expired:
            warn_limited(
                log, "expired_token", "%s: a callback with a token WeCom called expired ignored", self.account
            )
            return
        self._token = token
        self._wake.set()

    def catch_up(self) -> None:
        """Pull even without a token (start-up, after an outage)."""
        self._catch_up = True
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled. No failure ends the loop: WeCom, the network or the database being down
        only delays the next pull (the cursor is re-read from the store until that works)."""
        self.catch_up()
        failures = 0
        while True:
            await self._idle()
            token, self._token = self._token, None
            if token is None and not self._catch_up:
                continue
            self._catch_up = False  # any pull reads everything after the cursor
            try:
                if not self._cursor_loaded:
                    self._cursor = self._saved_cursor = await self._records.cursor(self.account)
                    self._cursor_loaded = True
                await self._pull(token)
                failures = 0
                continue
            except InvalidMsgToken:
                metrics.PULL_FAILURES.labels("95007").inc()
                log.info("%s: callback token expired (95007); pulling without one", self.account)
                self.catch_up()
                continue
            except ApiRateLimited:
                metrics.PULL_FAILURES.labels("45009").inc()
                failures += 1
                bounds = self._tokenless_backoff if token is None else self._error_backoff
                delay = _backoff(bounds, failures)
                log.warning("%s: sync_msg rate-limited (45009); next try in %.0f s", self.account, delay)
            except (WeComError, httpx.HTTPError) as exc:
                metrics.PULL_FAILURES.labels("wecom").inc()
                failures += 1
                delay = _backoff(self._error_backoff, failures)
                log.warning("%s: sync_msg failed (%s); retrying in %.1f s", self.account, exc, delay)
            except Exception:
                metrics.PULL_FAILURES.labels("other").inc()
                failures += 1
                delay = _backoff(self._error_backoff, failures)
                log.exception("%s: pull failed; retrying in %.1f s", self.account, delay)
            await self._wait(delay)  # cut short by a new callback token
            self._token = self._token or token  # the old one is still good unless a newer one came
            self.catch_up()

    async def _idle(self) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        timeout = self.safety_interval * JITTER.uniform(0.8, 1.2)
        if not await finished_within(self._wake.wait(), timeout):
            log.debug("%s: no pull for %.0f s; safety-net pull", self.account, timeout)
            self._catch_up = True
        self._wake.clear()

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` s, cut short by a new callback token (not by another catch-up request)."""
        deadline = time.monotonic() + delay
        while self._token is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            if not await finished_within(self._wake.wait(), left):
                return

    async def _pull(self, token: str | None) -> None:
        self.caught_up.clear()
        while True:
            self.pulls += 1
            if token is None:
                self.tokenless_pulls += 1
            metrics.PULLS.labels("tokenless" if token is None else "token").inc()
            try:
                page = await self._fetch(self._cursor, token)
            except InvalidMsgToken:
                if token is not None:
                    if self._expired is None:
                        self._expired = deque(maxlen=EXPIRED_TOKENS)
                    self._expired.append(token)
                raise
            fresh = await self._records.record(self.account, page.items)
            if page.next_cursor and page.next_cursor != self._cursor:
                self._cursor = page.next_cursor
                self._save_cursor_soon()
            if fresh:
                metrics.RECORDED.inc(len(fresh))
                self._deliver(fresh)
            if page.has_more:
                continue
            if self._token is not None:  # a callback came in during this pull
                token, self._token = self._token, None
                continue
            self.caught_up.set()
            return

    # -- storing the cursor -------------------------------------------------------------------
    # Off the pull's critical path: the cursor is stored only after the items it covers are recorded
    # (the pull has awaited that), and a stored cursor that lags behind costs nothing but re-reading a
    # few pages whose items are recognised as duplicates. One write at a time; the newest value wins.

    def _save_cursor_soon(self) -> None:
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_cursors(), name=f"cursor {self.account}")

    async def _save_cursors(self) -> None:
        delay = 0.1
        while self._cursor is not None and self._cursor != self._saved_cursor:
            wait = self._cursor_saved_at + self.cursor_interval - time.monotonic()
            if wait > 0 and not self._save_now.is_set():
                await finished_within(self._save_now.wait(), wait)
            cursor = self._cursor
            try:
                await self._records.save_cursor(self.account, cursor)
            except Exception as exc:
                log.warning(
                    "%s: storing the cursor failed (%s); retrying in %.1f s", self.account, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._saved_cursor = cursor
            self._cursor_saved_at = time.monotonic()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until the newest cursor is stored (on shutdown, after the pull loop was stopped); give up
        after ``timeout`` s (the database is away: the next start re-reads a little more)."""
        self._save_now.set()
        if self._saver is None or self._saver.done():
            return
        done, _ = await asyncio.wait({self._saver}, timeout=timeout)
        if not done:
            log.warning("%s: the newest cursor could not be stored before stopping", self.account)
            await stop_tasks([self._saver])


def _backoff(bounds: tuple[float, float], failures: int) -> float:
    first, most = bounds
    return min(most, first * 2 ** (failures - 1)) * JITTER.uniform(0.8, 1.2)
