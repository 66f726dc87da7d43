"""One outbound HTTP delivery with a clear verdict: acknowledged, or a :class:`DeliveryError` saying why.

Shared by the gateway's forwards and the manager's puppet dispatch so both classify failures the same
way: any 2xx acknowledges; anything else (status, timeout, refused connection) is retried by the caller.
"""

from __future__ import annotations

import httpx


class DeliveryError(Exception):
    """The receiver did not acknowledge; the message says how (status, timeout, refused)."""


async def post(
    http: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    timeout: float,
) -> httpx.Response:
    """POST and return the response if it is a 2xx; raise :class:`DeliveryError` otherwise."""
    try:
        response = await http.post(url, content=content, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise DeliveryError(f"timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]!r}")
    return response
