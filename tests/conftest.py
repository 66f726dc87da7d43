"""Fixtures every suite shares: one real embedded SecantusDB for the whole session, a fresh database per test.

The server is a real ``secantusd-py`` child over a real socket, exactly as in production; only the data dir
is temporary. Tests get isolation from unique database names rather than from a server each (starting one
takes a second).
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from wxkf.database import Database, Document, EmbeddedMongo
from wxkf.logging import LIMITER
from wxkf.runtime import Runtime, open_runtime
from wxkf.settings import Settings, load_settings

#: a hung test fails alone: its own deadline inside the loop, then nothing of it left running
pytest_plugins = ["tests.support.deadlines"]


@pytest.fixture(autouse=True)
def fresh_warning_budget() -> None:
    """Each test's refusals are logged from a fresh rate-limit budget (wxkf.logging.warn_limited)."""
    LIMITER.reset()


@pytest.fixture(autouse=True)
def root_log_handlers_restored() -> Iterator[None]:
    """A command run in-process (typer's CliRunner) installs wxkf's handler on the stream it captured;
    once that stream is closed, later tests' log records would fail to write there ("Logging error")
    and land in whatever another CliRunner captures next. Each test leaves the handlers as it found them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
async def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """URI of the session's embedded server."""
    async with EmbeddedMongo(tmp_path_factory.mktemp("mongo")) as uri:
        yield uri


@pytest.fixture(scope="session")
async def mongo_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[Document]]:
    """A client on the session's server, configured like :func:`wxkf.database.open_database`'s."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
async def db(mongo_client: AsyncMongoClient[Document]) -> AsyncIterator[Database]:
    """A database of this test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield mongo_client[name]
    await mongo_client.drop_database(name)


@pytest.fixture
def settings(mongo_uri: str, db: Database, tmp_path: Path) -> Settings:
    """Settings for a service under test: the session's server, this test's database, a fresh data dir.

    The database deadline is 10 s, not production's 2 s: a test that sets up thousands of documents on a
    loaded 2-core machine must not fail on a deadline it is not about (the deadline's own tests set it)."""
    return load_settings(
        mongo_uri=mongo_uri,
        wxkf_db_name=db.name,
        wxkf_data_dir=tmp_path / "data",
        wxkf_db_timeout=10.0,
        wxkf_secret_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Everything a service needs (database, secret box, HTTP client) on this test's settings."""
    async with open_runtime(settings) as opened:
        yield opened
