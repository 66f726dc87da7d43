"""Process-wide logging: one line per record (a traceback below it, indented), secrets masked on the way
out, and repeated warnings rate-limited.

Code must not log secrets in the first place; :class:`RedactSecrets` is defence in depth for the ones that
slip through inside a URL, a JSON body or an exception (``access_token=`` in an httpx error, a puppet's
register payload...). It sits on the root handler, so it sees records from every logger that propagates.
Run uvicorn with ``log_config=None`` so its records propagate here instead of to handlers of its own.

Every line that starts a record starts with its timestamp; a traceback follows on lines of its own, each
indented by :data:`CONTINUATION`, so a parser (or ``grep -v '^ '``) tells them apart and untrusted text
in a message or an exception cannot forge a record. Warnings anyone can trigger (a refused request) go
through :func:`warn_limited`, so 300 junk requests make a handful of lines and a count, not 300 lines.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
CONTINUATION = "    "

# Names under which a secret travels (query parameters, JSON / repr keys, XML elements): access_token,
# corpsecret, corpSecret, encodingAESKey, Token, password...
_SECRET_NAMES = r"[\w-]*?(?:token|secret|password|aes_?key)"
_PATTERNS = [
    # "corpSecret": "..."  /  'token': '...'
    (
        re.compile(
            rf"""(?i)(?P<key>(["'])(?:{_SECRET_NAMES})\2\s*:\s*)(?P<q>["'])(?:\\.|(?!(?P=q)).)*(?P=q)"""
        ),
        rf"\g<key>\g<q>{MASK}\g<q>",
    ),
    # access_token=...&  /  corpsecret=...
    (re.compile(rf"(?i)\b(?P<key>(?:{_SECRET_NAMES})=)[^&\s\"'<>,;]+"), rf"\g<key>{MASK}"),
    # <Token><![CDATA[...]]></Token>
    (
        re.compile(
            rf"(?i)(?P<open><(?P<tag>{_SECRET_NAMES})>)(?:<!\[CDATA\[.*?\]\]>|[^<]*)(?P<close></(?P=tag)>)"
        ),
        rf"\g<open>{MASK}\g<close>",
    ),
    # Authorization: Bearer ...
    (re.compile(r"(?i)\b(?P<key>Bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<key>{MASK}"),
    # a WebSocket frame as websockets (and uvicorn through it) logs it at DEBUG, "> TEXT '{...}' [295
    # bytes]": cut to its first and last characters, which keys the rules above no longer see (the tail
    # of a puppet's auth frame is its registrationToken or EncodingAESKey, of an authed frame the secret)
    (re.compile(r"^(?P<key>[<>] (?:TEXT|BINARY|CONT) ).*(?= \[[^\]]*\]$)"), rf"\g<key>{MASK}"),
    # mongodb://user:password@host, and any other URL's (a manager or token URL behind basic auth)
    (re.compile(r"(?P<key>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]+:)[^\s/@]+(?=@)"), rf"\g<key>{MASK}"),
]


def redact(text: str) -> str:
    """``text`` with every value that looks like a known secret replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (with its args merged in) and traceback through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a bad format string: the handler reports it when it formats the record
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RecordFormatter(logging.Formatter):
    """A record's message on one line (line breaks escaped: greppable, and untrusted text cannot forge
    records); its traceback or stack, if any, on the lines below, each indented by :data:`CONTINUATION`."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = _escape(self.formatMessage(record))
        detail = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            detail.append(record.exc_text)
        if record.stack_info:
            detail.append(self.formatStack(record.stack_info))
        below = "\n".join(detail).splitlines()
        return "\n".join([line, *(CONTINUATION + _escape(text) for text in below)])


def _escape(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0
    report_scheduled: bool = False


class WarningLimiter:
    """Lets through the first ``burst`` warnings per (logger, key) in each ``interval`` seconds and
    counts the rest; when an interval with suppressed warnings ends, one line says how many.

    The summary comes from a timer on the running event loop; without one, with the next warning for
    that key (or :meth:`flush`). At most ``max_keys`` keys are tracked (the oldest is dropped first),
    so a key built from request data cannot grow memory without bound.
    """

    def __init__(
        self,
        burst: int = 5,
        interval: float = 60.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def warn(self, logger: logging.Logger, key: str, msg: str, *args: object) -> None:
        now = self.clock()
        name = (logger.name, key)
        window = self._windows.get(name)
        if window is not None and now - window.started >= self.interval:
            self._report(logger, key)
            window = None
        if window is None:
            if len(self._windows) >= self.max_keys:
                del self._windows[next(iter(self._windows))]
            window = self._windows[name] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            logger.warning(msg, *args, stacklevel=3)
            return
        window.suppressed += 1
        if not window.report_scheduled:
            window.report_scheduled = self._schedule_report(logger, key, window.started + self.interval - now)

    def reset(self) -> None:
        """Forget every key (a test starts from a fresh budget; suppressed counts are dropped)."""
        self._windows.clear()

    def flush(self) -> None:
        """Report every key whose interval has ended with warnings suppressed."""
        now = self.clock()
        for logger_name, key in list(self._windows):
            if now - self._windows[(logger_name, key)].started >= self.interval:
                self._report(logging.getLogger(logger_name), key)

    def _schedule_report(self, logger: logging.Logger, key: str, delay: float) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_later(max(delay, 0.0), self._report, logger, key)
        return True

    def _report(self, logger: logging.Logger, key: str) -> None:
        window = self._windows.pop((logger.name, key), None)
        if window is not None and window.suppressed:
            logger.warning(
                "%d more %r warnings suppressed in the last %gs", window.suppressed, key, self.interval
            )


LIMITER = WarningLimiter()


def warn_limited(logger: logging.Logger, key: str, msg: str, *args: object) -> None:
    """``logger.warning(msg, *args)``, rate-limited per (logger, ``key``) by :data:`LIMITER`.

    ``key`` names the kind of warning (a refusal's reason, e.g. ``"bad_signature"``), not the instance:
    never put request data in it.
    """
    LIMITER.warn(logger, key, msg, *args)


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (a type of its own, so it can find it again)."""


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr through :class:`RecordFormatter` and :class:`RedactSecrets`.

    Idempotent: calling it again replaces the handler rather than doubling output.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(RecordFormatter(FORMAT))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL, query string included, at INFO ("HTTP Request: GET ...?access_token=").
    # Quiet them, and redact at the source too, so no other handler (a test's, an APM's) sees secrets.
    for name in ("httpx", "httpcore"):
        library = logging.getLogger(name)
        library.setLevel(logging.WARNING)
        if not any(isinstance(f, RedactSecrets) for f in library.filters):
            library.addFilter(RedactSecrets())
