"""What every service needs at run time, opened once per process: database, secret box, HTTP clients.

``wxkf up`` opens one :class:`Runtime` and builds the gateway, token service and manager on it;
``wxkf gateway`` and friends build just their own service on theirs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from wecom.http import WeComHttp
from wxkf.database import Database, DatabaseState, connect
from wxkf.secretbox import SecretBox, load_or_create_random_file, load_secret_key
from wxkf.settings import Settings

ADMIN_TOKEN_FILE = "admin.token"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    db: Database
    box: SecretBox = field(repr=False)
    http: httpx.AsyncClient
    admin_token: str | None = field(repr=False)
    database: DatabaseState = field(repr=False)
    #: every WeCom API call of the process (gettoken, kf/account/list, the hosted puppets' calls)
    wecom: WeComHttp = field(default_factory=WeComHttp, repr=False)

    def replica_id(self, role: str) -> str:
        """Stable across restarts of the same process slot, so a restart recovers its own work at once."""
        return self.settings.wxkf_replica_id or f"{socket.gethostname()}:{self.settings.port}:{role}"


def load_admin_token(settings: Settings) -> str | None:
    """``WXKF_ADMIN_TOKEN``, or in embedded mode one generated into the data dir (the CLI reads it there)."""
    if settings.wxkf_admin_token is not None:
        return settings.wxkf_admin_token.get_secret_value() or None
    if settings.mongo_uri is None:
        path = settings.wxkf_data_dir / ADMIN_TOKEN_FILE
        token = load_or_create_random_file(path)
        log.info("admin API token: %s (the wxkf CLI reads it from there)", path)
        return token
    log.info("admin API disabled: WXKF_ADMIN_TOKEN is not set")
    return None


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    box = SecretBox(load_secret_key(settings))
    admin_token = load_admin_token(settings)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with (
        connect(settings) as (db, database),
        httpx.AsyncClient(limits=limits, timeout=10.0) as http,
        WeComHttp(timeout=10.0) as wecom,
    ):
        yield Runtime(
            settings=settings,
            db=db,
            box=box,
            http=http,
            admin_token=admin_token,
            database=database,
            wecom=wecom,
        )
