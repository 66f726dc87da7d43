"""One outbound HTTP delivery with a clear verdict: acknowledged, or a :class:`DeliveryError` saying why.

Shared by the gateway's forwards and the manager's puppet dispatch so both classify failures the same
way. The error tree::

    DeliveryError          the receiver did not acknowledge; .permanent, .status (None: no answer)
    └── Unreachable        no HTTP answer at all (refused, reset, timed out): always transient

Any 2xx acknowledges. A non-2xx answer is permanent for 3xx and 4xx, except 408, 425 and 429 (the
receiver asks to be tried again); 5xx is transient. A caller retries transient errors and stops retrying
(dead-letters) permanent ones.
"""

from __future__ import annotations

import httpx

RETRYABLE_4XX = frozenset({408, 425, 429})


class DeliveryError(Exception):
    """The receiver did not acknowledge; the message says how (status, timeout, refused)."""

    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class Unreachable(DeliveryError):
    """No HTTP answer at all (refused, reset, timed out): transient."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False, status=None)


def is_permanent(status: int) -> bool:
    """Does a non-2xx ``status`` mean "do not send this again"?"""
    return 300 <= status < 500 and status not in RETRYABLE_4XX


def refused(status: int, text: str) -> DeliveryError:
    """The error for a non-2xx answer ``status`` with body ``text``."""
    return DeliveryError(f"HTTP {status}: {text[:200]!r}", permanent=is_permanent(status), status=status)


async def post(
    http: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    timeout: float,
) -> httpx.Response:
    """POST and return the response if it is a 2xx; raise :class:`DeliveryError` otherwise.

    Redirects are never followed: a 3xx is a permanent refusal.
    """
    try:
        response = await http.post(
            url, content=content, headers=headers, timeout=timeout, follow_redirects=False
        )
    except httpx.TimeoutException:
        raise Unreachable(f"timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise refused(response.status_code, response.text)
    return response
