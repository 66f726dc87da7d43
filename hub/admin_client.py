"""The CLI's side of the admin HTTP API: find the server and its token, call it, explain failures.

Admin commands go through a running server rather than opening the database: in embedded mode the
server holds the data dir's lock, and through the API every replica sees the change at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from wxkf.runtime import ADMIN_TOKEN_FILE
from wxkf.settings import Settings

TIMEOUT = 30.0


class AdminError(RuntimeError):
    """An admin request failed; the message is one line saying why."""


def default_server(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.port}"


def find_admin_token(settings: Settings) -> str:
    """``WXKF_ADMIN_TOKEN``, else the token an embedded server generated into ``WXKF_DATA_DIR``.

    Never creates the file: a token no server knows would only turn into a confusing 401.
    """
    if settings.wxkf_admin_token is not None and settings.wxkf_admin_token.get_secret_value():
        return settings.wxkf_admin_token.get_secret_value()
    path = settings.wxkf_data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise AdminError(
            f"no admin token: set WXKF_ADMIN_TOKEN, or WXKF_DATA_DIR to the server's ({path} not found)"
        ) from None
    except OSError as exc:
        raise AdminError(f"cannot read the admin token from {path}: {exc.strerror}") from None
    if not token:
        raise AdminError(f"{path} is empty")
    return token


@dataclass(frozen=True)
class AdminClient:
    server: str
    token: str = field(repr=False)

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The JSON answer of a 2xx response; anything else raises :class:`AdminError`."""
        url = self.server.rstrip("/") + path
        try:
            response = httpx.request(
                method,
                url,
                json=json,
                params=params,
                headers={"authorization": f"Bearer {self.token}"},
                timeout=TIMEOUT,
            )
        except httpx.ConnectError as exc:
            raise AdminError(f"cannot reach {self.server} ({exc}); is `wxkf up` running there?") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise AdminError(f"request to {self.server} failed: {exc or type(exc).__name__}") from None
        if response.is_success:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise AdminError(f"{self.server} answered {method} {path} with something other than JSON")
            return answer
        raise AdminError(describe_failure(self.server, response))


def describe_failure(server: str, response: httpx.Response) -> str:
    """One line for a non-2xx answer, using the API's ``{"error": ...}`` when there is one."""
    try:
        reason = response.json().get("error")
    except (ValueError, AttributeError):
        reason = None
    reason = str(reason) if reason else response.reason_phrase or "no reason given"
    status = response.status_code
    if status == 401:
        return f"admin token refused ({status}: {reason}); check WXKF_ADMIN_TOKEN or WXKF_DATA_DIR"
    if status == 404 and response.headers.get("content-type", "").startswith("text/"):
        return f"{response.url.path} not found (404); is {server} a wxkf hub (`wxkf up`)?"
    return f"{reason} ({status})"
