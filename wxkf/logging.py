"""Process-wide logging: one line per record, with secrets masked on the way out.

Code must not log secrets in the first place; :class:`RedactSecrets` is defence in depth for the ones that
slip through inside a URL, a JSON body or an exception (``access_token=`` in an httpx error, a puppet's
register payload...). It sits on the root handler, so it sees records from every logger that propagates.
Run uvicorn with ``log_config=None`` so its records propagate here instead of to handlers of its own.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"

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
    # mongodb://user:password@host
    (re.compile(r"(?P<key>\bmongodb(?:\+srv)?://[^:/@\s]+:)[^\s/]+(?=@)"), rf"\g<key>{MASK}"),
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


class OneLineFormatter(logging.Formatter):
    """Escapes line breaks, so a record is one line: greppable, and untrusted text cannot forge records."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (a type of its own, so it can find it again)."""


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr, one line each, through :class:`RedactSecrets`.

    Idempotent: calling it again replaces the handler rather than doubling output.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
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
