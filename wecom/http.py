"""The HTTP transport under :mod:`wecom.client`: one aiohttp session per process, secrets kept out of errors.

:class:`WeComHttp` opens its :class:`aiohttp.ClientSession` on first use (a session needs a running
loop) and closes it in :meth:`~WeComHttp.aclose`; a process makes one and hands it to every
:class:`~wecom.client.WeComClient`, so all of its WeCom calls share one connection pool. Redirects are
never followed (a 3xx is an unusable answer, not a new target); proxies come from the environment
(``HTTPS_PROXY``...), as a deployment that reaches WeCom through one expects, read when the session
opens: with no proxy variable set, the session does not consult the environment (nor ``~/.netrc``)
again, which aiohttp otherwise does in a worker thread for every request.

Secrets travel in query strings (``corpsecret``, ``access_token``, a robot's ``key``). Every failure
to get an answer (refused, reset, timed out, an invalid URL) is raised as
:class:`~wecom.errors.WeComTransportError`, whose message names the method and the URL *without* its
query, with every query value also removed from aiohttp's own text; it is raised outside the
``except`` block, so no chained exception holds the URL either.

Why aiohttp, not httpx: a puppet's ``kf/sync_msg`` is its hottest outbound request (one per
callback), and httpx's request building and pool cost several times aiohttp's per request
(docs/benchmarks.md), as they did for the manager's deliveries (:mod:`wxkf.delivery`).
"""

from __future__ import annotations

import json as jsonlib
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from yarl import URL

from wecom.errors import WeComTransportError, redacted_url, scrub

__all__ = ["Answer", "WeComHttp"]

#: a file for multipart upload: ``(filename, content, content type)``
File = tuple[str, bytes, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """WeCom's answer, read whole. ``url`` has no query: it is safe to put in an error."""

    method: str
    url: str
    status: int
    content_type: str
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def safe_request(self) -> httpx.Request:
        """The request as errors carry it (``WeComResponseError.request``), without its query."""
        return httpx.Request(self.method, self.url)


class WeComHttp:
    """One aiohttp session for a process's WeCom calls. ``timeout``: seconds for a whole request;
    ``connections``: at most that many open at once (the rest wait, inside the timeout)."""

    def __init__(self, *, timeout: float = 30.0, connections: int = 100) -> None:
        self.timeout = timeout
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WeComHttp(timeout={self.timeout!r}, open={self._session is not None})"

    async def __aenter__(self) -> WeComHttp:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Mapping[str, File] | None = None,
    ) -> Answer:
        """Send one request and read the whole answer; :class:`WeComTransportError` if none came."""
        target = URL(url)
        if params:
            target = target.update_query({key: str(value) for key, value in params.items()})
        data: bytes | aiohttp.FormData | None = None
        headers: dict[str, str] = {}
        if files:
            form = aiohttp.FormData()
            for field, (filename, content, content_type) in files.items():
                form.add_field(field, content, filename=filename, content_type=content_type)
            data = form
        elif json is not None:
            # compact and UTF-8 (not \\u escapes), as WeCom's own examples send it
            data = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
        failure: WeComTransportError | None = None
        try:
            async with self._open().request(
                method, target, data=data, headers=headers, allow_redirects=False
            ) as response:
                content = await response.read()
                return Answer(
                    method,
                    redacted_url(target),
                    response.status,
                    response.headers.get("content-type", ""),
                    content,
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            failure = _wrap(exc, method, target)
        # Raised outside the except block so that not even __context__ links to aiohttp's error.
        raise failure

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                trust_env=_proxy_in_environment(),
                auto_decompress=True,
            )
        return self._session


def _proxy_in_environment() -> bool:
    """Whether the environment names a proxy for the schemes WeCom calls use."""
    return any(scheme in ("http", "https") for scheme in urllib.request.getproxies_environment())


def _wrap(exc: BaseException, method: str, url: URL) -> WeComTransportError:
    """``exc`` re-described without the secrets in ``url``'s query."""
    detail = scrub(str(exc), url)
    where = f"{method} {redacted_url(url)}"
    message = f"{type(exc).__name__} on {where}" + (f": {detail}" if detail else "")
    return WeComTransportError(message, request=httpx.Request(method, redacted_url(url)))
