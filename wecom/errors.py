"""Errors from WeCom's API, one class per errcode worth handling, plus transport failures.

WeCom answers nearly everything with HTTP 200 and ``{"errcode": N, "errmsg": ...}``; the errcode is
the only reliable signal. Mapping each code a caller reacts to onto its own subclass lets callers write
``except SendWindowExpired`` instead of comparing numbers, while unknown codes still raise the base
:class:`WeComError` with the number intact.

Transport failures are kept apart (:class:`WeComTransportError`, :class:`WeComResponseError`). Their
message and ``.request`` carry the URL *without its query*: the query holds ``corpsecret``,
``access_token`` or a robot ``key``, and exceptions end up in logs. The calls go over aiohttp
(:mod:`wecom.http`); the two classes still subclass :mod:`httpx`'s errors, because the services catch
WeCom's failures and their own httpx calls' (the manager link, the token service's invalidation) with
one ``except httpx.HTTPError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
from yarl import URL

__all__ = [
    "TOKEN_ERRCODES",
    "AccessTokenExpired",
    "ApiRateLimited",
    "ConcurrencyLimited",
    "InvalidAccessToken",
    "InvalidCredential",
    "InvalidMsgToken",
    "InvalidOpenKfId",
    "IpNotAllowed",
    "MissingAccessToken",
    "NoPermission",
    "OpenKfIdNotFound",
    "RobotRemoved",
    "SendCountLimit",
    "SendWindowExpired",
    "SessionEnded",
    "StateForbidsSending",
    "StateTransitionNotAllowed",
    "SystemBusy",
    "WeComError",
    "WeComResponseError",
    "WeComTransportError",
    "error_for",
    "raise_for_payload",
]

#: errcodes meaning "this access_token is no good": invalidate it and retry once with a fresh one.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})

_REGISTRY: dict[int, type[WeComError]] = {}


class WeComError(Exception):
    """WeCom answered with a non-zero ``errcode``."""

    #: the errcode a subclass stands for; the base class has none.
    code: ClassVar[int | None] = None

    def __init__(self, errcode: int, errmsg: str = "", api: str = "") -> None:
        super().__init__(errcode, errmsg, api)
        self.errcode = errcode
        self.errmsg = errmsg
        self.api = api

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code is not None:
            if cls.code in _REGISTRY:
                raise TypeError(f"errcode {cls.code} already mapped to {_REGISTRY[cls.code].__name__}")
            _REGISTRY[cls.code] = cls

    def __str__(self) -> str:
        where = f" from {self.api}" if self.api else ""
        return f"errcode {self.errcode} ({self.errmsg}){where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(errcode={self.errcode!r}, errmsg={self.errmsg!r}, api={self.api!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errcode, self.errmsg, self.api))


# -- general -------------------------------------------------------------------------------


class SystemBusy(WeComError):
    code = -1


class InvalidCredential(WeComError):
    """Wrong corpsecret for gettoken; from other APIs, an access_token that is not the latest."""

    code = 40001


class InvalidAccessToken(WeComError):
    code = 40014


class MissingAccessToken(WeComError):
    code = 41001


class AccessTokenExpired(WeComError):
    code = 42001


class ApiRateLimited(WeComError):
    code = 45009


class ConcurrencyLimited(WeComError):
    code = 45033


class NoPermission(WeComError):
    code = 48002


class IpNotAllowed(WeComError):
    code = 60020


# -- group robot ---------------------------------------------------------------------------


class RobotRemoved(WeComError):
    code = 93000


# -- kf (WeChat Customer Service) ----------------------------------------------------------


class InvalidOpenKfId(WeComError):
    code = 95000


class SendCountLimit(WeComError):
    """Five messages sent since the customer last wrote; wait for them to write again."""

    code = 95001


class SendWindowExpired(WeComError):
    """More than 48 hours since the customer's last message."""

    code = 95002


class OpenKfIdNotFound(WeComError):
    code = 95004


class InvalidMsgToken(WeComError):
    """The callback Token given to sync_msg is invalid or older than 10 minutes."""

    code = 95007


class SessionEnded(WeComError):
    code = 95013


class StateTransitionNotAllowed(WeComError):
    code = 95016


class StateForbidsSending(WeComError):
    code = 95018


def error_for(errcode: int, errmsg: str = "", api: str = "") -> WeComError:
    """The exception for ``errcode``: its registered subclass, or :class:`WeComError` itself."""
    return _REGISTRY.get(errcode, WeComError)(errcode, errmsg, api)


def raise_for_payload(payload: Mapping[str, Any], api: str) -> None:
    """Raise the typed error if ``payload`` carries a non-zero errcode.

    A missing errcode counts as success (some endpoints omit it on success). One that is not an
    integer is not WeCom speaking: :class:`WeComResponseError`.
    """
    raw = payload.get("errcode", 0)
    if raw is None:
        return
    if isinstance(raw, int) and not isinstance(raw, bool):
        errcode = raw
    elif isinstance(raw, str) and raw.removeprefix("-").isdigit():
        errcode = int(raw)
    else:
        raise WeComResponseError(f"{api}: malformed errcode {str(raw)[:32]!r}")
    if errcode != 0:
        raise error_for(errcode, str(payload.get("errmsg", "")), api)


# -- transport -----------------------------------------------------------------------------


def redacted_url(url: URL | httpx.URL | str) -> str:
    """``url`` without query or fragment: what is safe to put in an exception or a log line."""
    return str(URL(str(url)).with_query(None).with_fragment(None))


def scrub(text: str, url: URL) -> str:
    """Replace every query value of ``url`` (the secrets) found in ``text`` by ``***``."""
    raw_query = url.raw_query_string
    secrets = set(url.query.values())  # decoded...
    secrets.update(part.partition("=")[2] for part in raw_query.split("&"))  # ...and as sent
    secrets = {value for value in secrets if len(value) >= 4}
    if raw_query:
        secrets.add(raw_query)
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _safe_request(request: httpx.Request) -> httpx.Request:
    return httpx.Request(request.method, redacted_url(request.url))


class WeComTransportError(httpx.TransportError):
    """WeCom could not be reached (connect, timeout, protocol error). Safe to log: no query string."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=_safe_request(request) if request is not None else None)


class WeComResponseError(httpx.HTTPError):
    """WeCom (or a proxy in front of it) answered something unusable: bad status, not JSON, missing field."""

    def __init__(
        self, message: str, *, request: httpx.Request | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        if request is not None:
            self.request = _safe_request(request)
